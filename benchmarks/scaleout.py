"""Wall time of a whole run in-process against Dask local clusters of 1, 2, 3 workers.

    python benchmarks/scaleout.py [--text-invocations 30000] [--workers 1,2,3] [--algorithm A] [--out DIR]

Writes a demo database (three real models of N vectors each, 768-d), then for each
configuration clusters a fresh copy of it, timing the whole library call (the local
cluster's start and stop included) and checking that every configuration stores the same
labels as the in-process run. The overhead of Dask on one model is the in-process run of
one model against one worker. Writes ``results.json`` and ``results.csv`` under ``--out``
(default ``out/scaleout-<UTC timestamp>``; ``out/`` is git-ignored) and prints a table.
Needs the ``distributed`` extra.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from gpu_cluster.demo import DemoSpec, make_demo_db
from gpu_cluster.pipeline import RunOptions, cluster_database
from gpu_cluster.scaleout import ScaleOut, cluster_database_on_dask

REAL = ("Nomic", "STSBMpnet", "STSBRoberta")


def stored_labels(path: Path) -> dict[str, dict]:
    """model -> {embedding id: cluster id} of the stored results."""
    with sqlite3.connect(path) as conn:
        return {model: dict(conn.execute(
                    "SELECT embedding_id, cluster_id FROM embeddingcluster "
                    "WHERE clustering_result_id = ?", (rid,)).fetchall())
                for rid, model in conn.execute("SELECT id, embedding_model FROM clusteringresult")}


def timed_run(template: Path, work: Path, models: tuple[str, ...], workers: int | None,
              downsample: int, algorithm: str | None) -> dict:
    """Cluster a fresh copy of ``template``; wall seconds and per-model stage seconds."""
    db = work / f"run-{workers or 0}-{len(models)}.sqlite"
    shutil.copy(template, db)
    options = RunOptions(downsample=downsample, models=models, algorithm=algorithm)
    start = time.perf_counter()
    if workers is None:
        summary = cluster_database(str(db), options)
    else:
        summary = cluster_database_on_dask(str(db), options, ScaleOut(workers=workers))
    wall = time.perf_counter() - start
    assert summary.ok, [(o.model, o.status, o.reason) for o in summary.outcomes]
    labels = stored_labels(db)
    db.unlink()
    return {"workers": workers or 0, "models": list(models), "wall_s": round(wall, 3),
            "stage_s": {o.model: {k: round(v, 3) for k, v in o.seconds.items()}
                        for o in summary.outcomes}, "labels": labels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-invocations", type=int, default=30_000)
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--algorithm", default=None,
                        help="backend, e.g. 'reference' (single-threaded scikit-learn)")
    parser.add_argument("--out", type=Path,
                        default=Path("out") / f"scaleout-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    template = args.out / "template.sqlite"
    if not template.exists():
        make_demo_db(template, DemoSpec(text_invocations=args.text_invocations, dim=768, seed=3))
    counts = [int(w) for w in args.workers.split(",")]
    runs = [timed_run(template, args.out, REAL, None, args.downsample, args.algorithm)]
    runs += [timed_run(template, args.out, REAL, w, args.downsample, args.algorithm) for w in counts]
    one = [timed_run(template, args.out, REAL[:1], None, args.downsample, args.algorithm),
           timed_run(template, args.out, REAL[:1], 1, args.downsample, args.algorithm)]
    base = runs[0]
    rows = []
    for r in runs + one:
        ref = base if len(r["models"]) == 3 else one[0]
        r["same_labels_as_in_process"] = r["labels"] == ref["labels"]
        r["speedup_vs_in_process"] = round(ref["wall_s"] / r["wall_s"], 3)
        rows.append({k: r[k] for k in ("workers", "wall_s", "speedup_vs_in_process",
                                       "same_labels_as_in_process")}
                    | {"models": len(r["models"])})
    report = {"text_invocations": args.text_invocations, "downsample": args.downsample,
              "algorithm": args.algorithm,
              "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
              "runs": [{k: v for k, v in r.items() if k != "labels"} for r in runs + one]}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    template.unlink()
    print(f"{'models':>6} {'workers':>7} {'wall s':>8} {'vs in-process':>13} same labels")
    for r in rows:
        print(f"{r['models']:>6} {r['workers'] or 'in-proc':>7} {r['wall_s']:>8.2f} "
              f"{r['speedup_vs_in_process']:>12.2f}x {r['same_labels_as_in_process']}")
    print(f"wrote {args.out}/results.json and results.csv")
    return 0 if all(r["same_labels_as_in_process"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
