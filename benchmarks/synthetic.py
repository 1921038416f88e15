"""Embedding-shaped synthetic vectors, generated chunk by chunk, without a database.

For scale runs past the demo database's size. The data imitates panic-tda's text
embeddings: unit vectors around a few hundred *attractor* centres on the sphere, with
skewed attractor popularity (a few captions dominate) and ~30% exact duplicates
(trajectories repeat the same canonical captions, so identical vectors are common).

Rows are written in place into one preallocated float32 array, one chunk at a time, so
the data is never held twice (a short last chunk goes through one chunk-sized buffer).
Chunk i always draws ``chunk_rows`` rows from ``default_rng([seed, 1, i])``, so the first
n rows of an N-row set are the same whatever N: factor f of ``--synthetic N,D`` is a
prefix of the full set, as a downsample is a subset of the full database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpu_cluster.progress import Stage

DEFAULT_CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic set: ``centres`` attractors, ``duplicates`` fraction."""

    centres: int = 300
    canonical_per_centre: int = 4
    duplicates: float = 0.3
    spread_range: tuple[float, float] = (0.35, 0.8)  # norm of a point's offset from its centre
    popularity_skew: float = 0.8  # attractor weights ~ 1 / rank ** skew


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Divide the rows of float32 ``x`` by their L2 norms, in place; returns ``x``."""
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


@dataclass(frozen=True)
class Attractors:
    """centres: (k, d) float32 unit; canonical: (k, c, d) float32 unit; weights: (k,);
    spread: (k,) float32 offset norm per centre."""

    centres: np.ndarray
    canonical: np.ndarray
    weights: np.ndarray
    spread: np.ndarray


def make_attractors(dim: int, seed: int, spec: SyntheticSpec) -> Attractors:
    """The attractor centres, their canonical (duplicated) points, popularity and spread."""
    rng = np.random.default_rng([seed, 0])
    k, c = spec.centres, spec.canonical_per_centre
    centres = unit_rows(rng.standard_normal((k, dim), dtype=np.float32))
    spread = rng.uniform(*spec.spread_range, size=k).astype(np.float32)
    offsets = rng.standard_normal((k * c, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    canonical = np.repeat(centres, c, axis=0) + 0.5 * np.repeat(spread, c)[:, None] * offsets
    weights = 1.0 / np.arange(1, k + 1) ** spec.popularity_skew
    return Attractors(centres, unit_rows(canonical).reshape(k, c, dim),
                      weights / weights.sum(), spread)


def fill_chunk(out: np.ndarray, att: Attractors, rng: np.random.Generator,
               duplicates: float) -> None:
    """Fill ``out`` ((m, d) float32 view) with unit vectors around random attractors."""
    m, dim = out.shape
    idx = rng.choice(att.centres.shape[0], size=m, p=att.weights)
    rng.standard_normal(out=out, dtype=np.float32)
    out *= (att.spread[idx] / np.float32(np.sqrt(dim)))[:, None]
    out += att.centres[idx]
    unit_rows(out)
    dup = np.flatnonzero(rng.random(m) < duplicates)
    which = rng.integers(0, att.canonical.shape[1], size=dup.size)
    out[dup] = att.canonical[idx[dup], which]


def synthetic_embeddings(
    n: int, dim: int, *, seed: int = 0, spec: SyntheticSpec = SyntheticSpec(),
    chunk_rows: int = DEFAULT_CHUNK_ROWS, stage: Stage | None = None,
) -> np.ndarray:
    """(n, dim) float32 unit vectors, embedding-shaped; ``stage`` advances per chunk."""
    att = make_attractors(dim, seed, spec)
    out = np.empty((n, dim), dtype=np.float32)
    for i, start in enumerate(range(0, n, chunk_rows)):
        stop = min(start + chunk_rows, n)
        rng = np.random.default_rng([seed, 1, i])
        if stop - start == chunk_rows:
            fill_chunk(out[start:stop], att, rng, spec.duplicates)
        else:  # same draws as a full chunk, so a smaller n is a prefix of a larger one
            full = np.empty((chunk_rows, dim), dtype=np.float32)
            fill_chunk(full, att, rng, spec.duplicates)
            out[start:stop] = full[: stop - start]
        if stage is not None:
            stage.advance(stop - start)
    return out


def parse_shape(text: str) -> tuple[int, int]:
    """'N,D' -> (N, D), both >= 2; raises ValueError with the reason."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--synthetic {text!r}: expected N,D (two integers, e.g. 1000000,768)")
    n, d = (int(p) for p in parts)
    if n < 2 or d < 2:
        raise ValueError(f"--synthetic {text!r}: N and D must both be >= 2")
    return n, d
