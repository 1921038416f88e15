"""Fast CPU backend: HDBSCAN on a k-nearest-neighbour graph instead of all n² distances.

Steps, for (n, d) unit rows ``x``:

1. group identical rows; work on the m distinct vectors, each with its multiplicity;
2. up to ``dense_mst.DENSE_MAX_ROWS`` distinct rows: the exact mutual-reachability MST
   (Prim on the dense distance matrix), then step 6; above:
3. k nearest distinct neighbours (``knn_search``: exact blocked NumPy GEMM up to
   ``EXACT_MAX_ROWS`` rows, exact inside k-means cells above; rows whose list comes back short are
   searched exactly); core distance of a distinct vector: the distance at which its
   neighbourhood —
   itself and its copies first, then its neighbours with theirs — holds ``min_samples``
   points (scikit-learn's convention: the point counts itself);
4. mutual reachability ``max(core_i, core_j, d_ij)`` on the kNN graph: each point's
   first ``MIN_GRAPH_K`` neighbours, and its farther listed neighbours only where they are
   lighter than the near edges' minimax path between their ends (the same spanning tree);
   disconnected components are joined by Borůvka rounds, each component adding its exact
   lightest exit edge (``component_joins``);
5. minimum spanning tree (scipy) over distinct vectors, taken from the "spine": the near
   edges' spanning forest, the kept farther edges and the joins (the near edges off that
   forest are in no spanning tree: 1.1M rows, 24.7M -> 0.77M entries, MST 8-10 s -> 0.3
   s, the same tree weight); every copy hangs off its
   representative at the representative's core distance — exactly the edge the full
   mutual-reachability MST would use, since no edge of the copy is shorter;
6. ``hdbscan_tree`` turns the n-1 edges into labels and probabilities: single linkage,
   condensed tree, EOM with ``cluster_selection_epsilon`` and ``allow_single_cluster``,
   exactly as scikit-learn's tree code does it (tested against it), in O(n log n).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from ..budget import default_host_budget, plan_linear
from ..distinct import row_hashes
from ..labels import Labels
from ..params import HdbscanParams
from . import component_joins, dense_mst, knn_cells
from .forest_minimax import ForestMinimax
from . import knn_search as knn
from .knn_search import core_distances
from .hdbscan_tree import hdbscan_labels

NAME = "knn"
DEVICE = "cpu"

MIN_GRAPH_K = 32  # neighbours per distinct point, at least (ARI 0.971 at 16, 0.985 at 32 = exact MST, on MiniLM vectors)
EDGE_FLOOR = 1e-12  # scipy's MST treats a stored 0 as "no edge"; distinct points are > 0 apart


def graph_k(params: HdbscanParams, n_distinct: int | None = None) -> int:
    """Neighbours searched per distinct point (never more than the other rows)."""
    k = max(params.min_samples, MIN_GRAPH_K)
    return k if n_distinct is None else min(k, n_distinct - 1)


def reachability_graph(nb: knn.Neighbours, core: np.ndarray,
                       base_k: int = MIN_GRAPH_K) -> sp.csr_matrix:
    """(m, m) CSR of mutual reachability weights ``max(core_i, core_j, d_ij)`` on listed
    pairs, read as undirected: row i holds edges of i's own list (a pair listed by both
    ends is stored twice, with the same weight up to rounding; scipy's components and MST
    read either direction). Slots of -1 (a short list) are skipped.

    Every point keeps the edges to its first ``base_k`` neighbours. A farther listed
    neighbour (the lists are ``min_samples`` long, for the core distances) is kept only
    where its edge is lighter than the heaviest edge on the path between its ends in the
    minimum spanning forest of those near edges (infinite between two trees): an edge no
    lighter closes a cycle it is the heaviest of, and no minimum spanning tree of all the
    listed edges needs it (the cycle property). So the spanning tree weighs what that of
    all listed edges weighs, and has their components; on 300k synthetic rows with
    min_samples 300, 8.4M entries instead of 88M.
    """
    return reachability_graphs(nb, core, base_k)[0]


def reachability_graphs(nb: knn.Neighbours, core: np.ndarray,
                        base_k: int = MIN_GRAPH_K) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(graph, spine): ``reachability_graph``'s graph, and the same points with only the
    near edges' minimum spanning forest and the farther edges kept. By the same cycle
    property a near edge off that forest is in no minimum spanning tree, so the spine
    has the graph's components and spanning-tree weight with ~1 edge per point instead of
    ``base_k`` (the dense fragments need the graph; the components and the tree only the
    spine). Without farther slots the spine is the graph."""
    m, k = nb.indices.shape
    keep = nb.indices >= 0
    if k <= base_k:
        graph = lists_graph(nb, core, keep)
        return graph, graph
    near = lists_graph(nb, core, keep & (np.arange(k) < base_k))
    forest = csgraph.minimum_spanning_tree(near).tocoo()
    del near
    minimax = ForestMinimax(forest.row, forest.col, forest.data, m)
    for start in range(0, m, knn.CORE_BLOCK_ROWS):  # in blocks: ~70 B per slot of one
        rows = slice(start, start + knn.CORE_BLOCK_ROWS)
        far = nb.indices[rows, base_k:]
        i = np.broadcast_to(np.arange(start, start + far.shape[0])[:, None], far.shape).ravel()
        j = np.maximum(far, 0).ravel()
        w = reachability(core, i, j, nb.distances[rows, base_k:].ravel())
        keep[rows, base_k:] &= (w < minimax.between(i, j)).reshape(far.shape)
    far = lists_graph(nb, core, keep & (np.arange(k) >= base_k)).tocoo()
    spine = lightest_of_each_pair(np.concatenate([forest.row, far.row]),
                                  np.concatenate([forest.col, far.col]),
                                  np.concatenate([forest.data, far.data]), m)
    return lists_graph(nb, core, keep), spine


def lightest_of_each_pair(i: np.ndarray, j: np.ndarray, w: np.ndarray, m: int) -> sp.csr_matrix:
    """(m, m) CSR holding each unordered pair of the edges (i, j, w) once, at its lightest
    weight, stored as (min, max)."""
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    order = np.lexsort((w, hi, lo))
    lo, hi, w = lo[order], hi[order], w[order]
    first = np.ones(lo.size, bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return sp.csr_matrix((w[first], (lo[first], hi[first])), shape=(m, m))


def reachability(core: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Mutual reachability weights max(core_i, core_j, d_ij) of pairs (i, j) at distance d,
    never below EDGE_FLOOR (scipy reads a stored 0 as no edge)."""
    return np.maximum(np.maximum(core[i], core[j]), np.maximum(d, EDGE_FLOOR))


def lists_graph(nb: knn.Neighbours, core: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """(m, m) CSR with row i's kept list entries ((m, k) bool ``keep``) at their mutual
    reachability weights; built without a sort, the lists being CSR rows already."""
    m = nb.indices.shape[0]
    per_row = keep.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    cols = nb.indices[keep]
    w = reachability(core, np.repeat(np.arange(m), per_row), cols, nb.distances[keep])
    index_type = np.int32 if max(m, cols.size) < 2**31 else np.int64
    return sp.csr_matrix((w, cols.astype(index_type), indptr.astype(index_type)), shape=(m, m))


def graph_mst(graph: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, w) edges of the minimum spanning tree of a connected graph read as undirected
    (scipy: where both directions are stored, the lighter weighs)."""
    mst = csgraph.minimum_spanning_tree(graph).tocoo()
    return mst.row.astype(np.int64), mst.col.astype(np.int64), mst.data.astype(np.float64)


def spanning_edges(tree, distinct: knn.DistinctRows, core: np.ndarray):
    """The n-1 MST edges over all rows: (n-1,) int64 ends ``a``, ``b``, float64 weights ``w``.

    ``tree``: (a, b, w) spanning-tree edges over the distinct rows. Every copy hangs off
    its representative at the representative's core distance.
    """
    a, b, w = tree
    rep = distinct.rep_rows
    copies = np.setdiff1d(np.arange(distinct.inverse.size), rep, assume_unique=True)
    owner = distinct.inverse[copies]
    return (np.concatenate([rep[a], copies]).astype(np.int64),
            np.concatenate([rep[b], rep[owner]]).astype(np.int64),
            np.concatenate([w, core[owner]]).astype(np.float64))


def labels_from_edges(edges: tuple[np.ndarray, np.ndarray, np.ndarray],
                      params: HdbscanParams) -> tuple[np.ndarray, np.ndarray]:
    """Single linkage -> condensed tree -> EOM selection on the MST edges (hdbscan_tree)."""
    a, b, w = edges
    return hdbscan_labels(a, b, w, params.min_cluster_size, params.cluster_selection_epsilon,
                          params.allow_single_cluster)


def fit(x: np.ndarray, params: HdbscanParams) -> Labels:
    """Cluster the rows of ``x`` ((n, d) float32, unit rows).

    Up to ``dense_mst.DENSE_MAX_ROWS`` distinct rows the mutual-reachability MST is exact
    (Prim on the dense matrix); above, it is the MST of a k-NN graph whose components are
    joined by their exact lightest exit edges.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    distinct = knn.distinct_rows(x)
    xd = x if distinct.n_distinct == x.shape[0] else x[distinct.rep_rows]
    seconds["distinct"], t = time.perf_counter() - t, time.perf_counter()
    if distinct.n_distinct == 1:
        return single_vector_labels(x.shape[0], params)
    if distinct.n_distinct <= dense_mst.DENSE_MAX_ROWS:
        tree, core = dense_mst.exact_mst(xd, distinct.counts, params.min_samples)
        seconds["dense_mst"], t = time.perf_counter() - t, time.perf_counter()
        details = {"mst": "exact (dense Prim)"}
    else:
        tree, core, details = knn_graph_mst(xd, distinct.counts, params, seconds)
        t = time.perf_counter()
    edges = spanning_edges(tree, distinct, core)
    labels, probs = labels_from_edges(edges, params)
    seconds["tree"] = time.perf_counter() - t
    return Labels(labels, probs, {
        "library": "numpy + scipy + gpu_cluster tree", **details,
        "n_distinct": distinct.n_distinct, "seconds": {k: round(v, 3) for k, v in seconds.items()},
    })


def knn_graph_mst(xd: np.ndarray, counts: np.ndarray, params: HdbscanParams, seconds: dict):
    """MST over distinct unit rows ``xd`` from a k-NN graph plus exact component joins.

    Returns ((a, b, w) tree edges, (m,) core distances, details); fills ``seconds``.
    """
    t = time.perf_counter()
    nb, x_index = knn.nearest_neighbours(xd, graph_k(params, xd.shape[0]))
    seconds["knn"], t = time.perf_counter() - t, time.perf_counter()
    core, short = core_distances(counts, nb, params.min_samples)
    graph, spine = reachability_graphs(nb, core)
    n_components, parts = csgraph.connected_components(spine, directed=False)
    seconds["graph"], t = time.perf_counter() - t, time.perf_counter()
    links, bridges = component_joins.bridge_dense_fragments(x_index, graph, core,
                                                            params.min_cluster_size)
    del graph  # the tree needs only the spine
    seconds["bridges"], t = time.perf_counter() - t, time.perf_counter()
    exits, joins = component_joins.join_components(x_index, core, parts, links)
    seconds["joins"], t = time.perf_counter() - t, time.perf_counter()
    tree = graph_mst(component_joins.with_edges(spine, links + exits))
    seconds["mst"] = time.perf_counter() - t
    return tree, core, {"mst": "k-NN graph + exact component joins", "knn": nb.method,
                        "k": nb.indices.shape[1], "bridges": bridges, "joins": joins,
                        "components_joined": int(n_components),
                        "core_distance_lower_bounds": short}


def single_vector_labels(n: int, params: HdbscanParams) -> Labels:
    """All rows identical: one cluster if allowed and big enough, else all noise."""
    one = params.allow_single_cluster and n >= params.min_cluster_size
    labels = np.zeros(n, np.int64) if one else np.full(n, -1, np.int64)
    return Labels(labels, np.full(n, 1.0 if one else 0.0), {"n_distinct": 1})


# Host bytes per point per neighbour slot. The first MIN_GRAPH_K slots are graph edges:
# kNN ids and distances, the edge weights, the CSR graph with its MST, the fragments'
# copies (measured: ~85 B at n = 100k when every slot was an edge). A farther slot is only
# a list entry: at the search's end its lazy buffer (``knn_cells.Lists``: 2 x 12 B) and its
# output (12 B), later its id and distance (16 B); the graph keeps few of them (3% at
# 300k x 293), filtered in blocks (measured 2026-12-03, 300k x 293: peak 4.32 GiB with the
# buffers merged at every visit, against 6.93 GiB when every slot was an edge). The
# search's own tiles (``knn_cells.working_bytes``) count only where they
# exceed the graph's extra bytes.
BYTES_PER_NEIGHBOUR = 96
SEARCH_BYTES_PER_NEIGHBOUR = 40


def memory_model(n: int, dim: int) -> tuple[int, int]:
    """(fixed, per-neighbour) peak host bytes of a fit, including the float32 input, for
    k >= MIN_GRAPH_K neighbours: ``fixed + per_neighbour * k``.

    The input is fixed; on top of it, the larger of the two paths' own fixed bytes (a plan
    cannot know which runs: that depends on the distinct rows): the k-NN path's
    distinct-row copy (up to n rows), its MIN_GRAPH_K graph edges per point and the cells'
    search tiles, or the dense path's matrix and its distinct rows (at most DENSE_MAX_ROWS
    of them). Each neighbour searched beyond MIN_GRAPH_K adds a list slot.
    """
    rows = min(n, dense_mst.DENSE_MAX_ROWS)
    dense = dense_mst.matrix_bytes(rows) + 4 * rows * dim
    tiles = knn_cells.working_bytes(dim, MIN_GRAPH_K)
    edges = (BYTES_PER_NEIGHBOUR - SEARCH_BYTES_PER_NEIGHBOUR) * MIN_GRAPH_K * n
    graph_path = 4 * n * dim + edges + max(0, tiles - edges)
    return 4 * n * dim + max(graph_path, dense), SEARCH_BYTES_PER_NEIGHBOUR * n


def peak_bytes(n: int, dim: int, min_samples: int) -> int:
    """Planned peak host bytes of one fit: ``max(min_samples, MIN_GRAPH_K)`` neighbours are
    searched per point, so a min_samples below MIN_GRAPH_K costs as much as MIN_GRAPH_K."""
    fixed, per_k = memory_model(n, dim)
    return fixed + per_k * max(min_samples, MIN_GRAPH_K)


def plan_params(params: HdbscanParams, n: int, dim: int, *, available: int, explicit: bool):
    """min_samples within the host memory budget (see gpu_cluster.budget)."""
    fixed, per_k = memory_model(n, dim)
    return plan_linear(params.min_samples, explicit=explicit, n=n, dim=dim, fixed=fixed,
                       per_k=per_k, available=available, what="the kNN graph",
                       floor_k=MIN_GRAPH_K)


def free_memory() -> int:
    """Bytes a fit may plan with by default: the host budget (45% of the RAM)."""
    return default_host_budget()


# Rough, for plans and heartbeats; fitted to fits measured alone on this project's 2-core
# machine (benchmarks/estimates.py, synthetic 768-d, 30% repeats; refitted 2026-12-03 to the
# 40k-1.1M fits after the joins by parts and the search's angle skip): the dense path
# ~2·m²·d float64 flops at ~45 GFLOP/s plus Prim at ~3 ns per matrix entry; the cells'
# search (knn_cells.search_seconds); graph + MST ~0.2 µs per listed neighbour (refitted
# 2026-12-03 after the graph kept 32 near edges and filtered the farther ones: 2.7e-7 at
# 40k x 40, 2.1e-7 at 110k x 110, 1.6e-7 at 300k x 293; it was ~0.6 µs when every listed
# neighbour was an edge); the bridges' search a quarter of its pair budget at
# most plus a per-row part for its bounds (measured 9.1 s at 40k, 6.9 s at 110k, 7.2 s at
# 300k; 21.5 s at 1.1M before the graph change). Every fit also pays a fixed start (the child process, the
# result's way back) and groups its n rows (8.6 s at 1.1M).
FIT_FIXED_S = 0.03
HASH_S_PER_VALUE = 1e-8
EDGE_S = 2e-7  # graph + MST, per listed neighbour (m x k slots)
# The component joins depend on how many components the k-NN graph has, which no plan
# knows: ~0.3 s where it was connected (40k-110k synthetic rows), 3.5 s at 300k (k 293) and
# 28 s at 770k distinct rows (k 43: the synthetic's 300 centres, 133 components after the
# bridges, each exit budget-bound); taken as the largest per row, so that all stay within 2x
# of the whole fit.
JOIN_S_PER_ROW = 3.6e-5
BRIDGE_FLOPS = 5e10  # float32 GEMM of the bridge searches, with their gathers, 2 cores
BRIDGE_S_PER_ROW = 1.5e-5  # the fragments' summaries and pair bounds


def fit_seconds(n: int, m: int, dim: int, params: HdbscanParams) -> float:
    """Rough seconds of one fit of n rows of width dim, m of them distinct (the fit works
    on the distinct rows: the dense path up to DENSE_MAX_ROWS of them, the k-NN graph above)."""
    if m <= dense_mst.DENSE_MAX_ROWS:
        work = 2.0 * m * m * dim / 45e9 + 3e-9 * m * m
    else:
        k = graph_k(params, m)
        work = (knn_cells.search_seconds(m, k, dim) + EDGE_S * m * k + bridge_seconds(m, dim)
                + JOIN_S_PER_ROW * m)
    return FIT_FIXED_S + HASH_S_PER_VALUE * n * dim + work


def bridge_seconds(m: int, dim: int) -> float:
    """The dense-fragment bridges (component_joins): as many row pairs as the fragments
    need, up to its budget, taken as half the budget (at most m²/4 pairs), plus their
    bounds' pass over the m rows."""
    pairs = min(component_joins.BRIDGE_BUDGET_PAIRS / 2, m * m / 4)
    return 2.0 * pairs * dim / BRIDGE_FLOPS + BRIDGE_S_PER_ROW * m


def estimate(n: int, dim: int, params: HdbscanParams) -> tuple[float, int]:
    """Rough (seconds, peak host bytes) of one fit of n x dim rows, all taken as distinct
    (a plan reads no vector; ``estimate_for_rows`` knows better once they are read)."""
    return fit_seconds(n, n, dim, params), peak_bytes(n, dim, params.min_samples)


def estimate_for_rows(x: np.ndarray, params: HdbscanParams,
                      hashes: np.ndarray | None = None) -> float:
    """Rough seconds of the fit of these rows ((n, d) float32), from their distinct count
    (``hashes``: their (n,) uint64 ``row_hashes``, computed here when not given)."""
    hashes = row_hashes(x) if hashes is None else hashes
    m = int(np.unique(hashes).shape[0])
    return fit_seconds(x.shape[0], m, x.shape[1], params)
