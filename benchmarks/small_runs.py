"""Small runs side by side: the original tool's clustering against the whole `gpu-cluster`.

    python -m benchmarks.small_runs [--sizes 600,6000,20000] [--repeats 3]
                                    [--synthetic-duplicates 0.8] [--out DIR]

For each size n, a demo database whose models have n embeddings each (duplicated texts,
as in production), then on one model (Nomic), in one run:

* the original tool: scikit-learn's ``HDBSCAN`` with its parameters (min_cluster_size =
  min_samples = max(2, 0.1% of n), cluster_selection_epsilon 0.4), timed around ``fit``
  alone (clustering only: the rows are read and normalised before the clock starts);
* this tool: the whole command, ``gpu-cluster cluster DB -m Nomic --replace`` in a fresh
  process (interpreter start, imports, read, fit, medoids and write included), timed from
  outside, with each stage's seconds and the plan's estimates read back from the stored
  ``parameters``.

Reports the speed ratio (original / ours, best of ``--repeats`` each, alternating so load
hits both alike) and the ARI of the stored labels against the original's. Writes
``results.json`` and ``results.csv`` under ``--out`` (default
``out/small-runs-<UTC timestamp>``; ``out/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from benchmarks.synthetic import SyntheticSpec, synthetic_embeddings
from gpu_cluster.demo import DemoSpec, make_demo_db

MODEL = "Nomic"


def model_rows(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) str, unit vectors (n, d) float32) of MODEL, as the original tool had them."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, vector FROM embedding WHERE embedding_model = ? "
                            "ORDER BY id", (MODEL,)).fetchall()
    ids = np.array([r[0] for r in rows])
    x = np.stack([np.frombuffer(r[1], "<f4") for r in rows])
    return ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def original_fit(x: np.ndarray) -> tuple[float, np.ndarray, dict]:
    """Seconds of the original tool's fit, its labels and parameters."""
    size = max(2, int(0.001 * x.shape[0]))
    params = {"min_cluster_size": size, "min_samples": size, "cluster_selection_epsilon": 0.4}
    start = time.perf_counter()
    labels = HDBSCAN(**params).fit(x).labels_
    return time.perf_counter() - start, labels, params


def ours(db: Path) -> tuple[float, dict, dict]:
    """Wall seconds of the whole command, the stored labels {id: cluster} and parameters."""
    command = [str(Path(sys.executable).parent / "gpu-cluster"), "cluster", str(db), "-m", MODEL,
               "--replace"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    with sqlite3.connect(db) as conn:
        rid, params = conn.execute("SELECT id, parameters FROM clusteringresult WHERE "
                                   "embedding_model = ? ORDER BY created_at DESC LIMIT 1",
                                   (MODEL,)).fetchone()
        labels = dict(conn.execute("SELECT embedding_id, cluster_id FROM embeddingcluster "
                                   "WHERE clustering_result_id = ?", (rid,)).fetchall())
    return wall, labels, json.loads(params)


def replace_vectors(db: Path, duplicates: float) -> None:
    """Give MODEL synthetic embedding-shaped vectors (benchmarks/synthetic.py) with this
    fraction of rows repeating a few canonical texts, in place of the demo's."""
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM embedding WHERE embedding_model = ? "
                                          "ORDER BY id", (MODEL,))]
        x = synthetic_embeddings(len(ids), 768, seed=11, spec=SyntheticSpec(duplicates=duplicates))
        conn.executemany("UPDATE embedding SET vector = ? WHERE id = ?",
                         [(x[i].astype("<f4").tobytes(), rid) for i, rid in enumerate(ids)])


def measure(n: int, repeats: int, work: Path, duplicates: float | None) -> dict:
    db = work / f"small-{n}.sqlite"
    if not db.exists():
        make_demo_db(db, DemoSpec(text_invocations=n, dim=768, seed=11))
        if duplicates is not None:
            replace_vectors(db, duplicates)
    ids, x = model_rows(db)
    original_s, ours_s = [], []
    for _ in range(repeats):
        seconds, ref_labels, ref_params = original_fit(x)
        original_s.append(seconds)
        wall, stored, params = ours(db)
        ours_s.append(wall)
    ari = adjusted_rand_score(ref_labels, [stored[i] for i in ids])
    return {
        "n": int(x.shape[0]), "distinct": int(np.unique(x, axis=0).shape[0]),
        "original_fit_s": round(min(original_s), 3), "ours_command_s": round(min(ours_s), 3),
        "ratio": round(min(original_s) / min(ours_s), 2), "ari": round(float(ari), 4),
        "original_params": ref_params,
        "ours_params": {k: params.get(k) for k in ("min_cluster_size", "min_samples",
                                                   "cluster_selection_epsilon")},
        "ours_stage_s": params.get("seconds"), "ours_estimate_s": params.get("estimate_s"),
        "all_original_s": [round(s, 3) for s in original_s],
        "all_ours_s": [round(s, 3) for s in ours_s],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="600,6000,20000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic-duplicates", type=float, default=None,
                        help="replace the model's demo vectors by synthetic ones with this "
                             "fraction of repeated texts (0.8: ~1/3 distinct at 6,000 rows)")
    parser.add_argument("--out", type=Path, default=Path("out") / time.strftime(
        "small-runs-%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(n, args.repeats, args.out, args.synthetic_duplicates))
        r = rows[-1]
        print(f"n={r['n']:>6} distinct={r['distinct']:>6} original fit {r['original_fit_s']:>8.2f}s"
              f"  gpu-cluster command {r['ours_command_s']:>6.2f}s  ratio {r['ratio']:>6.2f}x"
              f"  ARI {r['ari']:.4f}  stages {r['ours_stage_s']}", flush=True)
    (args.out / "results.json").write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    flat = ("n", "distinct", "original_fit_s", "ours_command_s", "ratio", "ari")
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=flat)
        writer.writeheader()
        writer.writerows({k: r[k] for k in flat} for r in rows)
    for db in args.out.glob("small-*.sqlite*"):
        db.unlink()
    print(f"wrote {args.out}/results.json and results.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
