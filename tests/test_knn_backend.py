"""The fast CPU backend: parity with the reference, duplicates, disconnected graphs,
tiny inputs, approximate search, and the min_samples cap."""

import numpy as np
import pytest
import scipy.sparse as sp
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


def test_core_distances_in_blocks_equal_a_row_by_row_count(monkeypatch):
    """Across block boundaries, with multiplicities, short lists and points with enough
    copies of themselves: each row's core distance is where a plain running count of
    itself then its listed neighbours first reaches min_samples."""
    rng = np.random.default_rng(4)
    m, k, min_samples = 500, 12, 9
    counts = np.where(rng.random(m) < 0.2, rng.integers(2, 12, m), 1)
    idx = np.stack([rng.choice(m, k, replace=False) for _ in range(m)])
    dist = np.sort(rng.uniform(0.1, 1.0, (m, k)), axis=1)
    idx[::7, 4:], dist[::7, 4:] = -1, np.inf
    monkeypatch.setattr(knn, "CORE_BLOCK_ROWS", 64)
    core, short = knn_graph.core_distances(counts, knn.Neighbours(idx, dist, "exact"), min_samples)
    expected, expected_short = np.empty(m), 0
    for i in range(m):
        held, expected[i] = counts[i], 0.0
        if held >= min_samples:
            continue
        for j, d in zip(idx[i], dist[i]):
            if j >= 0:
                held += counts[j]
                expected[i] = d
                if held >= min_samples:
                    break
        else:
            expected_short += 1
            expected[i] = dist[i, -1]
    np.testing.assert_array_equal(core, expected)
    assert short == expected_short > 0


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
    assert plan.capped and knn_graph.MIN_GRAPH_K <= plan.min_samples < 1100
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


def minimax_closure(weights: np.ndarray) -> np.ndarray:
    """All-pairs minimax path distances of a dense undirected graph (inf: no edge), by
    Floyd-Warshall: the heaviest edge on the best path, 0 on the diagonal."""
    out = weights.copy()
    np.fill_diagonal(out, 0.0)
    for v in range(out.shape[0]):
        out = np.minimum(out, np.maximum(out[:, v:v + 1], out[v:v + 1, :]))
    return out


def test_reachability_graph_keeps_near_edges_and_far_edges_that_can_be_in_the_tree(monkeypatch):
    """Each row's first base_k neighbours at max(core_i, core_j, d_ij); a farther listed
    neighbour only where it is lighter than the minimax path between its ends over the
    near edges; -1 slots skipped. So the graph's spanning tree weighs what the tree of all
    listed edges weighs, with the same components."""
    from scipy.sparse import csgraph
    x = blobs(90, 8, seed=2, centres=6, spread=0.05)
    idx, dist = knn.exact_neighbours(x, 12)
    idx[3, 11], dist[3, 11] = -1, np.inf  # a short list
    idx[4, 1:], dist[4, 1:] = -1, np.inf
    rng = np.random.default_rng(2)
    core = rng.uniform(0.0, 0.3, 90)
    base_k = 3
    monkeypatch.setattr(knn, "CORE_BLOCK_ROWS", 16)  # the far edges are filtered in blocks
    nb = knn.Neighbours(idx, dist, "exact")
    graph = knn_graph.reachability_graph(nb, core, base_k=base_k).toarray()

    def weight(i, j, d):
        return max(core[i], core[j], d)

    near = np.full((90, 90), np.inf)
    for i in range(90):
        for j, d in zip(idx[i, :base_k], dist[i, :base_k]):
            if j >= 0:
                near[i, j] = near[j, i] = min(near[i, j], weight(i, j, d))
    minimax = minimax_closure(near)
    expected = np.zeros((90, 90))
    kept = dropped = 0
    for i in range(90):
        for rank, (j, d) in enumerate(zip(idx[i], dist[i])):
            if j < 0:
                continue
            if rank >= base_k and not weight(i, j, d) < minimax[i, j]:
                dropped += 1
                continue
            kept += rank >= base_k
            expected[i, j] = weight(i, j, d)
    assert kept > 0 and dropped > 0  # both branches are exercised
    np.testing.assert_array_equal(graph, expected)
    everything = knn_graph.reachability_graph(nb, core, base_k=12)
    assert everything.nnz == (idx >= 0).sum()
    n_all, comp_all = csgraph.connected_components(everything, directed=False)
    n_ours, comp_ours = csgraph.connected_components(graph, directed=False)
    assert n_ours == n_all and adjusted_rand_score(comp_all, comp_ours) == 1.0
    assert csgraph.minimum_spanning_tree(graph).sum() == pytest.approx(
        csgraph.minimum_spanning_tree(everything).sum(), rel=1e-12)
    # The spine (the near edges' forest and the kept far edges) has the same components
    # and spanning-tree weight with far fewer edges, each pair stored once.
    same_graph, spine = knn_graph.reachability_graphs(nb, core, base_k=base_k)
    np.testing.assert_array_equal(same_graph.toarray(), expected)
    n_spine, comp_spine = csgraph.connected_components(spine, directed=False)
    assert n_spine == n_all and adjusted_rand_score(comp_all, comp_spine) == 1.0
    assert spine.nnz < graph.astype(bool).sum() and spine.nnz <= 89 + kept
    assert csgraph.minimum_spanning_tree(spine).sum() == pytest.approx(
        csgraph.minimum_spanning_tree(everything).sum(), rel=1e-12)
    assert (sp.triu(spine, k=1) != spine).nnz == 0  # stored as (min, max)


def test_lightest_of_each_pair_keeps_one_entry_per_unordered_pair():
    i, j = np.array([0, 2, 1, 2, 3]), np.array([2, 0, 3, 0, 1])
    w = np.array([0.5, 0.3, 0.7, 0.4, 0.6])
    g = knn_graph.lightest_of_each_pair(i, j, w, 4).toarray()
    expected = np.zeros((4, 4))
    expected[0, 2], expected[1, 3] = 0.3, 0.6
    np.testing.assert_array_equal(g, expected)


def test_forest_minimax_is_the_heaviest_edge_on_the_path():
    """Against Floyd-Warshall on a random forest of several trees, with equal weights and
    a repeated edge (read as the forest's minimum): inf between trees, 0 from a node to
    itself."""
    from scipy.sparse import csgraph, csr_matrix
    from gpu_cluster.backends.forest_minimax import ForestMinimax
    rng = np.random.default_rng(7)
    m = 120
    weights = np.where(rng.random((m, m)) < 0.012, rng.integers(1, 6, (m, m)) / 4, 0)
    forest = csgraph.minimum_spanning_tree(csr_matrix(weights)).tocoo()
    assert csgraph.connected_components(forest, directed=False)[0] > 3
    a = np.append(forest.row, forest.row[0])  # the first edge once more, heavier
    b = np.append(forest.col, forest.col[0])
    w = np.append(forest.data, forest.data[0] + 1)
    dense = np.full((m, m), np.inf)
    dense[forest.row, forest.col] = dense[forest.col, forest.row] = forest.data
    expected = minimax_closure(dense)
    i, j = (v.ravel() for v in np.meshgrid(np.arange(m), np.arange(m), indexing="ij"))
    got = ForestMinimax(a, b, w, m).between(i, j).reshape(m, m)
    np.testing.assert_array_equal(got, expected)
    assert np.isinf(got).any() and (got == 0).sum() == m


def test_graph_mst_is_the_minimum_spanning_tree_of_the_graph_read_as_undirected():
    """A pair may be stored in one direction or both (the lighter weighs): the tree's
    weight is that of a scipy-free Prim on the dense undirected matrix; with many equal
    weights and self-loops."""
    from scipy.sparse import csr_matrix, random as sparse_random
    rng = np.random.default_rng(5)
    directed = sparse_random(80, 80, density=0.15, random_state=rng, format="csr")
    directed.data = rng.uniform(0.1, 2.0, directed.data.size).round(1)  # many equal weights
    chain = csr_matrix((np.full(79, 3.0), (np.arange(79), np.arange(1, 80))), shape=(80, 80))
    graph = directed.maximum(chain).tolil()
    graph.setdiag(0.5)  # self-loops are not edges
    graph = graph.tocsr()
    a, b, w = knn_graph.graph_mst(graph)
    assert a.size == 79
    dense = graph.toarray()
    np.fill_diagonal(dense, 0)
    dense = np.where(dense > 0, dense, np.inf)
    undirected = np.minimum(dense, dense.T)
    assert w.sum() == pytest.approx(prim_total(undirected))
    assert np.all(w == undirected[a, b])  # each tree edge at its lighter direction's weight


def test_exits_are_added_once_where_the_graph_has_no_edge_either_way():
    """An exit between two points the graph already links, in either stored direction,
    keeps the graph's weight; a new one is stored once (a sparse sum would double it)."""
    from scipy.sparse import csr_matrix
    from gpu_cluster.backends import component_joins
    graph = csr_matrix(([0.3, 0.4], ([5, 1], [2, 4])), shape=(6, 6))
    exits = [component_joins.Exit(2, 5, 0.9), component_joins.Exit(1, 4, 0.8),
             component_joins.Exit(0, 3, 0.7), component_joins.Exit(3, 0, 0.7)]
    out = component_joins.with_edges(graph, exits).toarray()
    expected = graph.toarray()
    expected[0, 3] = 0.7
    np.testing.assert_array_equal(out, expected)


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


@pytest.mark.parametrize("spread", [1.0, 1e-3, 1e-6])
def test_component_radius_bounds_every_member_distance_from_its_centre(spread):
    """The float32 radius (with its slack) is never below a member's float64 distance from
    the stored centre, wide or tight; the pair bounds rely on it."""
    from gpu_cluster.backends import component_joins
    rng = np.random.default_rng(3)
    centre = rng.standard_normal(768)
    x = (centre / np.linalg.norm(centre) + spread * rng.standard_normal((3000, 768)) / np.sqrt(768))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    groups = [np.arange(0, 1000), np.arange(1000, 3000)]
    cent, radius, kappa = component_joins.summaries(x, groups, np.zeros(3000))
    for c, g in enumerate(groups):
        far = np.sqrt(((x[g].astype(np.float64) - cent[c]) ** 2).sum(axis=1)).max()
        assert far <= radius[c] <= far * (1 + 1e-4) + 1e-6
