"""The fit-time estimate a run logs and stores: from the distinct rows once they are read."""

import json

import numpy as np

from gpu_cluster.backends import knn_graph
from gpu_cluster.params import HdbscanParams
from gpu_cluster.pipeline import RunOptions, cluster_database, plan_database
from helpers import blobs, raw

PARAMS = HdbscanParams(min_cluster_size=5, min_samples=5, cluster_selection_epsilon=0.4,
                       allow_single_cluster=True)


def test_estimate_for_rows_counts_the_distinct_rows():
    x = blobs(100, 32, seed=3)
    repeated = x[np.arange(1000) % 100]
    assert knn_graph.estimate_for_rows(repeated, PARAMS) == knn_graph.fit_seconds(1000, 100, 32, PARAMS)
    assert knn_graph.estimate_for_rows(repeated, PARAMS) < knn_graph.estimate(1000, 32, PARAMS)[0]
    # the dense path's cost grows with the distinct rows, the k-NN graph's above it
    small, large = (knn_graph.fit_seconds(50_000, m, 768, PARAMS) for m in (5_000, 40_000))
    assert small < large


def test_a_run_stores_the_estimate_it_used_beside_the_measured_seconds(demo_db):
    _, plans = plan_database(str(demo_db), models=("Nomic",), device="cpu")
    cluster_database(str(demo_db), RunOptions(models=("Nomic",), device="cpu"))
    (text,) = raw(demo_db, "SELECT parameters FROM clusteringresult")[0]
    p = json.loads(text)
    assert set(p["estimate_s"]) == {"read", "cluster"} and "cluster" in p["seconds"]
    # the demo repeats texts: the estimate from the distinct rows is below the plan's,
    # which could only take every row as distinct
    assert 0 < p["estimate_s"]["cluster"] < plans[0].fit_seconds
    n_distinct = p["backend_details"]["n_distinct"]
    params = HdbscanParams(p["min_cluster_size"], p["min_samples"],
                           p["cluster_selection_epsilon"], p["allow_single_cluster"])
    assert p["estimate_s"]["cluster"] == round(knn_graph.fit_seconds(p["n"], n_distinct, p["dim"], params), 3)
