"""Approximate k nearest neighbours by exact search inside cells of a k-means partition.

For m distinct unit rows (m above ``knn_search.EXACT_MAX_ROWS``):

1. spherical k-means (inner product) of a sample of the rows into about m / CELL_ROWS
   centroids, ``KMEANS_ROUNDS`` Lloyd rounds; every row goes to its nearest centroid, and a
   cell above ``SPLIT_FACTOR`` x CELL_ROWS rows is split the same way, once;
2. each cell's rows are searched, exactly (one float32 GEMM and a partial sort per block of
   them), against the rows of the ``probes`` cells whose centroids are nearest its own
   (itself included, so every row finds itself).

A true neighbour in a cell not probed is missed, and the list holds the next nearest
instead, so a core distance can only come out too large. On this project's synthetic
768-d rows (benchmarks/knn_alternatives.py, 200k rows) recall@32 is 0.999 where faiss
HNSW (M 16, efC 64) reached 0.57 in the same time; at 1.1M rows the work is linear in
m (GEMMs of m x probes x CELL_ROWS x d) where HNSW's build was not.

Work is split over threads (NumPy's GEMM and partial sort release the GIL); each block
writes its own rows of the output, so the result does not depend on the thread count.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

CELL_ROWS = 512  # rows per cell, on average
PROBE_CELLS = 16  # cells searched per cell, at least (more when k needs them)
KMEANS_ROUNDS = 8
KMEANS_SAMPLE_PER_CELL = 40  # sample rows per centroid for k-means
SPLIT_FACTOR = 4  # a cell above SPLIT_FACTOR x CELL_ROWS rows is split once
TILE_ENTRIES = 1 << 23  # query rows x candidates per GEMM (8M: 32 MB of float32)
ASSIGN_BLOCK = 16384
SEED = 0


def search_threads() -> int:
    """Threads for the search: ``OMP_NUM_THREADS`` when set (a scale-out worker's share of
    the cores), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


def working_bytes(dim: int, k: int) -> int:
    """Peak bytes of the search's per-thread work, all threads: a tile of cosines with its
    partial-sort ids, and the candidate rows (at most ``probe_count(k)`` cells of up to
    SPLIT_FACTOR x CELL_ROWS rows each; a split cell can exceed it, rarely)."""
    candidates = probe_count(k) * SPLIT_FACTOR * CELL_ROWS
    return search_threads() * (TILE_ENTRIES * (4 + 8 + 4) + candidates * dim * 4)


# Rough seconds, measured on this project's 2-core machine (benchmarks/estimates.py,
# synthetic 768-d): the partition's GEMMs at ~2e11 flop/s; the search per query-candidate
# pair, 65% of it growing with the width (GEMM, gathers), 35% not (the partial sort):
# 1.2e-8 s measured at 29k-78k distinct rows, 1.8e-8 s at 211k-770k (k-NN 131 s at 770k).
PARTITION_FLOPS = 2e11
PAIR_S = 1.6e-8  # per query row per candidate row, 768-d


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
    """Cells searched per cell: PROBE_CELLS, or enough for ~8 (k + 1) candidates."""
    return max(PROBE_CELLS, -(-8 * (k + 1) // CELL_ROWS))


def spherical_kmeans(x: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """(n_cells, d) float32 unit centroids of a sample of the unit rows ``x`` ((m, d) float32)."""
    m = x.shape[0]
    sample = x[np.sort(rng.choice(m, size=min(m, KMEANS_SAMPLE_PER_CELL * n_cells), replace=False))]
    centroids = sample[np.sort(rng.choice(sample.shape[0], size=n_cells, replace=False))].copy()
    for _ in range(KMEANS_ROUNDS):
        nearest = nearest_centroid(sample, centroids)
        choice = sp.csr_matrix((np.ones(nearest.size, np.float32), (nearest, np.arange(nearest.size))),
                               shape=(n_cells, nearest.size))
        sums = np.asarray(choice @ sample, dtype=np.float32)  # each centroid's rows summed
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0  # a centroid nobody chose: restart it on a random sample row
        sums[empty] = sample[rng.choice(sample.shape[0], size=int(empty.sum()))]
        norms[empty] = 1.0
        centroids = (sums / norms[:, None]).astype(np.float32)
    return centroids


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(m,) int64 index of each row's most similar centroid (largest inner product)."""
    out = np.empty(x.shape[0], np.int64)
    for s in range(0, x.shape[0], ASSIGN_BLOCK):
        out[s:s + ASSIGN_BLOCK] = np.argmax(x[s:s + ASSIGN_BLOCK] @ centroids.T, axis=1)
    return out


def partition(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the unit rows ``x``: ((m,) int64 cell of each row, (c, d) float32 centroids).

    A cell of more than SPLIT_FACTOR x CELL_ROWS rows (k-means is uneven on uneven data)
    is split by k-means of its own rows, once."""
    m = x.shape[0]
    centroids = spherical_kmeans(x, max(1, round(m / CELL_ROWS)), rng)
    cell = nearest_centroid(x, centroids)
    sizes = np.bincount(cell, minlength=centroids.shape[0])
    parts = [centroids]
    for big in np.flatnonzero(sizes > SPLIT_FACTOR * CELL_ROWS):
        rows = np.flatnonzero(cell == big)
        sub = spherical_kmeans(x[rows], -(-rows.size // CELL_ROWS), rng)
        local = nearest_centroid(x[rows], sub)
        first = sum(p.shape[0] for p in parts)
        cell[rows] = np.where(local == 0, big, first + local - 1)
        parts[0][big] = sub[0]
        parts.append(sub[1:])
    return cell, np.concatenate(parts)


def cell_neighbours(x: np.ndarray, k: int, *, threads: int | None = None):
    """The k+1 most similar rows of every unit row of ``x`` ((m, d) float32), itself
    included, searched in its cell and the nearest cells to it.

    Returns (ids (m, k+1) int64, -1 where fewer were searched; cosines (m, k+1) float32),
    most similar first.
    """
    m = x.shape[0]
    rng = np.random.default_rng(SEED)
    cell, centroids = partition(x, rng)
    n_cells = centroids.shape[0]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(n_cells)]
    closeness = centroids @ centroids.T
    np.fill_diagonal(closeness, np.inf)  # a cell probes itself first
    probes = np.argsort(-closeness, axis=1, kind="stable")[:, :min(probe_count(k), n_cells)]
    width = k + 1
    ids = np.full((m, width), -1, np.int64)
    sims = np.full((m, width), -np.inf, np.float32)

    def search_cell(c: int) -> None:
        candidates = np.concatenate([members[p] for p in probes[c]])
        xc = x[candidates]
        kk = min(width, candidates.size)
        block = max(1, TILE_ENTRIES // candidates.size)
        for s in range(0, members[c].size, block):
            queries = members[c][s:s + block]
            top, top_cos = most_similar(x[queries] @ xc.T, kk)
            ids[queries, :kk] = candidates[top]
            sims[queries, :kk] = top_cos

    workers = threads or search_threads()
    by_size = sorted(range(n_cells), key=lambda c: -members[c].size)  # big cells first
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(search_cell, by_size))  # re-raises a cell's error here
    return ids, sims


def most_similar(cos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the k largest entries of each row of ``cos`` ((r, c) float32, k <= c),
    largest first: ((r, k) int64 columns, (r, k) their values). A partial sort, without a
    negated copy of ``cos``; the exact search (``knn_search``) uses it too."""
    top = np.argpartition(cos, cos.shape[1] - k, axis=1)[:, -k:]
    top_cos = np.take_along_axis(cos, top, axis=1)
    best = np.argsort(-top_cos, axis=1, kind="stable")
    return np.take_along_axis(top, best, axis=1), np.take_along_axis(top_cos, best, axis=1)
