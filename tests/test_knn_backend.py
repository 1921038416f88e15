"""The fast CPU backend: parity with the reference, duplicates, disconnected graphs,
tiny inputs, approximate search, and the min_samples cap."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.backends import knn_search as knn
from gpu_cluster.backends import dense_mst, knn_cells, knn_graph, reference
from gpu_cluster.budget import GIB, MemoryBudgetError
from gpu_cluster.params import HdbscanParams, RequestedParams, resolve
from helpers import blobs, nested_blobs


def params(mcs, ms=None, eps=0.4):
    return HdbscanParams(min_cluster_size=mcs, min_samples=ms or mcs,
                         cluster_selection_epsilon=eps, allow_single_cluster=True)


def with_duplicates(x, fraction=1 / 3, seed=0):
    rng = np.random.default_rng(seed)
    k = int(len(x) * fraction)
    x[rng.choice(len(x), k, replace=False)] = x[rng.integers(0, len(x), k)]
    return x


def ari_against_reference(x, p):
    ours, ref = knn_graph.fit(x, p), reference.fit(x, p)
    return adjusted_rand_score(ref.labels, ours.labels), ours, ref


def test_small_inputs_use_the_exact_dense_mst_and_equal_the_reference():
    x = with_duplicates(nested_blobs(900, 768, seed=3))
    ari, ours, ref = ari_against_reference(x, params(5))
    assert ari == 1.0 and ours.n_clusters == ref.n_clusters == 3
    assert ours.details["mst"] == "exact (dense Prim)"
    np.testing.assert_allclose(ours.probabilities, ref.probabilities, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_true_knn_graph_parity(monkeypatch, seed):
    """The kNN path proper (no complete graph): ARI >= 0.98 against the reference."""
    monkeypatch.setattr(dense_mst, "DENSE_MAX_ROWS", 0)
    x = with_duplicates(blobs(2500, 256, seed=seed, centres=12, spread=0.12), seed=seed)
    ari, ours, ref = ari_against_reference(x, resolve(RequestedParams(min_cluster_size=10), len(x)))
    assert ours.details["k"] == knn_graph.MIN_GRAPH_K and ours.details["knn"] == "exact"
    assert ari >= 0.98 and ref.n_clusters > 3


@pytest.mark.slow
def test_approximate_search_parity(monkeypatch):
    monkeypatch.setattr(dense_mst, "DENSE_MAX_ROWS", 0)
    monkeypatch.setattr(knn, "EXACT_MAX_ROWS", 100)
    monkeypatch.setattr(knn_cells, "CELL_ROWS", 64)  # 16 of ~39 cells probed
    x = with_duplicates(blobs(2500, 128, seed=5, centres=10, spread=0.12))
    ari, ours, _ = ari_against_reference(x, params(10))
    assert ours.details["knn"].startswith("cells(")
    assert ari >= 0.98


def test_disconnected_knn_graph_is_joined(monkeypatch):
    """Far-apart groups: each group's kNN stay inside it; the joins make one tree."""
    monkeypatch.setattr(dense_mst, "DENSE_MAX_ROWS", 0)
    x = blobs(1200, 64, seed=2, centres=6, spread=0.05)
    ari, ours, ref = ari_against_reference(x, params(10))
    assert ours.details["components_joined"] >= 6
    assert ari == 1.0 and ours.n_clusters == ref.n_clusters == 6


def test_heavy_duplicates_core_distance_zero(monkeypatch):
    """Copies >= min_samples: core distance 0, as in the reference's dense path."""
    monkeypatch.setattr(dense_mst, "DENSE_MAX_ROWS", 0)
    base = blobs(40, 32, seed=7, centres=4, spread=0.05)
    x = np.concatenate([np.repeat(base[:10], 30, axis=0), base[10:]])  # 10 texts x 30 copies
    nb_counts = knn.distinct_rows(x).counts
    assert nb_counts.max() == 30
    ari, ours, _ = ari_against_reference(x, params(5))
    assert ari == 1.0 and ours.details["n_distinct"] == 40


def test_core_distances_count_copies_first():
    counts = np.array([3, 1, 2])
    nb = knn.Neighbours(np.array([[1, 2], [0, 2], [0, 1]]),
                        np.array([[0.5, 0.9], [0.5, 0.7], [0.9, 0.7]]), "exact")
    core, short = knn_graph.core_distances(counts, nb, min_samples=4)
    # point 0: 3 copies + point 1 -> 4 at 0.5; point 1: 1 + 3 (point 0) = 4 at 0.5;
    # point 2: 2 + 1 (point 1) + 3 (point 0) -> 4 reached at 0.9
    np.testing.assert_allclose(core, [0.5, 0.5, 0.9])
    assert short == 0
    core, _ = knn_graph.core_distances(counts, nb, min_samples=3)
    assert core[0] == 0.0  # enough copies of itself


@pytest.mark.parametrize("n", [2, 3, 7])
def test_all_identical_rows(n):
    x = np.tile(blobs(1, 16), (n, 1))
    got = knn_graph.fit(x, params(2))
    assert got.labels.tolist() == [0] * n and got.n_clusters == 1
    ref = reference.fit(x, params(2))
    assert adjusted_rand_score(ref.labels, got.labels) == 1.0


def test_two_distinct_rows():
    x = blobs(2, 16, seed=9, centres=2)
    got = knn_graph.fit(x, params(2))
    ref = reference.fit(x, params(2))
    assert got.labels.tolist() == ref.labels.tolist()


def test_distinct_rows_groups_and_orders_by_first_occurrence():
    x = blobs(6, 8)
    y = x[[3, 1, 3, 0, 1, 3]]
    d = knn.distinct_rows(y)
    assert d.rep_rows.tolist() == [0, 1, 3] and d.counts.tolist() == [3, 2, 1]
    assert np.array_equal(y[d.rep_rows[d.inverse]], y)


def test_distinct_rows_survives_hash_collisions(monkeypatch):
    monkeypatch.setattr(knn, "row_hashes", lambda x: np.zeros(len(x), np.uint64))
    x = blobs(50, 8)
    y = np.concatenate([x, x[:10]])
    d = knn.distinct_rows(y)
    assert d.n_distinct == 50 and np.array_equal(y[d.rep_rows[d.inverse]], y)


def test_min_samples_is_capped_to_the_budget():
    n, dim = 1_100_000, 768
    p = resolve(RequestedParams(), n)
    assert p.min_samples == 1100
    plan = knn_graph.plan_params(p, n, dim, available=12 * GIB, explicit=False)
    assert plan.capped and 16 <= plan.min_samples < 100
    assert plan.planned_bytes <= 12 * GIB
    assert "min_samples capped from 1100 to" in plan.reason and "kNN graph" in plan.reason
    fixed, per_k = knn_graph.memory_model(n, dim)
    assert fixed + per_k * (plan.min_samples + 1) > 12 * GIB  # the largest that fits


def test_the_default_budget_of_a_24_gib_machine_plans_a_fit_at_1_1m_rows():
    """45% of 24 GiB (this project's machines): the user's real size must not be refused.
    The dense path's matrix and the k-NN path's distinct copy never coexist."""
    p = resolve(RequestedParams(), 1_100_000)
    plan = knn_graph.plan_params(p, 1_100_000, 768, available=int(0.45 * 24 * GIB),
                                 explicit=False)
    assert plan.capped and knn_graph.MIN_GRAPH_K <= plan.min_samples < 100
    dense_only = knn_graph.peak_bytes(20_000, 768, 2)  # the dense path's own peak fits too
    assert dense_only < 2 * GIB


def test_explicit_min_samples_that_cannot_fit_is_refused():
    p = resolve(RequestedParams(min_samples=1000), 1_100_000)
    with pytest.raises(MemoryBudgetError, match=r"--min-samples 1000 does not fit in host "
                                                r"memory for n=1,100,000, dim=768: it needs"):
        knn_graph.plan_params(p, 1_100_000, 768, available=12 * GIB, explicit=True)
    with pytest.raises(MemoryBudgetError, match=r"nothing fits in host memory"):
        knn_graph.plan_params(p, 1_100_000, 768, available=1 * GIB, explicit=False)


def test_reachability_graph_is_the_symmetric_union_of_the_lists():
    """Every listed pair once, both ways, at max(core_i, core_j, d_ij); -1 slots skipped;
    where the two directions' distances differ (rounding), the larger is kept."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, dist = knn.exact_neighbours(x, 5)
    idx[3, 4], dist[3, 4] = -1, np.inf  # a short list
    # a row with a mutual neighbour listed in an earlier row: its distances a little off
    # from that other direction's (as two GEMM tiles may round them)
    late = max(i for i in range(60) for j in idx[i] if 0 <= j < i and i in idx[j])
    dist[late] *= 1 + 1e-9
    core = rng.uniform(0.01, 0.05, 60)  # below the distances: the distances decide
    graph = knn_graph.reachability_graph(knn.Neighbours(idx, dist, "exact"), core).toarray()
    expected = np.zeros((60, 60))
    for i in range(60):
        for j, d in zip(idx[i], dist[i]):
            if j >= 0:
                w = max(core[i], core[j], d)
                expected[i, j] = expected[j, i] = max(expected[i, j], w)
    np.testing.assert_array_equal(graph, expected)


def test_graph_mst_is_the_minimum_spanning_tree_of_the_symmetric_graph():
    """Each edge given once (the upper triangle) to scipy's MST: the tree of the whole
    symmetric graph, by total weight and by the scipy-free Prim of the dense matrix; the
    triangle holds every off-diagonal edge once, also with empty rows."""
    from scipy.sparse import csgraph, csr_matrix, random as sparse_random
    rng = np.random.default_rng(5)
    upper = sparse_random(80, 80, density=0.15, random_state=rng, format="csr")
    upper.data = rng.uniform(0.1, 2.0, upper.data.size).round(1)  # many equal weights
    chain = csr_matrix((np.full(79, 3.0), (np.arange(79), np.arange(1, 80))), shape=(80, 80))
    sym = (upper + upper.T).maximum(chain).maximum(chain.T).tocsr()  # connected
    sym.setdiag(0.5)  # self-loops are not edges
    sym = sym.tocsr()
    a, b, w = knn_graph.graph_mst(sym)
    assert a.size == 79
    assert w.sum() == pytest.approx(csgraph.minimum_spanning_tree(sym).sum())
    dense = sym.toarray()
    np.fill_diagonal(dense, 0)
    assert w.sum() == pytest.approx(prim_total(np.where(dense > 0, dense, np.inf)))
    tri = knn_graph.upper_triangle(csr_matrix(np.triu(np.ones((4, 4))) + np.eye(4)[::-1]))
    np.testing.assert_array_equal(tri.toarray(), np.triu(np.ones((4, 4)), 1) + np.triu(np.eye(4)[::-1], 1))


def prim_total(weights: np.ndarray) -> float:
    """Total weight of a minimum spanning tree of a dense (n, n) matrix (inf: no edge)."""
    n = weights.shape[0]
    best = weights[0].copy()
    done = np.zeros(n, bool)
    done[0] = True
    total = 0.0
    for _ in range(n - 1):
        j = int(np.argmin(np.where(done, np.inf, best)))
        total += best[j]
        done[j] = True
        best = np.minimum(best, weights[j])
    return total
