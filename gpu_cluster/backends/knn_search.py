"""Nearest neighbours for the knn backend: distinct rows, exact and approximate kNN.

Identical vectors are common in this data (identical texts embed identically), and a
point's nearest neighbours would otherwise be mostly its own copies, fragmenting the
graph. So neighbours are searched over *distinct* rows only; copies are tied back to
their representative afterwards (see ``backends/knn_graph.py``).

Up to ``EXACT_MAX_ROWS`` distinct rows the search is exact, a blocked NumPy GEMM; above,
it is faiss's ``IndexHNSWFlat`` (approximate). Both work on inner products of unit rows,
turned into euclidean distance; near pairs, where ``2 - 2·cos`` cancels badly in
float32, are recomputed from the vectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..distinct import row_hashes, rows_equal

# Up to this many distinct rows the search is exact: blocked NumPy GEMM + argpartition
# (~111 GFLOP/s here, where faiss's bundled OpenBLAS 0.3.15 falls back to generic
# "Prescott" kernels at ~16 GFLOP/s). Its m² cost passes HNSW's near 20k x 768 rows.
EXACT_MAX_ROWS = 20_000
EXACT_BLOCK_ROWS = 2048
# Above EXACT_MAX_ROWS: faiss HNSW (a navigable graph; faiss's own SIMD code, no BLAS).
# Measured on 2 cores: HNSW (M=16, efC=64, efS=64) built in ~29 s and searched in
# ~35 s with recall 0.93 at 200k distinct 768-d rows, where IVF (nprobe 8, 141k rows)
# took 94 s + 91 s for recall@32 0.88; so IVF was dropped. Recall depends on the data:
# on benchmarks/synthetic.py's rows (isotropic noise around 300 centres, where the 32
# nearest are almost equidistant) it is 0.57 at 200k with efS=66, yet the 32nd
# neighbour's distance is off by 1.6% on average; hnswlib, usearch (f16/i8), faiss's
# HNSWSQ and a PCA pre-projection were measured against it on those rows
# (benchmarks/knn_alternatives.py, README): none is faster at the same clustering.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH_MIN = 64
REFINE_BELOW_D2 = 0.02  # recompute squared distances smaller than this from the vectors
_BLOCK = 8192


@dataclass
class DistinctRows:
    """Rows grouped by identical content.

    rep_rows: (m,) int64 row of each distinct vector's first occurrence, ascending.
    inverse: (n,) int64, ``inverse[i]`` is row i's distinct index.
    counts: (m,) int64 multiplicity of each distinct vector.
    """

    rep_rows: np.ndarray
    inverse: np.ndarray
    counts: np.ndarray

    @property
    def n_distinct(self) -> int:
        return int(self.rep_rows.shape[0])


def distinct_rows(x: np.ndarray) -> DistinctRows:
    """Group the rows of ``x`` ((n, d) float32) by identical bytes."""
    hashes = row_hashes(x)
    _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True,
                                          return_counts=True)
    inverse = inverse.astype(np.int64)
    if not _groups_are_identical(x, first, inverse):  # a hash collision: exact fallback
        rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[1] * x.itemsize)))
        _, first, inverse, counts = np.unique(rows.ravel(), return_index=True,
                                              return_inverse=True, return_counts=True)
        inverse = inverse.astype(np.int64)
    order = np.argsort(first, kind="stable")  # number distinct rows by first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return DistinctRows(first[order].astype(np.int64), rank[inverse], counts[order].astype(np.int64))


def _groups_are_identical(x, first, inverse) -> bool:
    return rows_equal(x, np.arange(x.shape[0]), first[inverse])


@dataclass
class Neighbours:
    """k nearest distinct neighbours of each of m rows (itself excluded).

    indices: (m, k) int64, ascending distance; -1 where fewer than k were found.
    distances: (m, k) float64 euclidean distances (inf where indices is -1).
    method: 'exact' or 'hnsw(M=..,efC=..,efS=..)'.
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str


def core_distances(counts: np.ndarray, nb: Neighbours, min_samples: int) -> tuple[np.ndarray, int]:
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


_faiss_used = False  # faiss ran in this process (its OpenMP pool exists)
_thread_cap: int | None = None


def after_fork() -> None:
    """The fit child's hook (isolation.py): one OpenMP thread if faiss ran before the fork.

    GNU OpenMP's thread pool does not survive fork(): a child whose parent already ran
    faiss spins forever in its first parallel region. A run's parent never runs faiss
    (fits happen in children), so this only applies when a process ran faiss itself
    before forking (the test suite does).
    """
    global _thread_cap
    if _faiss_used:
        _thread_cap = 1


def set_threads() -> None:
    import faiss

    global _faiss_used
    _faiss_used = True
    faiss.omp_set_num_threads(_thread_cap or max(1, os.cpu_count() or 1))


class KnnIndex:
    """The rows to search, and above ``exact_max_rows`` a faiss HNSW inner-product index.

    Exact searches (``kind == 'exact'``) do not use faiss: they are blocked GEMMs in
    :func:`exact_neighbours` (faster here than faiss's flat index, see EXACT_MAX_ROWS).
    """

    def __init__(self, x: np.ndarray, k: int, *, exact_max_rows: int | None = None):
        if exact_max_rows is None:
            exact_max_rows = EXACT_MAX_ROWS
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        m, d = self.x.shape
        self.kind = "exact" if m <= exact_max_rows else "hnsw"
        if self.kind == "exact":
            self.index, self.method = None, "exact"
            return
        import faiss

        set_threads()
        self.index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self.ef_search = max(HNSW_EF_SEARCH_MIN, 2 * (k + 1))
        self.index.hnsw.efSearch = self.ef_search
        self.method = f"hnsw(M={HNSW_M},efC={HNSW_EF_CONSTRUCTION},efS={self.ef_search})"
        self.index.add(self.x)

    def search(self, rows: np.ndarray, k: int):
        """(ids, cosines) of the k best indexed rows for the query rows ``rows`` (ids into x)."""
        sims, found = self.index.search(self.x[rows], k)
        return found.astype(np.int64), sims


def nearest_neighbours(
    x: np.ndarray, k: int, *, exact_max_rows: int | None = None
) -> tuple[Neighbours, KnnIndex]:
    """k nearest neighbours of every row of ``x`` ((m, d) float32, unit rows, all distinct).

    Returns the neighbours and the index (reusable for joining graph components).
    """
    m = x.shape[0]
    k = min(k, m - 1)
    index = KnnIndex(x, k, exact_max_rows=exact_max_rows)
    if index.kind == "exact":
        idx, dist = exact_neighbours(index.x, k)
    else:
        idx = np.empty((m, k), np.int64)
        dist = np.empty((m, k), np.float64)
        for s in range(0, m, _BLOCK):
            rows = np.arange(s, min(s + _BLOCK, m))
            found, sims = index.search(rows, k + 1)
            idx[rows], dist[rows] = drop_self(found, sims, rows, k)
        complete_short_lists(index.x, idx, dist)
    refine_near_distances(index.x, idx, dist)
    return Neighbours(idx, dist, index.method), index


def complete_short_lists(x: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> int:
    """Search exactly, in place, the rows whose approximate list came back short (-1 ids).

    An HNSW search can return fewer than k ids (a query stuck in a small, isolated part of
    the graph); a short list would give a wrong (infinite) core distance. Returns how many.
    """
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:
        idx[short], dist[short] = exact_neighbours(x, idx.shape[1], rows=short)
    return int(short.size)


def exact_neighbours(x: np.ndarray, k: int, *, rows: np.ndarray | None = None,
                     block: int = EXACT_BLOCK_ROWS):
    """Exact k nearest other rows of unit rows ``x`` ((m, d) float32), by blocked GEMM.

    ``rows``: the query rows (default all). Returns (indices (q, k) int64, distances (q, k)
    float64), ascending distance.
    """
    rows = np.arange(x.shape[0]) if rows is None else rows
    idx = np.empty((rows.size, k), np.int64)
    dist = np.empty((rows.size, k), np.float64)
    for s in range(0, rows.size, block):
        q = rows[s:s + block]
        sims = x[q] @ x.T  # (b, m) cosines
        sims[np.arange(q.size), q] = -np.inf  # not its own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx[s:s + q.size] = np.take_along_axis(part, order, axis=1)
        dist[s:s + q.size] = cosine_to_distance(np.take_along_axis(top, order, axis=1))
    return idx, dist


def cosine_to_distance(cos: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors from their cosine, float64."""
    return np.sqrt(np.maximum(2.0 - 2.0 * cos.astype(np.float64), 0.0))


def drop_self(found: np.ndarray, sims: np.ndarray, rows: np.ndarray, k: int):
    """Remove each row's own id from its (k+1) results; return (indices, d) of width k."""
    keep = found != rows[:, None]
    # Rows whose own id did not come back (approximate search) keep their first k.
    keep[keep.sum(axis=1) > k, -1] = False
    idx = found[keep].reshape(len(rows), k)
    d = cosine_to_distance(sims[keep].reshape(len(rows), k))
    d[idx < 0] = np.inf
    return idx, d


def refine_near_distances(x: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> None:
    """Recompute, in place, distances of near pairs from the vectors (float64 sums)."""
    rows, cols = np.nonzero(dist ** 2 < REFINE_BELOW_D2)
    for s in range(0, rows.size, _BLOCK):
        r, c = rows[s : s + _BLOCK], cols[s : s + _BLOCK]
        diff = x[r] - x[idx[r, c]]
        dist[r, c] = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
    order = np.argsort(dist, axis=1, kind="stable")  # refinement may reorder near ties
    idx[:] = np.take_along_axis(idx, order, axis=1)
    dist[:] = np.take_along_axis(dist, order, axis=1)
