"""The knn backend's labels against the exact HDBSCAN answer, on embedding-shaped rows.

    python -m benchmarks.exact_reference --n 60000 --min-samples 43 [--probes 8,12,16]

The exact answer is the exact mutual-reachability MST of the distinct rows (Prim on the
dense distance matrix, ``dense_mst``: scikit-learn's result, tested against it), forced
here above its usual 20,000-row limit: it needs m² float32 (7.5 GB at 43k distinct rows),
so keep n near 60,000. Against it, each in a forked child as in a run:
- ``knn``: the backend as shipped (the cells' k-NN search, bridges, component joins);
- ``knn-probes-P``: the same with P cells probed per row;
- ``knn-exact-search``: the same graph from an exact k-NN search (what the cells
  approximate);
- ``knn-all-listed-edges``: the graph of every listed neighbour (k = min_samples of them),
  where the backend keeps the first 32 and farther ones only between their components.
Reported: ARI against the exact labels, clusters and noise, fit seconds and stage
seconds, and the search's recall@k on 2,000 rows against exact search. The defaults give
min_cluster_size 0.1%·n and the user's min_samples (43 is what the memory budget leaves
at 1.1M rows). Writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from benchmarks.synthetic import synthetic_embeddings
from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.backends import dense_mst, knn_cells, knn_graph
from gpu_cluster.backends import knn_search as knn

RECALL_QUERIES = 2000


def timed_fit(x, params) -> tuple[object, float]:
    start = time.perf_counter()
    got = isolation.fit(knn_graph, x, params)
    return got, time.perf_counter() - start


def search_recall(x: np.ndarray, k: int) -> float:
    """recall@k of the cells' search (with the current settings) on RECALL_QUERIES rows."""
    d = knn.distinct_rows(x)
    xd = np.ascontiguousarray(x[d.rep_rows])
    ids, sims = knn_cells.cell_neighbours(xd, k)
    rows = np.random.default_rng(0).choice(xd.shape[0], min(RECALL_QUERIES, xd.shape[0]),
                                           replace=False)
    found, _ = knn.drop_self(ids[rows], sims[rows], rows, k)
    exact, _ = knn.exact_neighbours(xd, k, rows=rows)
    return float(np.mean([np.intersect1d(f, e).size / k for f, e in zip(found, exact)]))


def summary(name: str, got, seconds: float, exact_labels, recall=None) -> dict:
    labels = got.labels
    row = {"method": name, "fit_s": round(seconds, 2), "clusters": got.n_clusters,
           "noise": round(float((labels == -1).mean()), 4),
           "ari_vs_exact": round(float(adjusted_rand_score(exact_labels, labels)), 4),
           "recall": None if recall is None else round(recall, 4),
           "stage_s": got.details.get("seconds")}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--min-samples", type=int, default=43)
    parser.add_argument("--probes", default="", help="extra probe counts to try, e.g. 8,12")
    parser.add_argument("--out", type=Path, default=Path("out") / time.strftime(
        "exact-reference-%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    x = synthetic_embeddings(args.n, 768, seed=0)
    params = P.resolve(P.RequestedParams(min_samples=args.min_samples), args.n)
    k = knn_graph.graph_k(params)

    limit = dense_mst.DENSE_MAX_ROWS
    dense_mst.DENSE_MAX_ROWS = args.n
    exact, exact_s = timed_fit(x, params)
    dense_mst.DENSE_MAX_ROWS = limit
    rows = [summary("exact MST (dense Prim)", exact, exact_s, exact.labels)]

    got, s = timed_fit(x, params)
    rows.append(summary(f"knn ({knn_cells.method_name(k)})", got, s, exact.labels,
                        search_recall(x, k)))
    shipped = knn_cells.PROBE_CELLS
    for probes in [int(p) for p in args.probes.split(",") if p]:
        knn_cells.PROBE_CELLS = probes
        got, s = timed_fit(x, params)
        rows.append(summary(f"knn-probes-{probes}", got, s, exact.labels,
                            search_recall(x, k)))
    knn_cells.PROBE_CELLS = shipped

    knn.EXACT_MAX_ROWS, limit = args.n, knn.EXACT_MAX_ROWS
    got, s = timed_fit(x, params)
    knn.EXACT_MAX_ROWS = limit
    rows.append(summary("knn-exact-search", got, s, exact.labels, 1.0))

    shipped_graph = knn_graph.reachability_graph
    knn_graph.reachability_graph = functools.partial(shipped_graph, base_k=k)
    got, s = timed_fit(x, params)
    knn_graph.reachability_graph = shipped_graph
    rows.append(summary("knn-all-listed-edges", got, s, exact.labels))

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "n_distinct": exact.details.get("n_distinct"), "k": k,
            "params": params.as_dict(), "runs": rows}
    (args.out / "results.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
