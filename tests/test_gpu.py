"""GPU tests: run with ``pytest -m gpu`` on a CUDA machine with the 'gpu' extra.

Each test skips cleanly when CuPy/cuML is missing or no CUDA device is usable.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.device import gpu_status
from gpu_cluster.backends.cuml_memory import GIB, GpuMemoryError, free_device_memory, plan_min_samples
from gpu_cluster.medoids import medoid_indices, weighted_distance_sums
from gpu_cluster.params import HdbscanParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy():
    cupy = pytest.importorskip("cupy")
    usable, why = gpu_status()
    if not usable:
        pytest.skip(why)
    return cupy


@pytest.fixture(scope="module")
def cuml(cupy):
    return pytest.importorskip("cuml")


@pytest.fixture(scope="module")
def embeddings():
    """(3000, 768) float32 unit vectors in 6 blobs; 300 rows are exact duplicates."""
    x = blobs(3000, 768, seed=7, centres=6)
    x[2700:] = x[:300]
    return x


PARAMS = HdbscanParams(min_cluster_size=15, min_samples=10, cluster_selection_epsilon=0.4,
                       allow_single_cluster=True)


@pytest.fixture(scope="module")
def reference_labels(embeddings):
    from gpu_cluster.backends import reference

    return reference.fit(embeddings, PARAMS)


@pytest.fixture(scope="module")
def gpu_labels(cuml, cupy, embeddings):
    from gpu_cluster.backends import cuml_gpu

    return cuml_gpu.fit(cupy.asarray(embeddings), PARAMS)


def test_cuml_agrees_with_the_reference(gpu_labels, reference_labels):
    assert gpu_labels.labels.dtype == np.int64 and gpu_labels.probabilities.dtype == np.float64
    assert reference_labels.n_clusters >= 2
    assert adjusted_rand_score(reference_labels.labels, gpu_labels.labels) >= 0.95
    assert gpu_labels.details["min_samples_cuml"] == PARAMS.min_samples - 1
    assert gpu_labels.details["build_algo"] == "brute_force"
    assert gpu_labels.details["device_name"]


def test_duplicates_share_a_label(gpu_labels):
    np.testing.assert_array_equal(gpu_labels.labels[2700:], gpu_labels.labels[:300])


def test_medoids_agree_between_cupy_and_numpy(cupy, embeddings, reference_labels):
    labels, probs = reference_labels.labels, reference_labels.probabilities
    on_cpu = medoid_indices(embeddings, labels, probs)
    on_gpu = medoid_indices(cupy.asarray(embeddings), labels, probs)
    assert on_gpu.dtype == np.int64 and on_gpu.shape == on_cpu.shape
    for c in np.flatnonzero(on_gpu != on_cpu):  # only a float-rounding tie may differ
        members = np.flatnonzero(labels == c)
        sums = weighted_distance_sums(embeddings, members, members, probs[members])
        best, chosen = sums.min(), sums[np.searchsorted(members, on_gpu[c])]
        assert chosen == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("dim", [768, 767])  # 767: each row ends in a half word
def test_row_hashes_and_fingerprint_agree_between_cupy_and_numpy(cupy, embeddings, dim):
    from gpu_cluster.distinct import row_hashes
    from gpu_cluster.pending import fingerprint

    x = np.ascontiguousarray(embeddings[:, :dim])
    ids = np.array([f"{i:032x}".encode() for i in range(x.shape[0])], "S32")
    np.testing.assert_array_equal(cupy.asnumpy(row_hashes(cupy.asarray(x))), row_hashes(x))
    assert fingerprint(ids, cupy.asarray(x)) == fingerprint(ids, x)


def test_streaming_into_device_memory(cupy, embeddings):
    from gpu_cluster.loading import usable_rows
    from gpu_cluster.staging import DeviceSink

    x = embeddings.copy()
    x[[5, 600]] = 0.0  # dropped by the loader's mask
    sink = DeviceSink(x.shape[0], x.shape[1], batch_rows=256)
    for start in range(0, x.shape[0], 256):
        block = x[start : start + 256]
        keep, _ = usable_rows(block)
        sink.put(block, keep)
    out = sink.finish()
    assert isinstance(out, cupy.ndarray) and out.dtype == cupy.float32
    np.testing.assert_array_equal(cupy.asnumpy(out), x[usable_rows(x)[0]])


def test_free_memory_is_reported(cupy):
    free = free_device_memory()
    assert 0 < free <= cupy.cuda.runtime.memGetInfo()[1]


def test_planner_refuses_what_cannot_fit(cupy):
    free = free_device_memory()
    n = int(free // (4 * 768)) + 1  # the float32 data alone exceeds free memory
    with pytest.raises(GpuMemoryError, match=r"nothing fits on the GPU .* even min_samples=2"):
        plan_min_samples(n, 768, 10, free, explicit=False)
    plan = plan_min_samples(3000, 768, 10, free, explicit=True)
    assert plan.min_samples == 10 and plan.planned_bytes < free
    assert plan.free_bytes / GIB > 0


def test_out_of_memory_in_fit_is_a_clear_memory_error(cuml, cupy, embeddings, monkeypatch):
    """A real CuPy OutOfMemoryError raised inside cuML's fit reaches the pipeline as MemoryError."""
    from cuml.cluster.hdbscan import HDBSCAN

    from gpu_cluster.backends import cuml_gpu

    def out_of_memory(self, *args, **kwargs):
        cupy.empty(1 << 62, dtype=cupy.uint8)  # 4 EiB: no card has it

    monkeypatch.setattr(HDBSCAN, "fit", out_of_memory)
    with pytest.raises(MemoryError, match=r"cuML HDBSCAN ran out of GPU memory at n=3,000, "
                       r"dim=768, min_samples=10 \(cuML 9\), planned"):
        cuml_gpu.fit(cupy.asarray(embeddings), PARAMS)
