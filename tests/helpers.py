"""Test helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import sqlite3

import numpy as np


def blobs(n: int, dim: int, *, seed: int = 0, centres: int = 4, spread: float = 0.15) -> np.ndarray:
    """(n, dim) float32 unit vectors in a few Gaussian blobs (embedding-shaped)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def raw(path, sql: str, *args):
    """Rows of a raw sqlite3 query (independent of the library's SQLAlchemy layer)."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def nested_blobs(n: int, dim: int, *, seed: int = 0, sub_spread: float = 0.15,
                 point_spread: float = 0.01) -> np.ndarray:
    """(n, dim) float32 unit vectors: 3 blobs, each of 4 tight micro-clusters.

    Micro-clusters sit ~0.2 apart inside a blob (< epsilon 0.4), so epsilon selection
    must walk up the condensed tree: the code path of scikit-learn issue #33219.
    """
    rng = np.random.default_rng(seed)

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    centres = unit(rng.standard_normal((3, dim)))
    subs = unit(centres[:, None, :] + sub_spread * unit(rng.standard_normal((3, 4, dim))))
    pick = rng.integers(0, 12, n)
    x = unit(subs.reshape(12, dim)[pick] + point_spread * unit(rng.standard_normal((n, dim))))
    return x.astype(np.float32)


def make_copyable_demo(path, spec):
    """A demo database at ``path`` with its WAL folded in, so a file copy is complete."""
    from gpu_cluster.demo import make_demo_db

    make_demo_db(path, spec)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path
