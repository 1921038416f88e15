"""Fast CPU backend: HDBSCAN on a k-nearest-neighbour graph instead of all n² distances.

Steps, for (n, d) unit rows ``x``:

1. group identical rows; work on the m distinct vectors, each with its multiplicity;
2. k nearest distinct neighbours (faiss: exact below ``knn.EXACT_MAX_ROWS`` rows,
   HNSW above);
3. core distance of a distinct vector: the distance at which its neighbourhood —
   itself and its copies first, then its neighbours with theirs — holds ``min_samples``
   points (scikit-learn's convention: the point counts itself);
4. mutual reachability ``max(core_i, core_j, d_ij)`` on the symmetrised kNN graph;
   disconnected components are joined by Borůvka rounds (each component adds its
   lightest exit edge, searched in the same index with the component excluded);
5. minimum spanning tree (scipy) over distinct vectors; every copy hangs off its
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

from .. import knn
from ..budget import plan_linear
from ..params import HdbscanParams
from . import Labels
from .hdbscan_tree import hdbscan_labels

NAME = "knn"
DEVICE = "cpu"

MIN_GRAPH_K = 32  # neighbours per distinct point, at least (ARI 0.971 at 16, 0.985 at 32 = exact MST, on MiniLM vectors)
# Up to this many distinct rows the "kNN" graph is complete (k = m - 1): the MST, and so
# the clustering, is then exactly scikit-learn's; it costs m² edges (~160 MB at 2,000).
FULL_GRAPH_MAX_ROWS = 2000
EDGE_FLOOR = 1e-12  # scipy's MST treats a stored 0 as "no edge"; distinct points are > 0 apart
JOIN_SAMPLE = 256  # members per component searched for an exit edge
JOIN_CANDIDATES = 8  # nearest outside rows considered per searched member


def graph_k(params: HdbscanParams, n_distinct: int | None = None) -> int:
    """Neighbours searched per distinct point (all others for small inputs)."""
    if n_distinct is not None and n_distinct <= FULL_GRAPH_MAX_ROWS:
        return n_distinct - 1
    return max(params.min_samples, MIN_GRAPH_K)


def core_distances(counts: np.ndarray, nb: knn.Neighbours, min_samples: int) -> tuple[np.ndarray, int]:
    """(m,) float64 core distances from multiplicity-weighted neighbour lists.

    Returns the distances and how many points never reached ``min_samples`` within
    their k neighbours (their core distance is then the k-th distance, a lower bound).
    """
    nb_counts = np.where(nb.indices >= 0, counts[np.maximum(nb.indices, 0)], 0)
    cum = counts[:, None] + np.cumsum(nb_counts, axis=1)
    reached = cum >= min_samples
    first = np.argmax(reached, axis=1)
    core = nb.distances[np.arange(len(counts)), first]
    short = ~reached[:, -1]
    core[short] = nb.distances[short, -1]
    core[counts >= min_samples] = 0.0  # enough copies of itself
    return core, int((short & (counts < min_samples)).sum())


def reachability_graph(nb: knn.Neighbours, core: np.ndarray) -> sp.csr_matrix:
    """Symmetric (m, m) CSR of mutual reachability distances on the kNN edges."""
    m, k = nb.indices.shape
    rows = np.repeat(np.arange(m), k)
    cols = nb.indices.ravel()
    ok = cols >= 0
    rows, cols, d = rows[ok], cols[ok], nb.distances.ravel()[ok]
    w = np.maximum(np.maximum(core[rows], core[cols]), np.maximum(d, EDGE_FLOOR))
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    key = lo * m + hi
    key, first = np.unique(key, return_index=True)  # one entry per undirected edge
    upper = sp.csr_matrix((w[first], (lo[first], hi[first])), shape=(m, m))
    return (upper + upper.T).tocsr()


def join_components(index: knn.KnnIndex, graph: sp.csr_matrix, core: np.ndarray) -> tuple[sp.csr_matrix, int]:
    """Borůvka rounds until the graph is connected; returns (graph, components at start).

    Each round, every component but the largest searches the index for the nearest
    rows outside itself (from at most ``JOIN_SAMPLE`` of its members) and adds its
    lightest mutual-reachability edge among them.
    """
    n_comp, comp = csgraph.connected_components(graph, directed=False)
    initial = n_comp
    rng = np.random.default_rng(0)
    while n_comp > 1:
        order = np.argsort(comp, kind="stable")
        bounds = np.searchsorted(comp[order], np.arange(n_comp + 1))
        largest = int(np.argmax(np.diff(bounds)))
        edges = [lightest_exit(index, core, order[bounds[c]:bounds[c + 1]], rng)
                 for c in range(n_comp) if c != largest]
        i, j, w = (np.array(v) for v in zip(*edges))
        extra = sp.csr_matrix((w, (i, j)), shape=graph.shape)
        graph = graph.maximum(extra).maximum(extra.T).tocsr()
        n_comp, comp = csgraph.connected_components(graph, directed=False)
    return graph, initial


def lightest_exit(index: knn.KnnIndex, core: np.ndarray, members: np.ndarray, rng) -> tuple[int, int, float]:
    """(i in members, j outside, weight) of the lightest exit edge found from ``members``."""
    queries = members if members.size <= JOIN_SAMPLE else rng.choice(members, JOIN_SAMPLE, replace=False)
    found, sims = index.search(np.sort(queries), JOIN_CANDIDATES, exclude=np.sort(members))
    q = np.sort(queries)[:, None].repeat(found.shape[1], axis=1)
    ok = found >= 0
    w = np.maximum(np.maximum(core[q], core[np.maximum(found, 0)]),
                   np.maximum(knn.cosine_to_distance(sims), EDGE_FLOOR))
    w[~ok] = np.inf
    a, b = np.unravel_index(np.argmin(w), w.shape)
    return int(q[a, b]), int(found[a, b]), float(w[a, b])


def spanning_edges(graph: sp.csr_matrix, distinct: knn.DistinctRows,
                   core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n-1 MST edges over all rows: (n-1,) int64 ends ``a``, ``b``, float64 weights ``w``."""
    mst = csgraph.minimum_spanning_tree(graph).tocoo()
    rep = distinct.rep_rows
    copies = np.setdiff1d(np.arange(distinct.inverse.size), rep, assume_unique=True)
    owner = distinct.inverse[copies]
    a = np.concatenate([rep[mst.row], copies]).astype(np.int64)
    b = np.concatenate([rep[mst.col], rep[owner]]).astype(np.int64)
    w = np.concatenate([mst.data, core[owner]]).astype(np.float64)
    return a, b, w


def labels_from_edges(edges: tuple[np.ndarray, np.ndarray, np.ndarray],
                      params: HdbscanParams) -> tuple[np.ndarray, np.ndarray]:
    """Single linkage -> condensed tree -> EOM selection on the MST edges (hdbscan_tree)."""
    a, b, w = edges
    return hdbscan_labels(a, b, w, params.min_cluster_size, params.cluster_selection_epsilon,
                          params.allow_single_cluster)


def fit(x: np.ndarray, params: HdbscanParams) -> Labels:
    """Cluster the rows of ``x`` ((n, d) float32, unit rows) on a kNN graph."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    distinct = knn.distinct_rows(x)
    xd = x if distinct.n_distinct == x.shape[0] else x[distinct.rep_rows]
    seconds["distinct"], t = time.perf_counter() - t, time.perf_counter()
    if distinct.n_distinct == 1:
        return single_vector_labels(x.shape[0], params)
    nb, index = knn.nearest_neighbours(xd, graph_k(params, distinct.n_distinct))
    seconds["knn"], t = time.perf_counter() - t, time.perf_counter()
    core, short = core_distances(distinct.counts, nb, params.min_samples)
    graph, n_comp = join_components(index, reachability_graph(nb, core), core)
    del index
    edges = spanning_edges(graph, distinct, core)
    seconds["graph_mst"], t = time.perf_counter() - t, time.perf_counter()
    labels, probs = labels_from_edges(edges, params)
    seconds["tree"] = time.perf_counter() - t
    return Labels(labels, probs, {
        "library": "faiss + scipy + gpu_cluster tree", "knn": nb.method, "k": nb.indices.shape[1],
        "n_distinct": distinct.n_distinct, "components_joined": n_comp,
        "core_distance_lower_bounds": short, "seconds": {k: round(v, 3) for k, v in seconds.items()},
    })


def single_vector_labels(n: int, params: HdbscanParams) -> Labels:
    """All rows identical: one cluster if allowed and big enough, else all noise."""
    one = params.allow_single_cluster and n >= params.min_cluster_size
    labels = np.zeros(n, np.int64) if one else np.full(n, -1, np.int64)
    return Labels(labels, np.full(n, 1.0 if one else 0.0), {"n_distinct": 1})


# Host bytes per point per neighbour slot: kNN ids and distances, the edge keys and
# weights, and the symmetric CSR graph with its MST (measured: ~85 B at n = 100k).
BYTES_PER_NEIGHBOUR = 96


def memory_model(n: int, dim: int) -> tuple[int, int]:
    """(fixed, per-min_samples) peak host bytes of a fit, including the float32 input.

    The input, the distinct-row copy inside faiss, and HNSW's links are fixed; the
    kNN graph grows with k (at least MIN_GRAPH_K, which plans ignore below it).
    """
    return 2 * 4 * n * dim + 2 * knn.HNSW_M * 4 * n, BYTES_PER_NEIGHBOUR * n


def plan_params(params: HdbscanParams, n: int, dim: int, *, available: int, explicit: bool):
    """min_samples within the host memory budget (see gpu_cluster.budget)."""
    fixed, per_k = memory_model(n, dim)
    return plan_linear(params.min_samples, explicit=explicit, n=n, dim=dim, fixed=fixed,
                       per_k=per_k, available=available, what="the kNN graph")


# Rough, for plans and heartbeats; measured on this project's 2-core machine (768-d):
# exact search ~2·m²·d at 150 GFLOP/s; HNSW build + search ~0.32 ms per row at k = 42
# (1.1M rows: 352 s), graph + MST ~1 µs per edge (44 s).
def estimate(n: int, dim: int, params: HdbscanParams) -> tuple[float, int]:
    """Rough (seconds, peak host bytes) of one fit of n x dim rows."""
    k = graph_k(params)
    if n <= knn.EXACT_MAX_ROWS:
        seconds = 2.0 * n * n * dim / 150e9 + 1e-6 * n * k
    else:
        seconds = 3.2e-4 * n * (dim / 768) * (k / 42) ** 0.5 + 1e-6 * n * k
    fixed, per_k = memory_model(n, dim)
    return seconds, int(fixed + per_k * k)
