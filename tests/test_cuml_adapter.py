"""The cuML adapter without a GPU: parameter translation, build_algo, fit's plumbing.

``fit`` is exercised against a stand-in ``cuml``/``cupy`` whose HDBSCAN has cuML's
documented signature (keyword-only, so an unknown keyword is a TypeError) and cuML's
min_samples convention (it runs scikit-learn with ``min_samples + 1``): if the adapter
translated in the wrong direction, the labels would not match the reference backend.
When the real cuML is installed, its signature is checked too.
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
from helpers import blobs
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.backends import cuml_gpu, reference
from gpu_cluster.errors import ParameterError
from gpu_cluster.backends.cuml_memory import peak_bytes
from gpu_cluster.params import HdbscanParams


def params(min_samples=10, min_cluster_size=15, epsilon=0.4, metric="euclidean"):
    return HdbscanParams(min_cluster_size=min_cluster_size, min_samples=min_samples,
                         cluster_selection_epsilon=epsilon, allow_single_cluster=True,
                         metric=metric)


@pytest.mark.parametrize("sklearn_k", [2, 3, 50, 1000, 1024])
def test_min_samples_is_translated_k_to_k_minus_1(sklearn_k):
    assert cuml_gpu.cuml_min_samples(sklearn_k) == sklearn_k - 1


@pytest.mark.parametrize("sklearn_k", [1, 1025, 1100])
def test_min_samples_outside_cumls_range_is_refused(sklearn_k):
    with pytest.raises(ParameterError, match=rf"min_samples={sklearn_k} cannot run on the GPU: "
                       r"it must be from 2 to 1024 \(cuML's 1\.\.1023"):
        cuml_gpu.cuml_min_samples(sklearn_k)


def test_kwargs_pass_every_parameter_explicitly():
    kwargs = cuml_gpu.cuml_kwargs(params(min_samples=10, min_cluster_size=15), 5000)
    assert kwargs == {
        "min_cluster_size": 15, "min_samples": 9, "cluster_selection_epsilon": 0.4,
        "allow_single_cluster": True, "metric": "euclidean", "cluster_selection_method": "eom",
        "build_algo": "brute_force", "output_type": "cupy",
    }


def test_build_algo_switches_above_the_threshold():
    limit = cuml_gpu.BRUTE_FORCE_MAX_ROWS
    assert cuml_gpu.cuml_kwargs(params(), limit)["build_algo"] == "brute_force"
    above = cuml_gpu.cuml_kwargs(params(min_samples=200), limit + 1)
    assert above["build_algo"] == "nn_descent"
    kwds = above["build_kwds"]
    assert kwds["nnd_graph_degree"] >= above["min_samples"] + 1
    assert kwds["nnd_intermediate_graph_degree"] >= 1.5 * kwds["nnd_graph_degree"]
    assert cuml_gpu.cuml_kwargs(params(min_samples=5), limit + 1)["build_kwds"] == {
        "nnd_graph_degree": 64, "nnd_intermediate_graph_degree": 128}


def test_only_euclidean():
    with pytest.raises(ParameterError, match="supports only 'euclidean'"):
        cuml_gpu.cuml_kwargs(params(metric="cosine"), 100)


def test_estimate_uses_the_memory_plan():
    seconds, nbytes = cuml_gpu.estimate(1_100_000, 768, params(min_samples=101))
    assert nbytes == peak_bytes(1_100_000, 768, 101)
    assert 10 < seconds < 3600
    small_s, _ = cuml_gpu.estimate(1000, 768, params())
    assert 0 < small_s < seconds


def test_module_follows_the_backend_seam():
    assert (cuml_gpu.NAME, cuml_gpu.DEVICE) == ("cuml", "gpu")
    assert callable(cuml_gpu.fit) and callable(cuml_gpu.estimate)


# ------------------------------------------------------------------ fit, with stand-ins


def documented_hdbscan(behaviour):
    """A class with cuML 26.10's documented HDBSCAN signature (cuml_facts)."""

    class HDBSCAN:
        def __init__(self, *, min_cluster_size=5, min_samples=None, cluster_selection_epsilon=0.0,
                     max_cluster_size=0, metric="euclidean", alpha=1.0, p=None,
                     cluster_selection_method="eom", allow_single_cluster=False,
                     gen_min_span_tree=False, verbose=False, output_type=None,
                     prediction_data=False, build_algo="brute_force", build_kwds=None,
                     device_ids=None):
            assert min_samples is not None and 1 <= min_samples <= 1023
            self.kw = dict(min_cluster_size=min_cluster_size, min_samples=min_samples,
                           cluster_selection_epsilon=cluster_selection_epsilon,
                           allow_single_cluster=allow_single_cluster)

        def fit(self, x):
            return behaviour(self, x)

    return HDBSCAN


def sklearn_in_cuml_convention(model, x):
    """cuML's semantics on the CPU: its min_samples excludes the point, sklearn's includes it."""
    from sklearn.cluster import HDBSCAN

    kw = dict(model.kw, min_samples=model.kw["min_samples"] + 1)
    fitted = HDBSCAN(**kw).fit(x)
    model.labels_, model.probabilities_ = fitted.labels_, fitted.probabilities_.astype(np.float32)
    return model


@pytest.fixture
def stand_in(monkeypatch):
    """Install fake ``cupy``/``cuml`` modules; returns a setter for HDBSCAN.fit's behaviour."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "0.0-stand-in"
    cupy.asnumpy = np.asarray
    cupy.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(id=0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Stand-in GPU"}))
    cuml = types.ModuleType("cuml")
    cuml.__version__ = "26.10.0-stand-in"
    cluster, hdbscan = types.ModuleType("cuml.cluster"), types.ModuleType("cuml.cluster.hdbscan")
    cuml.cluster, cluster.hdbscan = cluster, hdbscan
    for name, module in {"cupy": cupy, "cuml": cuml, "cuml.cluster": cluster,
                         "cuml.cluster.hdbscan": hdbscan}.items():
        monkeypatch.setitem(sys.modules, name, module)

    def install(behaviour):
        hdbscan.HDBSCAN = documented_hdbscan(behaviour)

    return install


def test_fit_matches_the_reference_through_the_translation(stand_in):
    stand_in(sklearn_in_cuml_convention)
    x = blobs(400, 32, seed=3, centres=4)
    p = params(min_samples=8, min_cluster_size=10)
    got = cuml_gpu.fit(x, p)
    want = reference.fit(x, p)
    assert got.labels.dtype == np.int64 and got.probabilities.dtype == np.float64
    assert adjusted_rand_score(want.labels, got.labels) == 1.0
    assert got.details == {
        "library": "cuML 26.10.0-stand-in", "cuml": "26.10.0-stand-in",
        "cupy": "0.0-stand-in", "device_name": "Stand-in GPU", "build_algo": "brute_force",
        "min_samples_cuml": 7, "build_kwds": None,
    }


def test_out_of_memory_propagates_as_memory_error_with_context(stand_in):
    class OutOfMemoryError(MemoryError):  # like cupy.cuda.memory.OutOfMemoryError
        pass

    def oom(model, x):
        raise OutOfMemoryError("Out of memory allocating 1,234 bytes")

    stand_in(oom)
    with pytest.raises(MemoryError, match=r"cuML HDBSCAN ran out of GPU memory at n=300, "
                       r"dim=16, min_samples=10 \(cuML 9\), planned ~428\.9 KiB of GPU memory: "
                       r"Out of memory allocating") as info:
        cuml_gpu.fit(np.zeros((300, 16), np.float32), params())
    assert isinstance(info.value.__cause__, OutOfMemoryError)


def test_cuda_failure_propagates_as_runtime_error_with_context(stand_in):
    class CUDARuntimeError(RuntimeError):  # like cupy_backends.cuda.api.runtime's
        pass

    def broken(model, x):
        raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    stand_in(broken)
    with pytest.raises(RuntimeError, match=r"cuML HDBSCAN failed on the GPU at n=300, .*"
                       r"CUDARuntimeError: cudaErrorInsufficientDriver"):
        cuml_gpu.fit(np.zeros((300, 16), np.float32), params())


def test_parameter_errors_come_before_any_gpu_work(stand_in):
    stand_in(lambda model, x: pytest.fail("fit must not be reached"))
    with pytest.raises(ParameterError, match="min_samples=1100 cannot run on the GPU"):
        cuml_gpu.fit(np.zeros((300, 16), np.float32), params(min_samples=1100))


# ------------------------------------------------------------------ the real cuML


def test_every_keyword_is_in_the_installed_cumls_signature():
    cuml_hdbscan = pytest.importorskip("cuml.cluster.hdbscan")
    accepted = inspect.signature(cuml_hdbscan.HDBSCAN).parameters
    for n in (1000, cuml_gpu.BRUTE_FORCE_MAX_ROWS + 1):
        kwargs = cuml_gpu.cuml_kwargs(params(min_samples=1024), n)
        assert set(kwargs) <= set(accepted), set(kwargs) - set(accepted)
        assert 1 <= kwargs["min_samples"] <= 1023


def test_real_cuml_without_a_gpu_fails_with_a_clear_runtime_error():
    """On a machine with the extra but no device, cuML's CUDA error gets the context."""
    pytest.importorskip("cuml")
    from gpu_cluster.device import gpu_status

    if gpu_status()[0]:
        pytest.skip("a CUDA device is usable here")
    x = blobs(100, 8, seed=1)
    with pytest.raises(RuntimeError, match=r"cuML HDBSCAN failed on the GPU at n=100, dim=8, "
                       r"min_samples=10 \(cuML 9\), planned ~.* of GPU memory: CUDARuntimeError"):
        cuml_gpu.fit(x, params())
