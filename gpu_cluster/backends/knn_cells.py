"""Approximate k nearest neighbours by exact search inside cells of a k-means partition.

For m distinct unit rows (m above ``knn_search.EXACT_MAX_ROWS``):

1. spherical k-means (inner product) of a sample of the rows into about m / CELL_ROWS
   centroids, ``KMEANS_ROUNDS`` Lloyd rounds; a cell holding more than ``SPLIT_FACTOR``
   times its share of the sample is split the same way, once;
2. every row lives in the cell of its nearest centroid, and is searched, exactly, against
   the rows of the ``probes`` cells whose centroids are nearest *it* (its own first, so
   every row finds itself): one float32 GEMM per cell, for all the rows probing that
   cell; a cosine above a row's worst so far joins its buffer (``Lists``), which a
   partial sort compacts to the k+1 best when it fills.

A probed cell other than the row's own is searched only if it could still improve the
row's list: every row of a cell lies within an angle ``radius`` of its centroid (the
largest over its rows), so a row at angle a from that centroid has no cosine above
cos(max(0, a - radius)) with any of them; where that is at most the worst cosine on the
row's list (its own cell searched first), the visit changes nothing and is skipped. This
is exact (the lists are those of searching every probe, tested): on 200k synthetic rows
it skipped 54% of the visits and took the search from 13.9 s to 10.9 s.

A true neighbour in a cell not probed is missed, and the list holds the next nearest
instead, so a core distance can only come out too large. Probing the cells nearest each
row, not those nearest its cell's centroid (as this did first), matters at the cells'
borders: on 60k synthetic rows (43,279 distinct, k 43) recall went from 0.987 to 0.998, the
rows found with less than half their neighbours from 452 to 3, and the labels' ARI against
the exact mutual-reachability MST (dense Prim, scikit-learn's result) from 0.88 to 0.970,
where an exact k-NN search gives 0.971 (12 probes: 0.961, 8: 0.950). Searching each row's
own cell first, and merging another cell's best only into the lists it improves, kept the
time: 15.4 s at 200k rows (20.3 s without that; the centroid-probed search 14.7 s),
recall@43 0.9992 against 0.9978. On this project's synthetic
768-d rows (benchmarks/knn_alternatives.py, 200k rows) recall@32 was 0.999 where faiss
HNSW (M 16, efC 64) reached 0.57 in the same time; at 1.1M rows the work is linear in
m (GEMMs of m x probes x CELL_ROWS x d) where HNSW's build was not.

Work is split over threads (NumPy's GEMM and partial sort release the GIL) by fixed row
ranges: each thread writes only its own rows, every row meets its cells in the same order
and every block of queries is the same, so the result does not depend on the thread count.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

CELL_ROWS = 512  # rows per cell, on average
PROBE_CELLS = 16  # cells searched per row, at least (more when k needs them)
KMEANS_ROUNDS = 8
KMEANS_SAMPLE_PER_CELL = 40  # sample rows per centroid for k-means
SPLIT_FACTOR = 4  # a cell above SPLIT_FACTOR x CELL_ROWS rows is split once
TILE_ENTRIES = 1 << 23  # query rows x (candidates + 2 (k + 1)) per block (8M: 32 MB of float32 cosines)
QUERY_ROWS = 8192  # query rows gathered per block, at most (25 MB at 768-d)
ROW_CHUNKS = 4  # fixed row ranges the threads share out (at most 4 threads; 16 chunks' smaller GEMMs took 20.1 s against 15.4 s at 200k)
ASSIGN_BLOCK = 16384
COLUMN_GROUPS = 64  # groups of centroids whose maxima bound a row's p-th nearest (top_columns)
COSINE_SLACK = 1e-4  # float32 GEMM cosines of 768-d unit rows: error well below this
SEED = 0


def search_threads() -> int:
    """Threads for the search: ``OMP_NUM_THREADS`` when set (a scale-out worker's share of
    the cores), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def working_bytes(dim: int, k: int) -> int:
    """Peak bytes of the search's per-thread work, all threads: a block of cosines with its
    partial sort's ids and values and the merge of each row's list with them (~40 bytes
    per TILE_ENTRIES entry), the gathered query rows and one cell's rows (up to
    SPLIT_FACTOR x CELL_ROWS; a split cell can exceed it, rarely). ``k`` does not change
    it: a block holds fewer rows when k is larger."""
    rows = QUERY_ROWS + SPLIT_FACTOR * CELL_ROWS
    return search_threads() * (TILE_ENTRIES * 40 + rows * dim * 4)


# Rough seconds, measured on this project's 2-core machine (benchmarks/estimates.py,
# synthetic 768-d): the partition's GEMMs at ~2e11 flop/s; the search per query-candidate
# pair, 65% of it growing with the width (GEMM, gathers), 35% not (the partial sort):
# 1.2e-8 s measured at 29k-78k distinct rows, 1.8e-8 s at 211k-770k (k-NN 131 s at 770k).
# Probing by row (not by the cell's centroid) kept it at 141k (15.4 s; model 19.0 s) and
# raised it at 770k (165.6 s; model 115.6 s): the whole fit's estimate stays within 2x
# (benchmarks/estimates.py: 0.89 at 40k to 1.35 at 1.1M), so the constants were kept.
# The angle skip (data-dependent: 54% of visits on synthetic rows, none on a diffuse blob)
# took 770k to 132.6 s; the constants stay those of a search that skips nothing, and the
# rest of the fit's model was refitted around them (knn_graph: 0.69-1.19 at 40k-1.1M).
# Refitted 2026-12-03 on a slower machine (~170 GFLOP/s float32 GEMM against ~270), with
# the nearest cells by threshold: 1.6e-8 -> 2.0e-8, the whole fit's measured / estimate
# from 1.19, 0.89, 1.28, 1.51 to ~1.10, 0.81, 1.15, 1.33 at 40k, 110k, 300k, 1.1M rows.
PARTITION_FLOPS = 2e11
PAIR_S = 2.0e-8  # per query row per candidate row, 768-d


def search_seconds(m: int, k: int, dim: int) -> float:
    """Rough seconds of ``cell_neighbours`` on m distinct rows of width dim."""
    cells = max(1, m / CELL_ROWS)
    sample = min(m, KMEANS_SAMPLE_PER_CELL * cells)
    partition_flops = 2.0 * dim * cells * (KMEANS_ROUNDS * sample + m)
    pairs = m * min(m, probe_count(k) * CELL_ROWS)
    return partition_flops / PARTITION_FLOPS + pairs * PAIR_S * (0.65 * dim / 768 + 0.35)


def method_name(k: int) -> str:
    return f"cells(rows={CELL_ROWS},probes={probe_count(k)})"


def probe_count(k: int) -> int:
    """Cells searched per row: PROBE_CELLS, or enough for ~8 (k + 1) candidates."""
    return max(PROBE_CELLS, -(-8 * (k + 1) // CELL_ROWS))


def spherical_kmeans(sample: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """(n_cells, d) float32 unit centroids of the unit rows ``sample`` ((s, d) float32,
    s >= n_cells), ``KMEANS_ROUNDS`` Lloyd rounds from n_cells of its rows."""
    centroids = sample[np.sort(rng.choice(sample.shape[0], size=n_cells, replace=False))].copy()
    for _ in range(KMEANS_ROUNDS):
        nearest = nearest_cells(sample, centroids, 1)[:, 0]
        choice = sp.csr_matrix((np.ones(nearest.size, np.float32), (nearest, np.arange(nearest.size))),
                               shape=(n_cells, nearest.size))
        sums = np.asarray(choice @ sample, dtype=np.float32)  # each centroid's rows summed
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0  # a centroid nobody chose: restart it on a random sample row
        sums[empty] = sample[rng.choice(sample.shape[0], size=int(empty.sum()))]
        norms[empty] = 1.0
        centroids = (sums / norms[:, None]).astype(np.float32)
    return centroids


def nearest_cells(x: np.ndarray, centroids: np.ndarray, p: int) -> np.ndarray:
    """(m, p) int64: each row's p most similar centroids (largest inner product), most
    similar first. One GEMM of the rows against the centroids, in blocks."""
    return nearest_cells_with_cosines(x, centroids, p)[0]


def nearest_cells_with_cosines(x: np.ndarray, centroids: np.ndarray, p: int):
    """``nearest_cells`` and the (m, p) float32 cosines of each row with those centroids."""
    out = np.empty((x.shape[0], p), np.int64)
    cos = np.empty((x.shape[0], p), np.float32)
    for s in range(0, x.shape[0], ASSIGN_BLOCK):
        out[s:s + ASSIGN_BLOCK], cos[s:s + ASSIGN_BLOCK] = top_columns(x[s:s + ASSIGN_BLOCK] @ centroids.T, p)
    return out, cos


def top_columns(cos: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the p largest entries of each row of ``cos`` ((r, c) float32, p <= c),
    largest first, ties by ascending column: ((r, p) int64 columns, (r, p) their values).

    p = 1 is an argmax. Otherwise only the entries at or above a threshold are sorted: the
    p-th largest of a row's maxima over ``COLUMN_GROUPS`` groups of adjacent columns is at
    most the row's p-th largest entry (those maxima are p distinct entries), and few more
    than p entries reach it. 16 of 1,505 centroids for 16,384 rows: 0.19 s against 0.80 s
    for a partial sort of every entry; an argmax for 1: 0.004 s against 0.38 s.
    """
    r, c = cos.shape
    if p == 1:
        top = np.argmax(cos, axis=1)[:, None]
        return top, np.take_along_axis(cos, top, axis=1)
    groups = max(COLUMN_GROUPS, 4 * p)
    width = c // groups
    if width < 2:  # few columns: sort them all
        top = np.argsort(-cos, axis=1, kind="stable")[:, :p]
        return top, np.take_along_axis(cos, top, axis=1)
    maxima = cos[:, :groups * width].reshape(r, groups, width).max(axis=2)
    if groups * width < c:  # the leftover columns make one more group
        maxima = np.concatenate([maxima, cos[:, groups * width:].max(axis=1, keepdims=True)], axis=1)
    threshold = np.partition(maxima, maxima.shape[1] - p, axis=1)[:, maxima.shape[1] - p]
    row, col = np.nonzero(cos >= threshold[:, None])  # row-major: each row's columns ascending
    count = np.bincount(row, minlength=r)
    slot = np.arange(row.size) - (np.cumsum(count) - count)[row]
    values = np.full((r, int(count.max())), -np.inf, cos.dtype)
    columns = np.zeros(values.shape, np.int64)
    values[row, slot] = cos[row, col]
    columns[row, slot] = col
    order = np.argsort(-values, axis=1, kind="stable")[:, :p]  # ties stay in column order
    return np.take_along_axis(columns, order, axis=1), np.take_along_axis(values, order, axis=1)


def partition(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(c, d) float32 unit centroids of about m / CELL_ROWS cells of the unit rows ``x``.

    k-means of a sample (KMEANS_SAMPLE_PER_CELL rows per centroid). A cell holding more
    than SPLIT_FACTOR x its share of the sample (k-means is uneven on uneven data) is
    split, once, by k-means of its own sample rows."""
    m = x.shape[0]
    n_cells = max(1, round(m / CELL_ROWS))
    size = min(m, KMEANS_SAMPLE_PER_CELL * n_cells)
    sample = x[np.sort(rng.choice(m, size=size, replace=False))]
    centroids = spherical_kmeans(sample, n_cells, rng)
    owner = nearest_cells(sample, centroids, 1)[:, 0]
    counts = np.bincount(owner, minlength=n_cells)
    rows_per_sample = m / size
    parts = [centroids]
    for big in np.flatnonzero(counts * rows_per_sample > SPLIT_FACTOR * CELL_ROWS):
        own = sample[owner == big]
        sub = spherical_kmeans(own, min(own.shape[0], -(-round(counts[big] * rows_per_sample)
                                                         // CELL_ROWS)), rng)
        parts[0][big] = sub[0]
        parts.append(sub[1:])
    return np.concatenate(parts)


def rows_by_cell(cells: np.ndarray, n_cells: int) -> list[np.ndarray]:
    """For each cell, the rows (ascending int64) whose entry in ``cells`` ((m, p) int64)
    names it."""
    if cells.shape[1] == 0:
        return [np.empty(0, np.int64) for _ in range(n_cells)]
    flat = cells.ravel()
    order = np.argsort(flat, kind="stable")  # row-major: rows stay ascending within a cell
    bounds = np.searchsorted(flat[order], np.arange(n_cells + 1))
    rows = order // cells.shape[1]
    return [rows[bounds[c]:bounds[c + 1]] for c in range(n_cells)]


def cell_neighbours(x: np.ndarray, k: int, *, threads: int | None = None):
    """The k+1 most similar rows of every unit row of ``x`` ((m, d) float32), itself
    included, searched in the cells whose centroids are nearest that row.

    Returns (ids (m, k+1) int64, -1 where fewer were searched; cosines (m, k+1) float32),
    most similar first.
    """
    m = x.shape[0]
    centroids = partition(x, np.random.default_rng(SEED))
    n_cells = centroids.shape[0]
    wanted, wanted_cos = nearest_cells_with_cosines(x, centroids, min(probe_count(k), n_cells))
    members = rows_by_cell(wanted[:, :1], n_cells)  # a row lives in its nearest cell
    visitors = rows_by_cell(wanted[:, 1:], n_cells)  # ... and probes its next nearest
    radius = cell_radii(wanted[:, 0], wanted_cos[:, 0], n_cells)
    angle = angle_at_least(wanted_cos[:, 1:])  # (m, p-1) float32: to the other cells' centroids
    del wanted_cos
    lists = Lists(m, k + 1)

    # Fixed row chunks: a block of queries never spans two, so the blocks (and the GEMMs'
    # rounding) are the same for any thread count; each thread owns whole chunks.
    chunks = np.linspace(0, m, ROW_CHUNKS + 1).round().astype(np.int64)

    def search_chunks(first: int, last: int) -> None:
        # Each row's own cell first: its list is then nearly final; another cell is
        # searched only for the rows whose angle to it allows a better cosine, and its
        # rows are merged only into the lists they improve.
        for visiting, queriers in ((False, members), (True, visitors)):
            for c in range(n_cells):
                cuts = np.searchsorted(queriers[c], chunks[first:last + 1])
                for lo, hi in zip(cuts[:-1], cuts[1:]):
                    if hi > lo and members[c].size:
                        q = queriers[c][lo:hi]
                        if visiting:  # only the rows this cell could still improve
                            to_c = angle[q][wanted[q, 1:] == c]  # one probe of c per row
                            q = q[could_improve(to_c, radius[c], lists.worst[q])]
                        if q.size:
                            search_cell(x, members[c], q, lists)

    workers = threads or search_threads()
    groups = np.linspace(0, ROW_CHUNKS, min(workers, ROW_CHUNKS) + 1).round().astype(np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(search_chunks, groups[:-1], groups[1:]))  # re-raises an error here
    return lists.most_similar_first()


class Lists:
    """Each row's k+1 most similar rows found so far, kept lazily: a row's buffer holds
    up to 2(k+1) candidates, new ones are appended while they beat ``worst`` (the list's
    (k+1)-th best cosine when it was last compacted, -inf before it first held k+1), and
    the buffer is compacted to its k+1 best only when a visit would overflow it. So a
    visit that brings a few better rows costs their copy, not a partial sort of 2(k+1)
    entries (100k rows, k 300, one thread: merges and partial sorts 14.8 s -> 6.1 s; 200k
    rows, two threads: k 60 16.9 s -> 15.2 s, k 32 15.7 s -> 14.4 s, means of two runs).
    ``worst`` never exceeds the true (k+1)-th best: what it lets in is a superset of
    what can enter, and the last compaction keeps exactly the k+1 best.

    ids: (m, 2(k+1)) int64, -1 in free slots; sims: (m, 2(k+1)) float32, -inf in free
    slots; fill: (m,) int64 slots used; worst: (m,) float32.
    """

    def __init__(self, m: int, width: int):
        self.width, self.capacity = width, 2 * width
        self.ids = np.full((m, self.capacity), -1, np.int64)
        self.sims = np.full((m, self.capacity), -np.inf, np.float32)
        self.fill = np.zeros(m, np.int64)
        self.worst = np.full(m, -np.inf, np.float32)

    def offer(self, q: np.ndarray, candidates: np.ndarray, cos: np.ndarray) -> None:
        """Offer rows ``q`` ((b,) int64, distinct) the ``candidates`` ((c,) int64 row ids) at
        cosines ``cos`` ((b, c) float32)."""
        entering = cos > self.worst[q][:, None]
        count = np.count_nonzero(entering, axis=1)
        if not count.all():  # lists no candidate beats are left alone
            some = count > 0
            q, entering, count, cos = q[some], entering[some], count[some], cos[some]
        over = self.fill[q] + count > self.capacity
        if over.any():
            self.compact(q[over], candidates, cos[over])
            q, entering, count, cos = q[~over], entering[~over], count[~over], cos[~over]
        if q.size:
            row, col = np.nonzero(entering)  # row-major: each row's entries in column order
            first = np.cumsum(count) - count  # each row's first entry in row, col
            slot = self.fill[q][row] + np.arange(row.size) - first[row]
            self.ids[q[row], slot] = candidates[col]
            self.sims[q[row], slot] = cos[row, col]
            self.fill[q] += count

    def compact(self, q: np.ndarray, candidates: np.ndarray | None = None,
                cos: np.ndarray | None = None) -> None:
        """Rows ``q``: keep the ``width`` best of their buffer (and of ``candidates`` at
        ``cos``, if given) in its first slots; free the rest; update ``worst``."""
        sims = self.sims[q] if cos is None else np.concatenate([self.sims[q], cos], axis=1)
        top, top_sims = largest(sims, self.width)
        in_buffer = top < self.capacity
        ids = np.take_along_axis(self.ids[q], np.minimum(top, self.capacity - 1), axis=1)
        if cos is not None:
            ids = np.where(in_buffer, ids, candidates[np.maximum(top - self.capacity, 0)])
        self.ids[q, :self.width] = ids
        self.sims[q, :self.width] = top_sims
        self.ids[q, self.width:] = -1
        self.sims[q, self.width:] = -np.inf
        self.fill[q] = self.width
        self.worst[q] = top_sims.min(axis=1)

    def most_similar_first(self) -> tuple[np.ndarray, np.ndarray]:
        """((m, width) int64 ids, (m, width) float32 cosines), most similar first: each
        buffer's ``width`` best, a block of rows at a time."""
        m = self.fill.size
        ids = np.empty((m, self.width), np.int64)
        sims = np.empty((m, self.width), np.float32)
        for s in range(0, m, ASSIGN_BLOCK):
            blk = slice(s, s + ASSIGN_BLOCK)
            top, top_sims = largest(self.sims[blk], self.width)
            ids[blk], sims[blk] = most_similar_first(
                np.take_along_axis(self.ids[blk], top, axis=1), top_sims)
        return ids, sims


def angle_at_least(cos: np.ndarray) -> np.ndarray:
    """Angles (radians, float32) no larger than those whose float32 cosines are ``cos``
    (up to float32 rounding, which ``could_improve``'s slack covers)."""
    return np.arccos(np.clip(cos.astype(np.float64) + COSINE_SLACK, -1.0, 1.0)).astype(np.float32)


def cell_radii(cell: np.ndarray, cos: np.ndarray, n_cells: int) -> np.ndarray:
    """(n_cells,) float64: the largest angle (radians, rounded up) between a cell's
    centroid and a row living in it; ``cell``, ``cos``: each row's cell and cosine with
    its centroid. About 0 (the slack's angle) for an empty cell."""
    smallest = np.full(n_cells, np.inf)
    np.minimum.at(smallest, cell, cos.astype(np.float64))
    smallest[np.isinf(smallest)] = 1.0
    return np.arccos(np.clip(smallest - COSINE_SLACK, -1.0, 1.0))


def could_improve(angle: np.ndarray, radius: float, worst: np.ndarray) -> np.ndarray:
    """(r,) bool: may a row at ``angle`` (radians, at most) from a cell's centroid have a
    cosine above ``worst`` ((r,) float32, its list's worst) with a row of the cell, every
    row of which lies within ``radius`` of the centroid? On the sphere the angle between
    two rows is at least the difference of their angles to the centroid, so no cosine
    there exceeds cos(max(0, angle - radius))."""
    best_possible = np.cos(np.maximum(angle - radius, 0.0))
    return best_possible + COSINE_SLACK > worst


def search_cell(x: np.ndarray, rows: np.ndarray, queries: np.ndarray, lists: "Lists") -> None:
    """Offer the rows ``queries`` their cosines with ``rows`` (one cell's), in blocks of at
    most TILE_ENTRIES cosines; only those above a list's worst enter it."""
    xc = x[rows]
    block = max(1, min(QUERY_ROWS, TILE_ENTRIES // (rows.size + 2 * lists.capacity)))
    for s in range(0, queries.size, block):
        q = queries[s:s + block]
        lists.offer(q, rows, x[q] @ xc.T)


def largest(cos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the k largest entries of each row of ``cos`` ((r, c), k <= c), in no
    particular order: ((r, k) int64 columns, (r, k) their values)."""
    top = np.argpartition(cos, cos.shape[1] - k, axis=1)[:, -k:]
    return top, np.take_along_axis(cos, top, axis=1)


def most_similar(cos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the k largest entries of each row of ``cos`` ((r, c) float32, k <= c),
    largest first: ((r, k) int64 columns, (r, k) their values). A partial sort, without a
    negated copy of ``cos``; the exact search (``knn_search``) uses it too."""
    return most_similar_first(*largest(cos, k))


def most_similar_first(ids: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``ids`` and ``sims`` ((r, k)) reordered by decreasing ``sims``, ties in
    their current order."""
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(sims, order, axis=1)
