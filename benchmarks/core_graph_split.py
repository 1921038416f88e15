"""Large min_samples: does the spanning tree need all min_samples edges per point?

    python -m benchmarks.core_graph_split [--n 100000] [--duplicates 0.3] [--base-k 32,64]

The knn backend searches k = max(min_samples, 32) neighbours per point: the core distance
is the min_samples-th neighbour's (scikit-learn's semantics). Its graph keeps each point's
first ``base-k`` (32) neighbours as edges, and a farther listed neighbour only where it
links two components of those edges (``knn_graph.reachability_graph``). This measures that
choice on the same rows, the same search and the same core distances against the graph of
*all* listed edges, then the same exact bridges, component joins, MST and tree. Reports,
per base-k, the ARI against all listed edges' labels, the spanning tree's weight, the
seconds of graph + bridges + joins + MST + tree, and the graph's stored entries. Writes
``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from benchmarks.synthetic import SyntheticSpec, synthetic_embeddings
from gpu_cluster import params as P
from gpu_cluster.backends import component_joins, knn_graph
from gpu_cluster.backends import knn_search as knn
from scipy.sparse import csgraph


def labels_from_graph(x, distinct, nb, core, params, base_k: int) -> tuple[np.ndarray, dict]:
    """The knn backend's steps after the search, with ``base_k`` near edges per point."""
    seconds, t = {}, time.perf_counter()
    graph = knn_graph.reachability_graph(nb, core, base_k=base_k)
    entries = graph.nnz
    components, parts = csgraph.connected_components(graph, directed=False)
    seconds["graph"], t = time.perf_counter() - t, time.perf_counter()
    links, _ = component_joins.bridge_dense_fragments(x, graph, core, params.min_cluster_size)
    seconds["bridges"], t = time.perf_counter() - t, time.perf_counter()
    exits, _ = component_joins.join_components(x, core, parts, links)
    seconds["joins"], t = time.perf_counter() - t, time.perf_counter()
    tree = knn_graph.graph_mst(component_joins.with_edges(graph, links + exits))
    seconds["mst"], t = time.perf_counter() - t, time.perf_counter()
    labels, _ = knn_graph.labels_from_edges(knn_graph.spanning_edges(tree, distinct, core), params)
    seconds["tree"] = time.perf_counter() - t
    return labels, {"entries": int(entries), "components": int(components),
                    "tree_weight": round(float(tree[2].sum()), 4),
                    "seconds": {k: round(v, 2) for k, v in seconds.items()},
                    "after_search_s": round(sum(seconds.values()), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--base-k", default="32,64")
    parser.add_argument("--out", type=Path, default=Path("out") / time.strftime(
        "core-graph-split-%Y%m%dT%H%M%SZ", time.gmtime()))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x = synthetic_embeddings(args.n, 768, seed=7, spec=SyntheticSpec(duplicates=args.duplicates))
    params = P.resolve(P.RequestedParams(), args.n)
    distinct = knn.distinct_rows(x)
    xd = x[distinct.rep_rows]
    t = time.perf_counter()
    nb, x_searched = knn.nearest_neighbours(xd, knn_graph.graph_k(params, xd.shape[0]))
    search_s = time.perf_counter() - t
    core, _ = knn.core_distances(distinct.counts, nb, params.min_samples)
    full, full_info = labels_from_graph(x_searched, distinct, nb, core, params, nb.indices.shape[1])
    runs = [{"base_k": nb.indices.shape[1], "ari_vs_all": 1.0, **full_info,
             "n_clusters": int(full.max() + 1), "noise": round(float((full < 0).mean()), 4)}]
    for k in (int(v) for v in args.base_k.split(",")):
        labels, info = labels_from_graph(x_searched, distinct, nb, core, params, k)
        runs.append({"base_k": k, "ari_vs_all": round(float(adjusted_rand_score(full, labels)), 5),
                     **info, "n_clusters": int(labels.max() + 1),
                     "noise": round(float((labels < 0).mean()), 4)})
    report = {"n": args.n, "distinct": int(xd.shape[0]), "min_samples": params.min_samples,
              "min_cluster_size": params.min_cluster_size, "search": nb.method,
              "search_s": round(search_s, 2), "runs": runs}
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"n={args.n} distinct={xd.shape[0]} min_samples={params.min_samples} search "
          f"{nb.method} {search_s:.1f}s")
    for r in runs:
        print(f"base k={r['base_k']:>4} entries={r['entries']:>10,} after-search {r['after_search_s']:>7.2f}s "
              f"{r['seconds']} tree {r['tree_weight']} ARI vs all {r['ari_vs_all']:.5f} clusters {r['n_clusters']} "
              f"noise {r['noise']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
