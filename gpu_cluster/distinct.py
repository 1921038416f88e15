"""Identical rows, found by hashing their bytes.

Embedding tables repeat texts, so identical vectors are common: the knn backend fits the
distinct rows (weighted by their counts) and the medoids count a cluster's repeated rows
once, with their summed weights. Pure NumPy (host arrays).
"""

from __future__ import annotations

import numpy as np

HASH_BLOCK = 8192  # rows per block: bounded temporaries however large the input


def row_hashes(x: np.ndarray, *, seed: int = 0x5EED) -> np.ndarray:
    """(n,) uint64 hash of each row's bytes of ``x`` ((n, d) host array; multiply-add over
    64-bit words, wrapping)."""
    words = x.shape[1] * x.itemsize // 8
    rng = np.random.default_rng(seed)
    mult = rng.integers(1, 2**63, size=words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    out = np.empty(x.shape[0], np.uint64)
    flat = np.ascontiguousarray(x).view(np.uint8).reshape(x.shape[0], -1)
    for s in range(0, x.shape[0], HASH_BLOCK):
        blk = flat[s : s + HASH_BLOCK, : words * 8].view(np.uint64)
        with np.errstate(over="ignore"):
            out[s : s + HASH_BLOCK] = (blk * mult).sum(axis=1, dtype=np.uint64)
    return out


def rows_equal(x: np.ndarray, rows: np.ndarray, same: np.ndarray) -> bool:
    """Whether ``x[rows[i]]`` equals ``x[same[i]]`` for every i (blockwise; a hash check)."""
    for s in range(0, rows.shape[0], HASH_BLOCK):
        if not np.array_equal(x[rows[s : s + HASH_BLOCK]], x[same[s : s + HASH_BLOCK]]):
            return False
    return True


def groups_by_first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of equal ``keys`` ((n,) hashes, or rows viewed as one void each), numbered
    in the order of their first occurrence.

    Returns (first (u,) int64 ascending position of each group's first key, inverse (n,)
    int64 group of each key, counts (u,) int64 keys per group).
    """
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return (first[order].astype(np.int64), rank[inverse.ravel()].astype(np.int64),
            counts[order].astype(np.int64))
