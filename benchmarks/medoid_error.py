"""How far the approximate medoid of a large cluster is from the exact one.

    python benchmarks/medoid_error.py --sizes 25000,50000 --dim 768 --out out/medoids.json

For each size, one synthetic embedding-shaped cluster (unit vectors around one centre,
some duplicates, membership weights in [0.2, 1]) gets its exact medoid (m²·d, blocked)
and the approximation ``medoids.approximate_medoid`` uses above
``medoids.EXACT_MAX_MEMBERS``; reported: both objectives, their relative excess, whether
the same member was chosen, and both timings.

    python benchmarks/medoid_error.py --sizes 2000,5000 --out out/medoids-exact.json

Sizes up to ``EXACT_MAX_MEMBERS`` compare the shipped exact medoid (a float32 ranking, then
``CANDIDATES`` scored in float64) with one float64 pass over all members instead:
whether they chose the same member, and both timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gpu_cluster import medoids


def one_cluster(m: int, dim: int, seed: int) -> np.ndarray:
    """(m, dim) float32 unit rows around one centre, 30% exact duplicates."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(dim)
    x = centre / np.linalg.norm(centre) + 0.6 * rng.standard_normal((m, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    dup = rng.choice(m, int(0.3 * m), replace=False)
    x[dup] = x[rng.integers(0, m, dup.size)]
    return x


def measure(m: int, dim: int, seed: int) -> dict:
    x = one_cluster(m, dim, seed)
    w = np.random.default_rng(seed + 1).uniform(0.2, 1.0, m)
    members = np.arange(m)
    t = time.perf_counter()
    exact = medoids.exact_medoid(x, members, w)
    exact_s = time.perf_counter() - t
    t = time.perf_counter()
    approx = medoids.approximate_medoid(x, members, w)
    approx_s = time.perf_counter() - t
    pair = np.array([exact, approx])
    obj = medoids.weighted_distance_sums(x, pair, members, w)
    return {"members": m, "dim": dim, "exact_row": exact, "approx_row": approx,
            "same_member": exact == approx, "exact_objective": float(obj[0]),
            "approx_objective": float(obj[1]),
            "relative_excess": float(obj[1] / obj[0] - 1.0),
            "exact_seconds": exact_s, "approx_seconds": approx_s,
            "sample_size": medoids.SAMPLE_SIZE, "candidates": medoids.CANDIDATES}


def measure_exact(m: int, dim: int, seed: int) -> dict:
    x = one_cluster(m, dim, seed)
    w = np.random.default_rng(seed + 1).uniform(0.2, 1.0, m)
    members = np.arange(m)
    t = time.perf_counter()
    shipped = medoids.exact_medoid(x, members, w)
    shipped_s = time.perf_counter() - t
    t = time.perf_counter()
    one_pass = int(np.argmin(medoids.weighted_distance_sums(x, members, members, w)))
    one_pass_s = time.perf_counter() - t
    return {"members": m, "dim": dim, "exact_row": one_pass, "shipped_row": shipped,
            "same_member": shipped == one_pass, "float64_pass_seconds": one_pass_s,
            "shipped_seconds": shipped_s, "candidates": medoids.CANDIDATES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="25000,50000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/medoid-error.json")
    args = ap.parse_args()
    rows = [(measure_exact if int(m) <= medoids.EXACT_MAX_MEMBERS else measure)(int(m), args.dim, args.seed)
            for m in args.sizes.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    for r in rows:
        if "shipped_seconds" in r:
            print(f"m={r['members']:>7,}  same member {r['same_member']}  float64 pass "
                  f"{r['float64_pass_seconds']:.2f}s  shipped {r['shipped_seconds']:.2f}s")
            continue
        print(f"m={r['members']:>7,}  excess {100 * r['relative_excess']:.4f}%  same member "
              f"{r['same_member']}  exact {r['exact_seconds']:.1f}s  approx {r['approx_seconds']:.1f}s")


if __name__ == "__main__":
    main()
