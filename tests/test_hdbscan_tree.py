"""The HDBSCAN tree (gpu_cluster.backends.hdbscan_tree) against scikit-learn's, and alone.

Tests marked ``oracle`` compare with scikit-learn's private tree code, called as the knn
backend used to call it: labels identical (same numbering), probabilities within 1e-12.
The random trees: ORACLE_CHUNKS x TREES_PER_CHUNK random spanning trees of 2..239 points
(ties, zero weights, epsilon 0 / 0.4 / 10 / a tied weight, allow_single_cluster on and
off, min_cluster_size 2..n+1), REAL_SETS trees of point sets (blobs with duplicates,
20..699 points) and two of 3,000 points. The other tests need no scikit-learn and also
run under NumPy >= 2.4 (``scripts/test_numpy24.sh``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from gpu_cluster.backends import hdbscan_tree as ht
from gpu_cluster.backends import knn_graph
from gpu_cluster.params import HdbscanParams
from helpers import blobs

NUMPY_24 = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4)
ORACLE_CHUNKS, TREES_PER_CHUNK, REAL_SETS = 8, 500, 150
EPSILONS = (0.0, 0.4, 10.0, "tie")  # "tie": one of the tree's own weights


def oracle(test):
    """Mark a test that compares with scikit-learn's tree code, whose warning (about
    exactly what breaks under NumPy 2.4, issue #33219) is expected."""
    expected = "ignore:Conversion of an array with ndim:DeprecationWarning"
    test = pytest.mark.filterwarnings(expected)(test)
    return pytest.mark.oracle(test)


def sklearn_tree_labels(a, b, w, mcs, eps, single):
    """scikit-learn's labels and probabilities for the tree (the former knn code path)."""
    from sklearn.cluster._hdbscan._linkage import MST_edge_dtype, make_single_linkage
    from sklearn.cluster._hdbscan._tree import tree_to_labels

    if NUMPY_24 and eps > 0:
        pytest.skip("scikit-learn issue #33219: its tree code raises under NumPy >= 2.4")
    edges = np.empty(len(w), MST_edge_dtype)
    edges["current_node"], edges["next_node"], edges["distance"] = a, b, w
    edges = edges[np.argsort(w, kind="stable")]
    labels, probs = tree_to_labels(make_single_linkage(edges), mcs, "eom", single, eps, None)
    return np.asarray(labels, np.int64), np.asarray(probs, np.float64)


def assert_same_as_sklearn(a, b, w, mcs, eps, single, what=""):
    want, want_p = sklearn_tree_labels(a, b, w, mcs, eps, single)
    got, got_p = ht.hdbscan_labels(a, b, w, mcs, eps, single)
    case = f"{what} n={len(w) + 1} mcs={mcs} eps={eps} single={single}"
    np.testing.assert_array_equal(got, want, err_msg=case)
    np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-12, err_msg=case)


def random_tree(rng, n):
    """Edges (a, b, w) of a random spanning tree on n points, in random order and direction."""
    shape = rng.integers(3)
    older = np.arange(1, n)
    if shape == 0:  # random recursive tree
        a = (rng.random(n - 1) * older).astype(np.int64)
    elif shape == 1:  # long chains (a diffuse, single-linkage-like shape)
        a = np.maximum(older - 1 - (rng.random(n - 1) < 0.1) * rng.integers(0, 5, n - 1), 0)
    else:  # a few hubs
        a = rng.integers(0, max(1, n // 10), n - 1) % older
    b = older
    perm = rng.permutation(n)
    a, b = perm[a], perm[b]
    flip = rng.random(n - 1) < 0.5
    a, b = np.where(flip, b, a), np.where(flip, a, b)
    order = rng.permutation(n - 1)
    return a[order], b[order], random_weights(rng, n - 1)


def random_weights(rng, m):
    kind = rng.integers(5)
    if kind == 0:
        return rng.random(m)
    if kind == 1:  # a few distinct values: ties everywhere, 0.4 among them
        return rng.choice([0.1, 0.2, 0.4, 0.5, 1.0], m)
    if kind == 2:  # zeros (duplicates) and ties
        return rng.choice([0.0, 0.0, 0.25, 0.4, 2.5], m)
    if kind == 3:
        return np.round(rng.exponential(0.3, m), 1)
    return np.full(m, 0.3)  # all equal


def pick_epsilon(rng, w):
    eps = EPSILONS[rng.integers(len(EPSILONS))]
    return float(rng.choice(w)) if eps == "tie" else eps


def mutual_reachability_mst(x, min_samples):
    """(a, b, w) of the dense mutual-reachability MST (Prim, O(n^2): small x only)."""
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    core = np.sort(d, axis=1)[:, min_samples - 1]
    mr = np.maximum(d, np.maximum(core[:, None], core[None, :]))
    n = len(x)
    inside, best, src = np.zeros(n, bool), mr[0].copy(), np.zeros(n, np.int64)
    inside[0] = True
    a, b, w = [], [], []
    for _ in range(n - 1):
        j = int(np.argmin(np.where(inside, np.inf, best)))
        a.append(src[j]), b.append(j), w.append(best[j])
        inside[j] = True
        closer = mr[j] < best
        best, src = np.where(closer, mr[j], best), np.where(closer, j, src)
    return np.array(a), np.array(b), np.array(w)


def point_set(rng):
    """Small blobs (2-16 dims), a share of them exact duplicates."""
    n, dim = int(rng.integers(20, 700)), int(rng.choice([2, 3, 16]))
    x = blobs(n, dim, seed=int(rng.integers(1 << 30)), centres=int(rng.integers(1, 8)),
              spread=float(rng.choice([0.05, 0.15, 0.6]))).astype(np.float64)
    dup = rng.random(n) < rng.choice([0.0, 0.1, 0.4])
    x[dup] = x[rng.integers(0, n, int(dup.sum()))]
    return x


# ---------------------------------------------------------------- against scikit-learn


@oracle
@pytest.mark.parametrize("chunk", range(ORACLE_CHUNKS))
def test_random_trees_equal_sklearn(chunk):
    rng = np.random.default_rng(1000 + chunk)
    for i in range(TREES_PER_CHUNK):
        n = int(rng.integers(2, 240))
        a, b, w = random_tree(rng, n)
        top = n + 2 if rng.random() < 0.3 else max(3, n // 8)  # up to n + 1, or small
        mcs = int(rng.integers(2, top))
        assert_same_as_sklearn(a, b, w, mcs, pick_epsilon(rng, w), bool(rng.integers(2)),
                               what=f"chunk {chunk} tree {i}")


@oracle
@pytest.mark.slow
def test_point_set_trees_equal_sklearn():
    rng = np.random.default_rng(7)
    for i in range(REAL_SETS):
        x = point_set(rng)
        ms = int(rng.integers(1, 8))
        a, b, w = mutual_reachability_mst(x, ms)
        mcs = int(rng.choice([2, 5, 10, max(2, len(x) // 10)]))
        assert_same_as_sklearn(a, b, w, mcs, pick_epsilon(rng, w), bool(rng.integers(2)),
                               what=f"point set {i} min_samples={ms}")


@oracle
@pytest.mark.parametrize("eps", [0.0, 0.4])
def test_single_diffuse_cluster_equals_sklearn(eps):
    """The selection that is O(n^2) in scikit-learn: EOM keeps the root alone."""
    rng = np.random.default_rng(3)
    a, b, w = mutual_reachability_mst(rng.standard_normal((3000, 2)), 5)
    want, _ = sklearn_tree_labels(a, b, w, 30, eps, True)
    assert want.max() == 0  # one cluster (and some noise)
    assert_same_as_sklearn(a, b, w, 30, eps, True)


@oracle
def test_epsilon_tie_that_leaves_label_zero_unused_equals_sklearn():
    a, b, w = two_level_tree()
    assert_same_as_sklearn(a, b, w, 3, 0.4, True)


# ---------------------------------------------------------------- no scikit-learn needed


def chains(sizes, inner, links):
    """Edges of chains of ``sizes`` points (weight ``inner``) joined end to end by ``links``."""
    edges, start = [], 0
    for k, size in enumerate(sizes):
        edges += [(start + i, start + i + 1, inner) for i in range(size - 1)]
        if k:
            edges.append((start - 1, start, links[k - 1]))
        start += size
    a, b, w = (np.array(v) for v in zip(*edges))
    return a, b, w.astype(np.float64)


def two_level_tree():
    """Groups X1, X2 (5 points each, joined at 0.2) and Y (5 points), X-Y at 0.4."""
    return chains([5, 5, 5], 0.1, [0.2, 0.4])


def test_well_separated_groups_are_the_clusters():
    labels, probs = ht.hdbscan_labels(*chains([6, 8, 10], 0.1, [2.0, 3.0]), 4)
    np.testing.assert_array_equal(labels, np.repeat([1, 2, 0], [6, 8, 10]))
    np.testing.assert_array_equal(probs, np.ones(24))


@pytest.mark.parametrize("eps, single, want", [
    (0.0, True, [1] * 5 + [2] * 5 + [0] * 5),
    (0.3, True, [0] * 10 + [1] * 5),  # X1, X2 (born at 0.2 < 0.3) merge into X
    (0.4, False, [0] * 10 + [1] * 5),
    (10.0, True, [0] * 15),  # everything up to the root
    (10.0, False, [0] * 10 + [1] * 5),  # up to the root's children
    # X is born at exactly 0.4 (not > 0.4): X1, X2 go up to the root, which takes label
    # 0 but leaves its points as noise; Y (born at 0.4, not < 0.4) stays: scikit-learn's.
    (0.4, True, [-1] * 10 + [1] * 5),
])
def test_epsilon_selection_on_a_known_tree(eps, single, want):
    labels, _ = ht.hdbscan_labels(*two_level_tree(), 3, eps, single)
    np.testing.assert_array_equal(labels, want)


def test_single_cluster_keeps_points_up_to_the_threshold():
    """One chain with a few far points: with allow_single_cluster the root is the cluster."""
    a, b, w = chains([20, 1, 1], 0.1, [0.5, 1.0])
    labels, probs = ht.hdbscan_labels(a, b, w, 5, 0.0, True)
    np.testing.assert_array_equal(labels, [0] * 20 + [-1, -1])  # lambda < the root's largest
    np.testing.assert_array_equal(probs, [1.0] * 20 + [0, 0])
    labels, _ = ht.hdbscan_labels(a, b, w, 5, 0.75, True)  # 1 / 0.75: the 0.5 point is in
    np.testing.assert_array_equal(labels, [0] * 21 + [-1])
    labels, _ = ht.hdbscan_labels(a, b, w, 5, 0.0, False)
    assert (labels == -1).all()


@pytest.mark.parametrize("seed", range(6))
def test_invariants_on_random_trees(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n = int(rng.integers(2, 300))
        a, b, w = random_tree(rng, n)
        mcs, single = int(rng.integers(2, n + 2)), bool(rng.integers(2))
        labels, probs = ht.hdbscan_labels(a, b, w, mcs, pick_epsilon(rng, w), single)
        assert labels.shape == probs.shape == (n,)
        assert labels.dtype == np.int64 and probs.dtype == np.float64
        assert labels.min() >= -1 and ((0 <= probs) & (probs <= 1)).all()
        assert (probs[labels == -1] == 0).all()
        if not single:  # every cluster has at least min_cluster_size points
            sizes = np.bincount(labels[labels >= 0])
            assert (sizes[sizes > 0] >= mcs).all()


def test_zero_weights_and_ties_give_probability_one():
    labels, probs = ht.hdbscan_labels(*chains([4, 4], 0.0, [1.0]), 3)
    np.testing.assert_array_equal(labels, [0] * 4 + [1] * 4)
    np.testing.assert_array_equal(probs, np.ones(8))


def test_tiny_inputs():
    none = np.array([], np.int64)
    assert ht.hdbscan_labels(none, none, np.array([]), 2)[0].tolist() == [-1]
    labels, probs = ht.hdbscan_labels(np.array([0]), np.array([1]), np.array([0.5]), 2, 0.0, True)
    assert labels.tolist() == [0, 0] and probs.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("a, b, w, match", [
    ([0, 1], [1, 0], [1.0, 1.0], "cycle"),
    ([0, 1], [1, 5], [1.0, 1.0], "endpoints"),
    ([0, 1], [1, 2], [1.0, -1.0], "finite and >= 0"),
    ([0, 1], [1, 2], [1.0, np.nan], "finite and >= 0"),
])
def test_bad_edges_are_refused(a, b, w, match):
    with pytest.raises(ValueError, match=match):
        ht.hdbscan_labels(np.array(a), np.array(b), np.array(w, float), 2)


def test_min_cluster_size_below_two_is_refused():
    with pytest.raises(ValueError, match="min_cluster_size must be >= 2"):
        ht.hdbscan_labels(np.array([0]), np.array([1]), np.array([1.0]), 1)


@pytest.mark.slow
def test_large_single_cluster_is_fast():
    """200k points selected as one cluster: scikit-learn's O(n^2) labelling takes minutes."""
    rng = np.random.default_rng(0)
    n = 200_000
    a = (rng.random(n - 1) * np.arange(1, n)).astype(np.int64)
    start = time.perf_counter()
    labels, _ = ht.hdbscan_labels(a, np.arange(1, n), rng.random(n - 1), 200, 0.0, True)
    assert labels.max() == 0 and time.perf_counter() - start < 30


# ---------------------------------------------------------------- through the knn backend


def test_knn_backend_clusters_blobs_with_duplicates():
    """The knn backend's labels come from this tree: 3 blobs, a third duplicated, eps 0.4."""
    x = blobs(600, 64, seed=11, centres=3, spread=0.05)
    x[400:] = x[:200]
    p = HdbscanParams(min_cluster_size=10, min_samples=10, cluster_selection_epsilon=0.4,
                      allow_single_cluster=True)
    got = knn_graph.fit(x, p)
    assert got.n_clusters == 3 and got.details["library"].endswith("gpu_cluster tree")
    np.testing.assert_array_equal(got.labels[400:], got.labels[:200])
    truth = blobs_truth(600, 64, seed=11, centres=3)
    truth[400:] = truth[:200]
    for label in range(3):  # each cluster is one blob
        assert len(set(truth[got.labels == label].tolist())) == 1


def test_knn_backend_single_blob_is_one_cluster():
    """One diffuse blob: EOM keeps the root alone (the case that was O(n^2))."""
    x = blobs(500, 32, seed=2, centres=1, spread=0.3)
    p = HdbscanParams(min_cluster_size=25, min_samples=5, cluster_selection_epsilon=0.0,
                      allow_single_cluster=True)
    got = knn_graph.fit(x, p)
    assert got.n_clusters == 1  # scikit-learn keeps only points at the root's largest lambda
    assert ((0 <= got.probabilities) & (got.probabilities <= 1)).all()
    assert knn_graph.fit(x, replace(p, allow_single_cluster=False)).n_clusters != 1


def blobs_truth(n, dim, *, seed, centres):
    """The blob index of each row of ``helpers.blobs`` (same draws)."""
    rng = np.random.default_rng(seed)
    rng.standard_normal((centres, dim))
    return rng.integers(0, centres, n)
