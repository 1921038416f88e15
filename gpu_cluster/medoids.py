"""Cluster medoids, exactly as scikit-learn's ``HDBSCAN(store_centers="medoid")``.

For cluster c with members i, j and membership probabilities w, the medoid is

    argmin_i  sum_j  w_j * ||x_i - x_j||

(the first such member in row order on ties). Distances are computed in
``(block, block)`` tiles, upcast to float64 as scikit-learn does, so memory stays bounded
by the block size however large a cluster is — never an m x m matrix. Written once for
NumPy and CuPy.
"""

from __future__ import annotations

import numpy as np

from .device import array_module, to_host

DEFAULT_BLOCK = 2048


def member_indices(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Row indices (int64, ascending) of each cluster 0..n_clusters-1."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]


def weighted_distance_sums(x, members, weights, *, block: int = DEFAULT_BLOCK):
    """``s_i = sum_j w_j ||x_i - x_j||`` over one cluster's members.

    Args:
        x: (n, d) float32 NumPy/CuPy array of all rows.
        members: (m,) int64 row indices of the cluster, on x's device.
        weights: (m,) float64 weights aligned with ``members``, on x's device.
    Returns:
        (m,) float64 sums, on x's device.
    """
    xp = array_module(x)
    m = members.shape[0]
    sums = xp.zeros(m, dtype=xp.float64)
    for i0 in range(0, m, block):
        rows = x[members[i0 : i0 + block]].astype(xp.float64)
        row_sq = xp.einsum("ij,ij->i", rows, rows)
        for j0 in range(0, m, block):
            cols = x[members[j0 : j0 + block]].astype(xp.float64)
            col_sq = xp.einsum("ij,ij->i", cols, cols)
            d2 = row_sq[:, None] + col_sq[None, :] - 2.0 * (rows @ cols.T)
            dist = xp.sqrt(xp.maximum(d2, 0.0))
            if i0 == j0:  # a point's distance to itself is exactly zero
                k = min(rows.shape[0], cols.shape[0])
                dist[xp.arange(k), xp.arange(k)] = 0.0
            sums[i0 : i0 + rows.shape[0]] += dist @ weights[j0 : j0 + cols.shape[0]]
    return sums


def medoid_indices(x, labels: np.ndarray, probabilities: np.ndarray, *, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Row index of each cluster's medoid.

    Args:
        x: (n, d) float32 NumPy/CuPy array (the clustered, normalised rows).
        labels: (n,) int64 host array, clusters 0..k-1 and -1 for noise.
        probabilities: (n,) float64 host array of membership strengths.
    Returns:
        (k,) int64 host array: ``result[c]`` is the row of cluster c's medoid.
    """
    xp = array_module(x)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    result = np.empty(n_clusters, dtype=np.int64)
    for c, members in enumerate(member_indices(labels, n_clusters)):
        sums = weighted_distance_sums(
            x, xp.asarray(members), xp.asarray(probabilities[members], dtype=xp.float64),
            block=block,
        )
        result[c] = members[int(to_host(xp.argmin(sums)))]
    return result
