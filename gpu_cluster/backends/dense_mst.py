"""Exact mutual-reachability MST of a few thousand distinct rows (Prim on a dense matrix).

While the distinct rows are few, the whole (m, m) distance matrix fits in memory and the
exact minimum spanning tree of the mutual-reachability graph costs about what an exact
k-NN search costs. No graph is approximated and there are no components to join, so the
tree (and the clustering) is scikit-learn's up to tie-breaking. Distances are computed in
float64 from the float32 rows, as scikit-learn does; the matrix is then kept in float32.
"""

from __future__ import annotations

import numpy as np

from .knn_search import Neighbours, core_distances

# Largest distinct-row count for the dense path: the float32 matrix is m² * 4 bytes
# (1.6 GB at 20,000) and Prim costs ~m² element operations.
DENSE_MAX_ROWS = 20_000
BLOCK_ROWS = 1024  # rows per float64 GEMM block (a single 20k x 20k float64 GEMM segfaulted OpenBLAS here)


def matrix_bytes(m: int) -> int:
    """Peak bytes of the dense path for m distinct rows of any width (matrix + one block)."""
    return 4 * m * m + 8 * BLOCK_ROWS * m * 2


def distance_matrix(x: np.ndarray) -> np.ndarray:
    """(m, m) float32 euclidean distances between the unit rows of ``x`` ((m, d) float32).

    Each block is computed in float64 (``2 - 2·cos`` loses most digits of small distances in
    float32); the diagonal is 0.
    """
    m = x.shape[0]
    x64 = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", x64, x64)
    out = np.empty((m, m), np.float32)
    for s in range(0, m, BLOCK_ROWS):
        blk = sq[s:s + BLOCK_ROWS, None] + sq[None, :] - 2.0 * (x64[s:s + BLOCK_ROWS] @ x64.T)
        np.maximum(blk, 0.0, out=blk)
        out[s:s + BLOCK_ROWS] = np.sqrt(blk)
    np.fill_diagonal(out, 0.0)
    return out


def nearest_lists(dist: np.ndarray, k: int) -> Neighbours:
    """The k nearest other rows of every row, from the dense matrix, ascending distance."""
    m = dist.shape[0]
    idx = np.empty((m, k), np.int64)
    near = np.empty((m, k), np.float64)
    for s in range(0, m, BLOCK_ROWS):
        blk = dist[s:s + BLOCK_ROWS].astype(np.float64)
        b = blk.shape[0]
        blk[np.arange(b), np.arange(s, s + b)] = np.inf  # not its own neighbour
        part = np.argpartition(blk, k - 1, axis=1)[:, :k]
        d = np.take_along_axis(blk, part, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        idx[s:s + b] = np.take_along_axis(part, order, axis=1)
        near[s:s + b] = np.take_along_axis(d, order, axis=1)
    return Neighbours(idx, near, "exact (dense)")


def reachability_in_place(dist: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Turn ``dist`` into mutual reachability ``max(core_i, core_j, d_ij)``, in place."""
    c32 = core.astype(np.float32)
    for s in range(0, dist.shape[0], BLOCK_ROWS):
        blk = dist[s:s + BLOCK_ROWS]
        np.maximum(blk, c32[s:s + BLOCK_ROWS, None], out=blk)
        np.maximum(blk, c32[None, :], out=blk)
    return dist


def prim_mst(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact MST of the complete graph with (m, m) symmetric ``weights`` (Prim, O(m²)).

    Returns (a, b, w): (m-1,) int64 endpoints and float64 weights, in the order added.
    """
    m = weights.shape[0]
    best = weights[0].astype(np.float64)
    parent = np.zeros(m, np.int64)
    best[0] = np.inf
    done = np.zeros(m, bool)
    done[0] = True
    a = np.empty(m - 1, np.int64)
    b = np.empty(m - 1, np.int64)
    w = np.empty(m - 1, np.float64)
    for step in range(m - 1):
        nxt = int(np.argmin(best))
        a[step], b[step], w[step] = parent[nxt], nxt, best[nxt]
        done[nxt] = True
        best[nxt] = np.inf
        row = weights[nxt]
        closer = (row < best) & ~done
        best[closer] = row[closer]
        parent[closer] = nxt
    return a, b, w


def exact_mst(x: np.ndarray, counts: np.ndarray, min_samples: int):
    """Exact mutual-reachability MST of distinct unit rows ``x`` ((m, d) float32).

    ``counts``: (m,) multiplicity of each row. Returns ((a, b, w) MST edges over the m
    rows, (m,) float64 core distances).
    """
    dist = distance_matrix(x)
    # Only the min_samples - 1 nearest other rows can matter: each holds at least one point.
    k = min(max(min_samples - 1, 1), x.shape[0] - 1)
    core, _ = core_distances(counts, nearest_lists(dist, k), min_samples)
    edges = prim_mst(reachability_in_place(dist, core))
    return edges, core
