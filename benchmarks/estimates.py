"""The fit-time estimate a run logs against the fit's measured time, per size.

    python benchmarks/estimates.py [--sizes 600,3000,6000,20000,60000,110000] [--duplicates 0.3,0.7]
                                   [--backend knn] [--out DIR]

For each size and duplicate fraction: synthetic embedding-shaped rows (benchmarks/
synthetic.py), the plan a run makes for them (``planner.plan_rows``, the parameters the
defaults give), the estimate the run's heartbeat shows once the rows are read
(``pipeline.refined_fit_seconds``), and the fit as a run does it (``isolation.fit``: a forked
child), timed, then the medoids; peak RSS of this process and of the fit children (the
peaks so far: run one size per process for a size's own). Reports measured / estimated
(the goal: within 0.5-2 at every size).
Writes ``results.json`` and ``results.csv`` under ``--out`` (default
``out/estimates-<UTC timestamp>``).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

from benchmarks.synthetic import SyntheticSpec, synthetic_embeddings
from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.backends import load_backend
from gpu_cluster.budget import default_host_budget
from gpu_cluster.medoids import medoid_indices
from gpu_cluster.pipeline import refined_fit_seconds
from gpu_cluster.planner import plan_rows


def measure(n: int, duplicates: float, backend, dim: int) -> dict:
    x = synthetic_embeddings(n, dim, seed=5, spec=SyntheticSpec(duplicates=duplicates))
    plan = plan_rows("synthetic", n, dim, P.RequestedParams(), backend, default_host_budget())
    if not plan.ready:  # what a run would report instead of fitting
        return {"n": n, "duplicates": duplicates, "failure": plan.failure or plan.skip_reason}
    estimate = refined_fit_seconds(backend, x, plan.params, plan.fit_seconds)
    start = time.perf_counter()
    labels = isolation.fit(backend, x, plan.params)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    medoid_indices(x, labels.labels, labels.probabilities)
    medoid_s = time.perf_counter() - start
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {"n": n, "duplicates": duplicates, "min_samples": plan.params.min_samples,
            "requested_min_samples": plan.memory.requested_min_samples,
            "planned_s": round(plan.fit_seconds, 3), "estimate_s": round(estimate, 3),
            "measured_s": round(seconds, 3), "measured_over_estimate": round(seconds / estimate, 2),
            "medoids_s": round(medoid_s, 3), "n_clusters": labels.n_clusters,
            "noise": round(float((labels.labels == -1).mean()), 4),
            "peak_rss_parent_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**30, 2),
            "peak_rss_fit_child_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 2**30, 2),
            "details": labels.details}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="600,3000,6000,20000,60000,110000")
    parser.add_argument("--duplicates", default="0.3,0.7")
    parser.add_argument("--backend", default="knn")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--out", type=Path, default=Path("out") / time.strftime(
        "estimates-%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backend = load_backend("cpu", args.backend)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for dup in (float(d) for d in args.duplicates.split(",")):
            rows.append(measure(n, dup, backend, args.dim))
            r = rows[-1]
            if "failure" in r:
                print(f"n={n:>8} dup={dup:.1f} not run: {r['failure']}", flush=True)
                continue
            print(f"n={n:>8} dup={dup:.1f} min_samples={r['min_samples']:>4} planned "
                  f"{r['planned_s']:>8.2f}s estimate {r['estimate_s']:>8.2f}s measured "
                  f"{r['measured_s']:>8.2f}s ratio {r['measured_over_estimate']:>5.2f}", flush=True)
    (args.out / "results.json").write_text(json.dumps({"runs": rows}, indent=2, default=str) + "\n")
    flat = [k for k in max(rows, key=len) if k != "details"]
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=flat)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in flat} for r in rows)
    print(f"wrote {args.out}/results.json and results.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
