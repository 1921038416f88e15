"""The knn backend's fit against EVoC on the same rows, in one run (issue 17's peer table).

    pip install -e ".[peers]"
    python -m benchmarks.peers --sizes 100000,300000 [--duplicates 0.3]

For each size: synthetic embedding-shaped rows (``benchmarks/synthetic.py``); this
project's fit with the run's default parameters (min_cluster_size = min_samples = 0.1%·n,
capped by the memory plan as a run caps it; epsilon 0.4), as a run does it (a forked
child, ``isolation.fit``); then EVoC's ``fit_predict`` with its own defaults, in this
process, after a warm-up on 2,000 rows so that numba's one-off compilation (reported
apart) is not counted. EVoC is a different algorithm (a UMAP-like node embedding, then
HDBSCAN-style layers): the ARI between the two is information, not a target. Peak RSS:
the fit children's (the largest so far), and this process's after EVoC (which
includes the rows). Times are
only comparable within one run. Writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from benchmarks.synthetic import SyntheticSpec, synthetic_embeddings
from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.backends import knn_graph
from gpu_cluster.budget import default_host_budget
from gpu_cluster.planner import plan_rows

WARM_UP_ROWS = 2000


def peak_rss_gib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set so far of this process (or of its waited-for children), GiB
    (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 2**20


def fit_ours(x: np.ndarray) -> dict:
    """Our fit of x with the run's parameters, timed, in a forked child."""
    params = plan_rows("synthetic", x.shape[0], x.shape[1], P.RequestedParams(), knn_graph,
                       default_host_budget()).params
    start = time.perf_counter()
    got = isolation.fit(knn_graph, x, params)
    return {"seconds": round(time.perf_counter() - start, 2), "labels": got.labels,
            "min_samples": params.min_samples, "clusters": got.n_clusters,
            "noise": round(float((got.labels < 0).mean()), 4),
            "peak_rss_children_gib": round(peak_rss_gib(resource.RUSAGE_CHILDREN), 2),
            "stages": got.details.get("seconds")}


def fit_evoc(x: np.ndarray) -> dict:
    """EVoC's fit_predict with its defaults, timed after a warm-up."""
    import evoc

    start = time.perf_counter()
    evoc.EVoC(random_state=0).fit_predict(x[:WARM_UP_ROWS])
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    labels = evoc.EVoC(random_state=0).fit_predict(x)
    return {"seconds": round(time.perf_counter() - start, 2), "warm_up_s": round(warm_up, 2),
            "labels": labels, "clusters": int(labels.max() + 1),
            "noise": round(float((labels < 0).mean()), 4),
            "peak_rss_process_gib": round(peak_rss_gib(), 2), "version": evoc.__version__
            if hasattr(evoc, "__version__") else "unknown"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000")
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path("out") / time.strftime(
        "peers-%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in (int(v) for v in args.sizes.split(",")):
        x = synthetic_embeddings(n, 768, seed=7, spec=SyntheticSpec(duplicates=args.duplicates))
        ours = fit_ours(x)
        theirs = fit_evoc(x)
        run = {"n": n, "duplicates": args.duplicates,
               "ours": {k: v for k, v in ours.items() if k != "labels"},
               "evoc": {k: v for k, v in theirs.items() if k != "labels"},
               "evoc_over_ours": round(theirs["seconds"] / ours["seconds"], 2),
               "ari_between": round(float(adjusted_rand_score(ours["labels"], theirs["labels"])), 4)}
        runs.append(run)
        print(f"n={n:>8,} ours {ours['seconds']:7.1f}s (min_samples {ours['min_samples']}, "
              f"{ours['clusters']} clusters, noise {ours['noise']:.3f})  EVoC {theirs['seconds']:7.1f}s "
              f"({theirs['clusters']} clusters, noise {theirs['noise']:.3f}; warm-up "
              f"{theirs['warm_up_s']:.1f}s)  EVoC / ours {run['evoc_over_ours']:.2f}  "
              f"ARI between {run['ari_between']:.3f}", flush=True)
    (args.out / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
