"""Adversarial data shapes for the CPU backend: (n, d) float32 unit rows and a truth.

Each generator returns ``(x, truth)``: ``truth`` is an (n,) int64 group label where the
shape has a known group structure at the level the default parameters should find
(-1 for background points), or None where only the reference can say. All are seeded.

    far_apart        groups ~1.4 apart, each of tight sub-clusters ~0.3 apart
    many_components  many groups of tight sub-clusters: hundreds of k-NN components
    nested           tight clusters inside loose ones
    chain            points along a line (one long thin structure)
    identical        all rows identical but a few
    noise90          90% uniform background, 10% in a few clusters
    one_far_point    one group of distinct rows plus one far-off point
    tight_blobs      thousands of small tight blobs, all ~1.4 apart: thousands of components
"""

from __future__ import annotations

import numpy as np


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def around(rng, centres: np.ndarray, spread: float, n: int):
    """n unit rows, each ``spread`` (euclidean, approx.) from a random one of ``centres``."""
    pick = rng.integers(0, len(centres), n)
    noise = unit(rng.standard_normal((n, centres.shape[1])))
    return unit(centres[pick] + spread * noise), pick


def grouped(rng, groups: int, subs: int, n: int, dim: int, sub_gap: float = 0.2,
            spread: float = 0.03):
    """n rows in ``groups`` far-apart groups of ``subs`` tight sub-clusters each."""
    centres = unit(rng.standard_normal((groups, dim)))
    sub = unit(centres[:, None, :] + sub_gap * unit(rng.standard_normal((groups, subs, dim))))
    x, pick = around(rng, sub.reshape(groups * subs, dim), spread, n)
    return x.astype(np.float32), (pick // subs).astype(np.int64)


def far_apart(n: int = 22_000, dim: int = 768, seed: int = 0):
    return grouped(np.random.default_rng(seed), 2, 20, n, dim)


def many_components(n: int = 30_000, dim: int = 768, seed: int = 0, groups: int = 15):
    return grouped(np.random.default_rng(seed), groups, 20, n, dim)


def nested(n: int = 6000, dim: int = 768, seed: int = 0):
    """Three loose blobs (spread 0.5) each holding two tight clusters (spread 0.05)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((3, dim)))
    tight = unit(centres[:, None, :] + 0.25 * unit(rng.standard_normal((3, 2, dim))))
    loose, pl = around(rng, centres, 0.5, n // 2)
    dense, pd = around(rng, tight.reshape(6, dim), 0.05, n - n // 2)
    x = np.concatenate([loose, dense]).astype(np.float32)
    return x, np.concatenate([pl, pd // 2]).astype(np.int64)


def chain(n: int = 4000, dim: int = 768, seed: int = 0):
    """Points along a great-circle arc of length ~1.5, with small jitter."""
    rng = np.random.default_rng(seed)
    a, b = unit(rng.standard_normal((2, dim)))
    b = unit(b - (a @ b) * a)
    t = np.sort(rng.uniform(0, 1.5, n))
    line = np.cos(t)[:, None] * a + np.sin(t)[:, None] * b
    x = unit(line + 0.01 * unit(rng.standard_normal((n, dim))))
    return x.astype(np.float32), None


def identical(n: int = 3000, dim: int = 768, seed: int = 0, different: int = 5):
    """All rows one vector but ``different`` random ones."""
    rng = np.random.default_rng(seed)
    x = np.repeat(unit(rng.standard_normal((1, dim))), n, axis=0)
    x[rng.choice(n, different, replace=False)] = unit(rng.standard_normal((different, dim)))
    return x.astype(np.float32), None


def noise90(n: int = 6000, dim: int = 768, seed: int = 0):
    """90% uniform on the sphere, 10% in four clusters (spread 0.3)."""
    rng = np.random.default_rng(seed)
    k = n // 10
    centres = unit(rng.standard_normal((4, dim)))
    clustered, pick = around(rng, centres, 0.3, k)
    background = unit(rng.standard_normal((n - k, dim)))
    x = np.concatenate([clustered, background]).astype(np.float32)
    return x, np.concatenate([pick, np.full(n - k, -1)]).astype(np.int64)


def one_far_point(n: int = 20_001, dim: int = 768, seed: int = 0):
    """One group of n distinct rows (4 sub-clusters) plus one far-off point."""
    rng = np.random.default_rng(seed)
    x, _ = grouped(rng, 1, 4, n, dim)
    far = -unit(x[:1].astype(np.float64))  # the antipode of the group: distance ~2
    return np.concatenate([x, far.astype(np.float32)]), None


def tight_blobs(n: int = 100_000, dim: int = 768, seed: int = 0, rows_per_blob: int = 50):
    """n // rows_per_blob blobs (spread 0.1) around random centres: each blob holds more
    rows than the k-NN graph's 33-row lists, so each is its own component."""
    rng = np.random.default_rng(seed)
    x, pick = around(rng, unit(rng.standard_normal((n // rows_per_blob, dim))), 0.1, n)
    return x.astype(np.float32), pick.astype(np.int64)


SHAPES = {
    "far_apart": far_apart, "many_components": many_components, "nested": nested,
    "chain": chain, "identical": identical, "noise90": noise90, "one_far_point": one_far_point,
    "tight_blobs": tight_blobs,
}
