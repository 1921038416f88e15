"""Minimax distances in a weighted forest: the heaviest edge on the path between two nodes.

In a minimum spanning forest, the heaviest edge on the path between i and j is the
height at which single linkage first joins them. Ordering the nodes as the leaves of the
single-linkage dendrogram (each merge puts one group's leaves right after the other's),
that height is the largest of the merge heights between consecutive leaves from i's
position to j's: one range-maximum query, answered from a sparse table of
``log2(m)`` levels in two lookups. Building it is one union-find pass over the m-1
edges (a Python loop, ~0.5 s per million edges); queries are whole-array NumPy.
"""

from __future__ import annotations

import numpy as np


class ForestMinimax:
    """Range-maximum table over the leaf order of a forest's single-linkage dendrogram.

    a, b: (e,) int node ids of the forest's edges, w: (e,) float64 weights, m: nodes.
    The edges must form a forest (no cycle); a union-find pass skips any edge that would
    close one, so a forest with repeated edges is read as its minimum spanning forest.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, w: np.ndarray, m: int):
        self.position, gaps = leaf_order(np.asarray(a), np.asarray(b),
                                         np.asarray(w, np.float64), m)
        self.table = range_max_table(gaps)

    def between(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """(q,) float64: the heaviest edge on the forest path between i[q] and j[q];
        inf when they lie in different trees, 0 where i == j."""
        pi, pj = self.position[i], self.position[j]
        lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
        length = hi - lo  # gaps lo .. hi-1
        level = np.zeros(length.shape, np.int64)
        apart = length > 0
        level[apart] = np.floor(np.log2(length[apart])).astype(np.int64)
        columns = self.table.shape[1]
        flat = self.table.ravel()
        first = flat[level * columns + lo]
        last = flat[level * columns + np.maximum(hi - (1 << level), 0)]
        out = np.maximum(first, last)
        out[~apart] = 0.0
        return out


def leaf_order(a: np.ndarray, b: np.ndarray, w: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, gaps): (m,) int64 place of each node in the dendrogram's leaf order and
    (m-1,) float64 merge height between the leaves at places p and p+1 (inf between trees).

    Edges are merged in order of weight (union by size, path halving); each merge links
    the last leaf of one group to the first of the other, at the edge's weight.
    """
    order = np.argsort(w, kind="stable")
    parent, count = list(range(m)), [1] * m
    head, tail, following = list(range(m)), list(range(m)), [-1] * m
    height_after = [np.inf] * m
    for x, y, h in zip(a[order].tolist(), b[order].tolist(), w[order].tolist()):
        while parent[x] != x:
            parent[x] = x = parent[parent[x]]
        while parent[y] != y:
            parent[y] = y = parent[parent[y]]
        if x == y:
            continue
        following[tail[x]], height_after[tail[x]] = head[y], h
        tail[x] = tail[y]
        if count[x] < count[y]:  # the larger root keeps the merged list's ends
            head[y], tail[y] = head[x], tail[x]
            x, y = y, x
        parent[y] = x
        count[x] += count[y]
    sequence = []
    for root in range(m):
        if parent[root] == root:
            node = head[root]
            while node != -1:
                sequence.append(node)
                node = following[node]
    sequence = np.array(sequence, np.int64)
    position = np.empty(m, np.int64)
    position[sequence] = np.arange(m)
    return position, np.array(height_after, np.float64)[sequence[:-1]]


def range_max_table(values: np.ndarray) -> np.ndarray:
    """(levels, v) float64 sparse table: row L, column p holds max(values[p : p + 2**L])
    (inf past the end). Memory: v * log2(v) * 8 bytes (130 MB at 770k)."""
    levels = [values]
    span = 1
    while 2 * span <= values.size:
        levels.append(np.maximum(levels[-1][:-span], levels[-1][span:]))
        span *= 2
    table = np.full((len(levels), max(values.size, 1)), np.inf)
    for row, level in zip(table, levels):
        row[:level.size] = level
    return table
