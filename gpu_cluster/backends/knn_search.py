"""Nearest neighbours for the knn backend: distinct rows, exact and approximate kNN.

Identical vectors are common in this data (identical texts embed identically), and a
point's nearest neighbours would otherwise be mostly its own copies, fragmenting the
graph. So neighbours are searched over *distinct* rows only; copies are tied back to
their representative afterwards (see ``backends/knn_graph.py``).

Up to ``EXACT_MAX_ROWS`` distinct rows the search is exact, a blocked NumPy GEMM; above,
it is exact inside the cells of a k-means partition (``knn_cells``, approximate). Both work on inner products of unit rows,
turned into euclidean distance; near pairs, where ``2 - 2·cos`` cancels badly in
float32, are recomputed from the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..distinct import groups_by_first_occurrence, row_hashes, rows_equal
from . import knn_cells

# Up to this many distinct rows the search is exact: blocked NumPy GEMM + argpartition
# (~111 GFLOP/s here, where faiss's bundled OpenBLAS 0.3.15 falls back to generic
# "Prescott" kernels at ~16 GFLOP/s). Above it, the cells' search (each row against
# ~8k candidates) does less work than its m² cost.
EXACT_MAX_ROWS = 20_000
EXACT_BLOCK_ROWS = 2048
EXACT_TILE_ENTRIES = 2048 * EXACT_MAX_ROWS  # 2048 query rows at the exact path's largest m
# Above EXACT_MAX_ROWS: exact search inside the cells of a k-means partition
# (knn_cells.py). It replaced faiss HNSW (M 16, efC 64): on 200k synthetic 768-d rows
# (141k distinct, k 32, 2 cores) recall@32 0.999 in 11.5 s against HNSW's 0.567 in 21 s,
# and the ARI against the exact graph's clustering rose from 0.930 to 0.999; at 1.1M rows
# HNSW's build alone took ~3.5 min (benchmarks/knn_alternatives.py, README).
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
    first, inverse, counts = groups_by_first_occurrence(row_hashes(x))
    copies = np.flatnonzero(first[inverse] != np.arange(x.shape[0]))  # not a group's first
    if not rows_equal(x, copies, first[inverse[copies]]):  # a hash collision: exact
        rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.shape[1] * x.itemsize)))
        first, inverse, counts = groups_by_first_occurrence(rows.ravel())
    return DistinctRows(first, inverse, counts)


@dataclass
class Neighbours:
    """k nearest distinct neighbours of each of m rows (itself excluded).

    indices: (m, k) int64, ascending distance; -1 where fewer than k were found.
    distances: (m, k) float64 euclidean distances (inf where indices is -1).
    method: 'exact' or 'cells(rows=..,probes=..)'.
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str


CORE_BLOCK_ROWS = 16_384  # rows per block of the core distances' running counts


def core_distances(counts: np.ndarray, nb: Neighbours, min_samples: int) -> tuple[np.ndarray, int]:
    """(m,) float64 core distances from multiplicity-weighted neighbour lists.

    A point's core distance is the distance at which itself and its copies, then its
    neighbours with theirs, hold ``min_samples`` points. Returns the distances and how many
    points never reached ``min_samples`` within their k neighbours (their core distance is
    then the k-th distance, a lower bound). Worked in blocks of rows with int32 running
    counts (n < 2**31): at 210k x 300 slots 3.9 s -> 1.2 s, and ~5 bytes per slot of a block
    instead of ~17 per slot of all.
    """
    m = nb.indices.shape[0]
    core = np.empty(m)
    short_total = 0
    counts32 = counts.astype(np.int32)
    for start in range(0, m, CORE_BLOCK_ROWS):
        rows = slice(start, start + CORE_BLOCK_ROWS)
        idx, dist = nb.indices[rows], nb.distances[rows]
        running = np.where(idx >= 0, counts32[np.maximum(idx, 0)], 0)
        np.cumsum(running, axis=1, out=running)
        running += counts32[rows, None]
        reached = running >= min_samples
        block = dist[np.arange(idx.shape[0]), np.argmax(reached, axis=1)]
        short = ~reached[:, -1]
        block[short] = dist[short, -1]
        own = counts[rows] >= min_samples  # enough copies of itself
        block[own] = 0.0
        short_total += int((short & ~own).sum())
        core[rows] = block
    return core, short_total


def nearest_neighbours(
    x: np.ndarray, k: int, *, exact_max_rows: int | None = None
) -> tuple[Neighbours, np.ndarray]:
    """k nearest neighbours of every row of ``x`` ((m, d) float32, unit rows, all distinct).

    Exact up to ``exact_max_rows`` rows (default EXACT_MAX_ROWS), within k-means cells above
    (``knn_cells``). Returns the neighbours and the rows as searched ((m, d) float32,
    C-contiguous: the component joins search them again).
    """
    if exact_max_rows is None:
        exact_max_rows = EXACT_MAX_ROWS
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    k = min(k, m - 1)
    if m <= exact_max_rows:
        idx, dist = exact_neighbours(x, k)
        method = "exact"
    else:
        found, sims = knn_cells.cell_neighbours(x, k)
        idx, dist = drop_self(found, sims, np.arange(m), k)
        complete_short_lists(x, idx, dist)
        method = knn_cells.method_name(k)
    refine_near_distances(x, idx, dist)
    return Neighbours(idx, dist, method), x


def complete_short_lists(x: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> int:
    """Search exactly, in place, the rows whose approximate list came back short (-1 ids).

    The cells' search returns fewer than k ids when the probed cells hold fewer than k + 1
    rows; a short list would give a wrong (infinite) core distance. Returns how many.
    """
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:
        idx[short], dist[short] = exact_neighbours(x, idx.shape[1], rows=short)
    return int(short.size)


def exact_neighbours(x: np.ndarray, k: int, *, rows: np.ndarray | None = None,
                     block: int = EXACT_BLOCK_ROWS):
    """Exact k nearest other rows of unit rows ``x`` ((m, d) float32), by blocked GEMM.

    ``rows``: the query rows (default all). Returns (indices (q, k) int64, distances (q, k)
    float64), ascending distance. Each block holds at most ``EXACT_TILE_ENTRIES`` cosines
    (~16 bytes each with the partial sort), however large m is.
    """
    rows = np.arange(x.shape[0]) if rows is None else rows
    block = max(1, min(block, EXACT_TILE_ENTRIES // max(1, x.shape[0])))
    idx = np.empty((rows.size, k), np.int64)
    dist = np.empty((rows.size, k), np.float64)
    for s in range(0, rows.size, block):
        q = rows[s:s + block]
        sims = x[q] @ x.T  # (b, m) cosines
        sims[np.arange(q.size), q] = -np.inf  # not its own neighbour
        idx[s:s + q.size], top = knn_cells.most_similar(sims, k)
        dist[s:s + q.size] = cosine_to_distance(top)
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
