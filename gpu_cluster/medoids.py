"""Cluster medoids, as scikit-learn's ``HDBSCAN(store_centers="medoid")`` defines them.

For cluster c with members i, j and membership probabilities w, the medoid is

    argmin_i  sum_j  w_j * ||x_i - x_j||

(the first such member in row order on ties). A row repeated in a cluster (a repeated text)
is scored once, its copies' weights summed: the same objective over fewer rows (CPU; a
device array keeps every row). Distances are computed in
``(block, block)`` tiles, upcast to float64 as scikit-learn does, so memory stays bounded
by the block size however large a cluster is — never an m x m matrix. Written once for
NumPy and CuPy.

Exact up to ``EXACT_MAX_MEMBERS`` distinct members (cost m²·d), in two passes: every
member's objective is *ranked* in float32 (on rows centred on the cluster's mean, so a
tight cluster keeps its precision), then the ``CANDIDATES`` best are scored in float64 as
scikit-learn does and the best of them is the medoid. The float64 pass decides; the
float32 pass only has to rank the medoid among the best 64, which its error (relative
~1e-7 of the distances once centred) cannot upset short of 64 near-exact ties. One
float64 pass over all members takes 1.6x as long at 3,500-5,000 members, the same member
chosen (``benchmarks/medoid_error.py --sizes 2000,5000``); with the tiles computed in
place, 40 clusters of 1,100-5,000 768-d members went from 12.9 s to 6.2 s.

Above ``EXACT_MAX_MEMBERS`` (a cluster of 500k members would take hours) the ranking is
*estimated* against a weighted random sample of ``SAMPLE_SIZE`` members instead of all of
them, and the ``CANDIDATES`` best estimates are scored exactly (float64) against all
members. Its objective is never below the exact medoid's; how far above is measured in
``benchmarks/medoid_error.py`` and reported in the README.
"""

from __future__ import annotations

import numpy as np

from .device import array_module, to_host
from .distinct import groups_by_first_occurrence, row_hashes, rows_equal

DEFAULT_BLOCK = 2048
EXACT_MAX_MEMBERS = 5_000
SAMPLE_SIZE = 4096
CANDIDATES = 64


def member_indices(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Row indices (int64, ascending) of each cluster 0..n_clusters-1."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]


def weighted_distance_sums(x, rows, cols, weights, *, block: int = DEFAULT_BLOCK,
                           dtype=None):
    """``s_i = sum_j w_j ||x_i - x_j||`` for i in ``rows``, j in ``cols``.

    Args:
        x: (n, d) float32 NumPy/CuPy array of all rows.
        rows: (r,) int64 row indices, on x's device.
        cols: (c,) int64 row indices, on x's device.
        weights: (c,) float64 weights aligned with ``cols``, on x's device.
        dtype: the distances' precision: float64 (default, as scikit-learn), or float32
            where only a ranking is needed (about twice as fast).
    Returns:
        (r,) float64 sums, on x's device. A row's distance to itself is exactly 0.
    """
    xp = array_module(x)
    dtype = xp.float64 if dtype is None else dtype
    sums = xp.zeros(rows.shape[0], dtype=xp.float64)
    for i0 in range(0, rows.shape[0], block):
        ri = rows[i0 : i0 + block]
        a = x[ri].astype(dtype)
        a_sq = xp.einsum("ij,ij->i", a, a)
        for j0 in range(0, cols.shape[0], block):
            cj = cols[j0 : j0 + block]
            b = x[cj].astype(dtype)
            dist = a @ b.T  # in place from here: ||a||² + ||b||² - 2 a.b, clipped, sqrt
            dist *= -2.0
            dist += a_sq[:, None]
            dist += xp.einsum("ij,ij->i", b, b)[None, :]
            xp.maximum(dist, 0.0, out=dist)
            xp.sqrt(dist, out=dist)
            if may_share_rows(ri, cj):
                dist[ri[:, None] == cj[None, :]] = 0.0
            sums[i0 : i0 + ri.shape[0]] += dist @ weights[j0 : j0 + cj.shape[0]].astype(dtype)
    return sums


def may_share_rows(a, b) -> bool:
    """False when the index arrays ``a`` and ``b`` (int64, non-empty) certainly share no
    value: their ranges do not overlap (a cluster's sorted members, tile by tile)."""
    return int(a.min()) <= int(b.max()) and int(b.min()) <= int(a.max())


def exact_medoid(x, members, weights, *, block: int = DEFAULT_BLOCK) -> int:
    """Row of the weighted medoid of ``members`` ((m,) host int64 indices into x, weights
    (m,) float64): ranked in float32 on rows centred on their mean, then the CANDIDATES
    best scored in float64 (see the module docstring)."""
    xp = array_module(x)
    m, w = xp.asarray(members), xp.asarray(weights, dtype=xp.float64)
    rows = x[m]
    centred = rows - rows.mean(axis=0, dtype=xp.float64).astype(xp.float32)
    local = xp.arange(members.size)
    ranking = weighted_distance_sums(centred, local, local, w, block=block, dtype=xp.float32)
    return best_candidate(x, members, w, ranking, block=block)


def approximate_medoid(x, members, weights, *, seed: int = 0, block: int = DEFAULT_BLOCK) -> int:
    """Row of the approximate weighted medoid of a large cluster (see module docstring)."""
    xp = array_module(x)
    rng = np.random.default_rng(seed)
    pick = rng.choice(members.size, size=min(SAMPLE_SIZE, members.size), replace=False)
    estimate = weighted_distance_sums(x, xp.asarray(members), xp.asarray(members[pick]),
                                      xp.asarray(weights[pick], dtype=xp.float64), block=block,
                                      dtype=xp.float32)  # a ranking: float32 suffices
    return best_candidate(x, members, xp.asarray(weights, dtype=xp.float64), estimate, block=block)


def best_candidate(x, members, weights, ranking, *, block: int = DEFAULT_BLOCK) -> int:
    """Row of the member with the smallest float64 objective among the CANDIDATES with the
    smallest ``ranking`` ((m,) on x's device); members: (m,) host int64, weights: (m,)
    float64 on x's device. Ties go to the first in row order."""
    xp = array_module(x)
    k = min(CANDIDATES, members.size)
    best = np.sort(to_host(xp.argpartition(ranking, k - 1)[:k]))  # keep row order for ties
    exact = weighted_distance_sums(x, xp.asarray(members[best]), xp.asarray(members), weights,
                                   block=block)
    return int(members[best[int(to_host(xp.argmin(exact)))]])


def medoid_indices(
    x, labels: np.ndarray, probabilities: np.ndarray, *, block: int = DEFAULT_BLOCK,
    exact_max_members: int | None = None, on_cluster=None, hashes: np.ndarray | None = None,
) -> np.ndarray:
    """Row index of each cluster's medoid.

    Args:
        x: (n, d) float32 NumPy/CuPy array (the clustered, normalised rows).
        labels: (n,) int64 host array, clusters 0..k-1 and -1 for noise.
        probabilities: (n,) float64 host array of membership strengths.
        exact_max_members: clusters up to this size are exact (default EXACT_MAX_MEMBERS).
        on_cluster: called with no argument after each cluster (progress).
        hashes: (n,) uint64 ``row_hashes(x)`` when the caller has them (host x only).
    Returns:
        (k,) int64 host array: ``result[c]`` is the row of cluster c's medoid.
    """
    limit = EXACT_MAX_MEMBERS if exact_max_members is None else exact_max_members
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    result = np.empty(n_clusters, dtype=np.int64)
    if hashes is None and n_clusters and array_module(x) is np:
        hashes = row_hashes(x)
    for c, members in enumerate(member_indices(labels, n_clusters)):
        rows, weights = members, probabilities[members]
        if hashes is not None:
            rows, weights = distinct_members(x, members, weights, hashes[members])
        medoid = exact_medoid if rows.size <= limit else approximate_medoid
        result[c] = medoid(x, rows, weights, block=block)
        if on_cluster is not None:
            on_cluster()
    return result


def distinct_members(x: np.ndarray, members: np.ndarray, weights: np.ndarray,
                     hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct row among ``members`` once (its first, in row order), with the summed
    weights of its copies: the same objective for every candidate, over fewer rows.

    members: (m,) int64 ascending; weights: (m,) float64; hashes: (m,) uint64 of their rows.
    Returns (rows (u,) int64 ascending, weights (u,) float64); the inputs unchanged on a
    hash collision.
    """
    first, inverse, _ = groups_by_first_occurrence(hashes)  # first occurrences: ties as before
    if first.size == members.size:
        return members, weights
    if not rows_equal(x, members, members[first[inverse]]):
        return members, weights
    return members[first], np.bincount(inverse, weights=weights, minlength=first.size)
