"""The reference backend is scikit-learn's HDBSCAN; NumPy 2.4 regression is guarded."""

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.backends import load_backend
from gpu_cluster.labels import NOISE
from gpu_cluster.backends import reference
from gpu_cluster.errors import EnvironmentProblem, ParameterError
from gpu_cluster.params import HdbscanParams, RequestedParams, resolve, too_few_reason
from helpers import blobs, nested_blobs


def params(mcs=8, ms=8, eps=0.4):
    return HdbscanParams(min_cluster_size=mcs, min_samples=ms, cluster_selection_epsilon=eps,
                         allow_single_cluster=True)


def sklearn_labels(x, p):
    return HDBSCAN(min_cluster_size=p.min_cluster_size, min_samples=p.min_samples,
                   cluster_selection_epsilon=p.cluster_selection_epsilon,
                   allow_single_cluster=p.allow_single_cluster, copy=True).fit(x).labels_


@pytest.mark.parametrize("eps", [0.0, 0.4])
def test_reference_labels_equal_sklearn(eps):
    x = blobs(800, 128, seed=4, centres=6, spread=0.3)
    p = params(eps=eps)
    got = load_backend("cpu", "reference").fit(x, p)
    ref = sklearn_labels(x, p)
    assert adjusted_rand_score(ref, got.labels) == 1.0
    np.testing.assert_array_equal(got.labels == NOISE, ref == NOISE)
    assert got.labels.dtype == np.int64 and got.probabilities.shape == (800,)


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicates_with_epsilon_cluster_without_crashing(seed):
    """scikit-learn 1.9.1 + NumPy 2.4.6 raise TypeError on exactly this data (issue #33219).

    Checked by hand: every seed here fails with numpy==2.4.6 and passes with 2.3.5.
    """
    x = nested_blobs(300, 768, seed=seed)
    x[200:300] = x[:100]  # a third of the points duplicated
    got = reference.fit(x, params(mcs=5, ms=5, eps=0.4))
    assert got.n_clusters == 3  # epsilon merged the 12 micro-clusters into the 3 blobs
    np.testing.assert_array_equal(got.labels[200:300], got.labels[:100])


def test_installed_numpy_is_below_2_4():
    major, minor = (int(v) for v in np.__version__.split(".")[:2])
    assert (major, minor) < (2, 4), "the test extra pins numpy<2.4 (scikit-learn issue #33219)"


def test_numpy_guard_refuses_the_crashing_combination(monkeypatch):
    monkeypatch.setattr(np, "__version__", "2.4.6")
    with pytest.raises(EnvironmentProblem, match=r"install 'numpy<2.4'"):
        reference.check_numpy_compatible(params(eps=0.4))
    reference.check_numpy_compatible(params(eps=0.0))  # epsilon 0 does not hit the bug


def test_numpy_guard_refuses_before_any_work(monkeypatch, demo_db):
    """The refusal comes before a single vector is read, as one line from the CLI."""
    from click.testing import CliRunner

    from gpu_cluster import pipeline
    from gpu_cluster.cli import main

    monkeypatch.setattr(np, "__version__", "2.4.6")
    monkeypatch.setattr(pipeline, "survey_models", lambda *a: pytest.fail("surveyed"))
    res = CliRunner().invoke(main, ["cluster", str(demo_db), "-d", "10", "--device", "cpu",
                                    "--algorithm", "reference"])
    assert res.exit_code == EnvironmentProblem.exit_code, res.output
    assert "scikit-learn issue #33219): install 'numpy<2.4', or use --algorithm knn" in res.output
    assert "Traceback" not in res.output


def test_unknown_algorithm_is_a_clear_error():
    with pytest.raises(ParameterError, match=r"no algorithm 'magic' on the cpu; available: knn, reference"):
        load_backend("cpu", "magic")


@pytest.mark.parametrize("n, size", [(10, 2), (1999, 2), (2000, 2), (5000, 5), (1_100_000, 1100)])
def test_default_sizes_follow_the_original_heuristic(n, size):
    p = resolve(RequestedParams(), n)
    assert p.min_cluster_size == p.min_samples == size
    assert p.cluster_selection_epsilon == 0.4 and p.allow_single_cluster


def test_too_few_reason():
    p = resolve(RequestedParams(), 1)
    assert "only 1 usable vector(s)" in too_few_reason(1, p)
    assert too_few_reason(2, p) is None
    assert "needs >= 10" in too_few_reason(9, resolve(RequestedParams(min_cluster_size=10), 9))


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": -1.0}, r"--epsilon -1.0: must be a finite number >= 0"),
    ({"epsilon": float("nan")}, r"--epsilon nan: must be a finite number >= 0"),
    ({"min_cluster_size": 1}, r"--min-cluster-size 1: must be an integer >= 2"),
    ({"min_samples": 0}, r"--min-samples 0: must be an integer >= 1"),
])
def test_parameter_constraints(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        RequestedParams(**kwargs)


@pytest.mark.parametrize("version", ["1.2.2", None])
def test_an_old_or_missing_scikit_learn_is_refused_before_any_work(monkeypatch, version):
    from importlib import metadata

    from gpu_cluster.errors import EnvironmentProblem
    from gpu_cluster.params import RequestedParams

    def fake_version(name):
        if version is None:
            raise metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(metadata, "version", fake_version)
    with pytest.raises(EnvironmentProblem, match=r"needs scikit-learn >= 1\.3 \(its HDBSCAN\); found "):
        reference.check_requested(RequestedParams())
