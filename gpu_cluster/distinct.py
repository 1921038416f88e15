"""Identical rows, found by hashing their bytes.

Embedding tables repeat texts, so identical vectors are common: the knn backend fits the
distinct rows (weighted by their counts) and the medoids count a cluster's repeated rows
once, with their summed weights. The hashes work on either device's arrays; the grouping is NumPy (host arrays).
"""

from __future__ import annotations

import numpy as np

from .device import array_module

HASH_BLOCK = 8192  # rows per block: bounded temporaries however large the input


def row_hashes(x, *, seed: int = 0x5EED):
    """(n,) uint64 hash of each row's bytes of ``x`` ((n, d) array, NumPy or CuPy; the
    result on the same device): a sum of 64-bit words times odd multipliers, wrapping,
    with a row's last bytes (when its width is not a multiple of 8) as one more word.

    Changing any one word of a row always changes its hash (an odd multiplier is
    invertible modulo 2^64); changes to several words collide by chance only.
    """
    xp = array_module(x)
    width = x.shape[1] * x.itemsize
    words, tail = divmod(width, 8)
    rng = np.random.default_rng(seed)
    mult = xp.asarray(rng.integers(1, 2**63, size=words + 1, dtype=np.uint64) * np.uint64(2)
                      + np.uint64(1))
    out = xp.empty(x.shape[0], xp.uint64)
    flat = xp.ascontiguousarray(x).view(xp.uint8).reshape(x.shape[0], width)
    for s in range(0, x.shape[0], HASH_BLOCK):
        blk = flat[s : s + HASH_BLOCK]
        head = xp.ascontiguousarray(blk[:, : words * 8]) if tail else blk  # a view needs it
        h = (head.view(xp.uint64) * mult[:words]).sum(axis=1, dtype=xp.uint64)
        if tail:
            last = xp.zeros((blk.shape[0], 8), xp.uint8)
            last[:, :tail] = blk[:, words * 8 :]
            h += last.view(xp.uint64)[:, 0] * mult[words]
        out[s : s + HASH_BLOCK] = h
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
