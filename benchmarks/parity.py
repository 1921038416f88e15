"""Quality and speed of the fast CPU backend against the reference, in one run.

    python benchmarks/parity.py --db out/demo.sqlite --model Nomic --sizes 5000,10000,20000
    python benchmarks/parity.py --vectors out/sentences.npy --sizes 5000,10000,20000
    python benchmarks/parity.py --shape far_apart --sizes 3000 --epsilon 0

For each data set and size n: n rows sampled (seeded) from the data, L2-normalised,
clustered by ``knn`` and by ``reference`` with the run's default parameters
(min_cluster_size = min_samples = max(2, int(0.001 n)), epsilon 0.4) in child processes,
one after the other on the same rows. Reports ARI, cluster and noise counts, both fit
times and their ratio (reference / knn). Ratios, not absolute times, are the result:
both run in the same process tree on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.backends import load_backend
from gpu_cluster.loading import normalise_rows


def db_vectors(path: str, model: str) -> np.ndarray:
    """All of one model's vectors from a panic-tda SQLite file, (n, d) float32."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        blobs = [b for (b,) in conn.execute(
            "SELECT vector FROM embedding WHERE embedding_model = ?", (model,))]
    return np.stack([np.frombuffer(b, "<f4") for b in blobs]).astype(np.float32)


def compare(x: np.ndarray, n: int, seed: int, epsilon: float = P.DEFAULT_EPSILON) -> dict:
    """knn vs reference on n rows sampled from x."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    sample = np.ascontiguousarray(x[rows])
    normalise_rows(sample)
    params = P.resolve(P.RequestedParams(epsilon=epsilon), n)
    out = {"n": n, "dim": int(x.shape[1]), "min_samples": params.min_samples,
           "distinct": int(len(np.unique(sample, axis=0)))}
    fits = {}
    for name in ("knn", "reference"):
        start = time.perf_counter()
        fits[name] = isolation.fit(load_backend("cpu", name), sample, params)
        out[f"{name}_seconds"] = time.perf_counter() - start
        out[f"{name}_clusters"] = fits[name].n_clusters
        out[f"{name}_noise"] = fits[name].n_noise / n
    out["ari"] = adjusted_rand_score(fits["reference"].labels, fits["knn"].labels)
    out["epsilon"] = epsilon
    out["knn_details"] = fits["knn"].details
    out["speed_ratio"] = out["reference_seconds"] / out["knn_seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="panic-tda SQLite file (with --model)")
    ap.add_argument("--model", default="Nomic")
    ap.add_argument("--vectors", help=".npy file of (n, d) float32 vectors")
    ap.add_argument("--shape", help="a generated shape from benchmarks/shapes.py (e.g. far_apart)")
    ap.add_argument("--epsilon", type=float, default=P.DEFAULT_EPSILON)
    ap.add_argument("--sizes", default="5000,10000,20000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/parity.json")
    args = ap.parse_args()
    if args.shape:
        from benchmarks.shapes import SHAPES

        x = SHAPES[args.shape](n=max(int(v) for v in args.sizes.split(",")))[0]
        source = f"shape:{args.shape}"
    else:
        x = db_vectors(args.db, args.model) if args.db else np.load(args.vectors).astype(np.float32)
        source = f"{args.db}:{args.model}" if args.db else args.vectors
    results = []
    for n in (int(v) for v in args.sizes.split(",")):
        r = {"source": source, **compare(x, min(n, len(x)), args.seed, args.epsilon)}
        results.append(r)
        print(f"{source} n={r['n']:>6} distinct={r['distinct']:>6} ms={r['min_samples']:>3} "
              f"eps={r['epsilon']} ARI={r['ari']:.4f} clusters {r['knn_clusters']}/{r['reference_clusters']} "
              f"knn {r['knn_seconds']:.1f}s ref {r['reference_seconds']:.1f}s "
              f"ratio {r['speed_ratio']:.0f}x", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
