"""The knn backend on adversarial shapes: stage times, components joined, ARI.

    python benchmarks/shape_sweep.py                    # every shape, both sizes
    python benchmarks/shape_sweep.py --shapes far_apart --large 22000

For each shape of ``benchmarks/shapes.py``:
- small (``--small`` rows, default 3000): the default path (exact dense MST) against
  scikit-learn's HDBSCAN on the same rows, epsilon 0 and 0.4: ARI and both fit times;
- large (``--large`` rows, default 30000, where the HNSW path and the joins run): ARI
  against the shape's known groups where it has them, with the fit's stage times
  (search / graph / joins / MST / tree) and the join statistics.
Fits run in child processes, as in a real run. Output: out/shape_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sklearn.metrics import adjusted_rand_score

from benchmarks.shapes import SHAPES
from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.backends import load_backend


def timed_fit(name: str, x, params):
    start = time.perf_counter()
    got = isolation.fit(load_backend("cpu", name), x, params)
    return got, time.perf_counter() - start


def small_case(shape: str, n: int, eps: float) -> dict:
    x, _ = SHAPES[shape](n=n)
    params = P.resolve(P.RequestedParams(epsilon=eps), len(x))
    ours, t_ours = timed_fit("knn", x, params)
    ref, t_ref = timed_fit("reference", x, params)
    return {"shape": shape, "n": len(x), "epsilon": eps, "path": ours.details.get("mst"),
            "ari_vs_reference": adjusted_rand_score(ref.labels, ours.labels),
            "clusters": [ours.n_clusters, ref.n_clusters], "knn_s": t_ours, "reference_s": t_ref}


def large_case(shape: str, n: int, eps: float) -> dict:
    x, truth = SHAPES[shape](n=n)
    params = P.resolve(P.RequestedParams(epsilon=eps), len(x))
    ours, t_ours = timed_fit("knn", x, params)
    d = ours.details
    return {"shape": shape, "n": len(x), "epsilon": eps, "path": d.get("mst"),
            "n_distinct": d.get("n_distinct"), "clusters": ours.n_clusters,
            "ari_vs_truth": None if truth is None else adjusted_rand_score(truth, ours.labels),
            "seconds": d.get("seconds"), "joins": d.get("joins"), "knn_s": t_ours}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--small", type=int, default=3000)
    ap.add_argument("--large", type=int, default=30_000)
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--out", default="out/shape_sweep.json")
    args = ap.parse_args()
    results = []
    for shape in args.shapes.split(","):
        cases = [] if args.skip_small else [(small_case, args.small, e) for e in (0.0, 0.4)]
        cases.append((large_case, args.large if shape != "one_far_point" else 20_001, 0.4))
        for case, n, eps in cases:
            r = case(shape, n, eps)
            results.append(r)
            print(json.dumps(r, default=str), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
