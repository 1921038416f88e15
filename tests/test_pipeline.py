"""End to end on the demo database: what is stored, and in which formats."""

import hashlib
import json
import re
import sqlite3
import uuid

import numpy as np
import pytest
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.errors import NoGpuError, UnknownName
from gpu_cluster.pipeline import RunOptions, cluster_database, plan_database
from gpu_cluster.results import delete_results, latest_results, list_results
from gpu_cluster.database import open_database
from helpers import raw

HEX32 = re.compile(r"^[0-9a-f]{32}$")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
REAL = ["Nomic", "STSBMpnet", "STSBRoberta"]


@pytest.fixture
def clustered(demo_db):
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu"))
    return demo_db, summary


def test_three_models_clustered_dummy_skipped(clustered):
    path, summary = clustered
    status = {o.model: o.status for o in summary.outcomes}
    assert status == {"Dummy": "skipped", "Nomic": "clustered", "STSBMpnet": "clustered",
                      "STSBRoberta": "clustered"}
    assert summary.ok and summary.count("skipped") == 1
    assert "only 1 usable vector" in next(o.reason for o in summary.outcomes if o.model == "Dummy")
    assert raw(path, "SELECT embedding_model FROM clusteringresult ORDER BY 1") == [(m,) for m in REAL]


def test_storage_formats(clustered):
    path, _ = clustered
    for rid, created, model, algorithm, params_text, clusters_text in raw(
            path, "SELECT id, created_at, embedding_model, algorithm, parameters, clusters "
                  "FROM clusteringresult"):
        assert HEX32.match(rid) and DATETIME.match(created) and algorithm == "hdbscan"
        params = json.loads(params_text)
        assert params_text == json.dumps(params)  # json.dumps defaults, as panic-tda writes
        assert params["cluster_selection_epsilon"] == 0.4 and params["allow_single_cluster"] is True
        assert params["downsample"] == 10 and params["n"] == 300 and params["dim"] == 768
        assert params["backend"] == "knn" and params["device"] == "cpu"  # the CPU default
        assert set(params["seconds"]) >= {"read", "normalise", "cluster", "medoids"}
        clusters = json.loads(clusters_text)
        assert clusters_text == json.dumps(clusters)
        assert [c["id"] for c in clusters] == list(range(len(clusters))) and clusters
        members = dict(raw(path, "SELECT embedding_id, cluster_id FROM embeddingcluster "
                                 "WHERE clustering_result_id = ?", rid))
        assert len(members) == 300 and all(HEX32.match(e) for e in members)
        for c in clusters:
            medoid = c["medoid_embedding_id"]
            assert str(uuid.UUID(medoid)) == medoid  # dashed inside JSON
            assert members[medoid.replace("-", "")] == c["id"]
            text = raw(path, "SELECT i.output_text FROM embedding e JOIN invocation i "
                             "ON i.id = e.invocation_id WHERE e.id = ?", medoid.replace("-", ""))
            assert c["medoid_text"] == text[0][0]
        ecids = raw(path, "SELECT id FROM embeddingcluster WHERE clustering_result_id = ?", rid)
        assert all(HEX32.match(i) and i[12] == "7" for (i,) in ecids)  # uuid7, version nibble


@pytest.mark.parametrize("algorithm, min_ari", [("reference", 1.0), ("knn", 0.98)])
def test_stored_labels_equal_sklearn_on_the_same_rows(demo_db, algorithm, min_ari):
    path = demo_db
    cluster_database(str(path), RunOptions(downsample=10, device="cpu", algorithm=algorithm))
    for model in REAL:
        rid, params_text = raw(path, "SELECT id, parameters FROM clusteringresult "
                                     "WHERE embedding_model = ?", model)[0]
        p = json.loads(params_text)
        rows = raw(path, "SELECT e.id, e.vector, c.cluster_id FROM embeddingcluster c "
                         "JOIN embedding e ON e.id = c.embedding_id WHERE c.clustering_result_id = ?", rid)
        x = np.stack([np.frombuffer(v, "<f4") for _, v, _ in rows]).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ref = HDBSCAN(min_cluster_size=p["min_cluster_size"], min_samples=p["min_samples"],
                      cluster_selection_epsilon=0.4, allow_single_cluster=True, copy=True).fit(x)
        stored = np.array([c for _, _, c in rows])
        assert p["backend"] == algorithm
        assert adjusted_rand_score(ref.labels_, stored) >= min_ari
        if min_ari == 1.0:
            np.testing.assert_array_equal(ref.labels_ == -1, stored == -1)


def test_rerun_keeps_or_replaces(clustered):
    path, _ = clustered
    opts = RunOptions(downsample=10, device="cpu", models=("Nomic",))
    cluster_database(str(path), opts)
    assert raw(path, "SELECT count(*) FROM clusteringresult WHERE embedding_model='Nomic'") == [(2,)]
    cluster_database(str(path), RunOptions(downsample=10, device="cpu", models=("Nomic",), replace=True))
    assert raw(path, "SELECT count(*) FROM clusteringresult WHERE embedding_model='Nomic'") == [(1,)]
    assert raw(path, "SELECT count(*) FROM embeddingcluster c JOIN clusteringresult r "
                     "ON r.id = c.clustering_result_id WHERE r.embedding_model='Nomic'") == [(300,)]
    assert raw(path, "SELECT count(*) FROM embeddingcluster") == [(900,)]  # no orphans left
    engine = open_database(str(path))
    latest = latest_results(engine)
    assert set(latest) == set(REAL)
    nomic = [r for r in list_results(engine) if r.model == "Nomic"]
    assert latest["Nomic"].id == nomic[-1].id and nomic[-1].n == 300


def test_delete_by_model_and_by_id(clustered):
    path, _ = clustered
    engine = open_database(str(path), write=True)
    assert delete_results(engine, model="Nomic") == 1
    rid = raw(path, "SELECT id FROM clusteringresult WHERE embedding_model='STSBMpnet'")[0][0]
    assert delete_results(engine, result_id=str(uuid.UUID(rid))) == 1
    assert raw(path, "SELECT embedding_model FROM clusteringresult") == [("STSBRoberta",)]
    assert raw(path, "SELECT count(*) FROM embeddingcluster") == [(300,)]


def test_plan_writes_nothing(demo_db):
    before = hashlib.sha256(demo_db.read_bytes()).hexdigest()
    plans = {p.model: p for p in plan_database(str(demo_db), downsample=10, device="cpu")[1]}
    assert plans["Nomic"].n == 300 and plans["Nomic"].params.min_cluster_size == 2
    assert plans["Dummy"].skip_reason and plans["Nomic"].skip_reason is None
    assert plans["Nomic"].host_bytes > 4 * 300 * 768 and plans["Nomic"].fit_seconds > 0
    assert hashlib.sha256(demo_db.read_bytes()).hexdigest() == before
    assert not demo_db.with_name(demo_db.name + "-wal").exists() or \
        demo_db.with_name(demo_db.name + "-wal").stat().st_size == 0


@pytest.mark.parametrize("min_samples", [None, 5])
def test_the_plan_is_what_the_run_fits_with_and_stores(demo_db, min_samples):
    """`plan` and `cluster` resolve parameters in one place: the plan printed is the one
    the run fits with and stores as memory_plan, with one peak figure for the fit."""
    from gpu_cluster.backends import knn_graph
    from gpu_cluster.params import RequestedParams
    from gpu_cluster.planner import ID_BYTES

    requested = RequestedParams(min_samples=min_samples)
    budget = 2 * 2**30
    plan = {p.model: p for p in plan_database(str(demo_db), downsample=10, device="cpu",
                                               requested=requested, memory_budget=budget)[1]}["Nomic"]
    cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu", models=("Nomic",),
                                              requested=requested, memory_budget=budget))
    stored = json.loads(raw(demo_db, "SELECT parameters FROM clusteringresult")[0][0])
    assert stored["memory_plan"] == plan.memory.as_dict()
    assert {k: stored[k] for k in plan.params.as_dict()} == plan.params.as_dict()
    # The fit searches max(min_samples, 32) neighbours: the plan counts those, once.
    fit_bytes = knn_graph.peak_bytes(plan.n, 768, plan.params.min_samples)
    assert plan.memory.planned_bytes == fit_bytes == knn_graph.estimate(plan.n, 768, plan.params)[1]
    assert plan.host_bytes == fit_bytes + ID_BYTES * plan.n
    assert fit_bytes == knn_graph.peak_bytes(plan.n, 768, knn_graph.MIN_GRAPH_K)


def test_parameters_are_resolved_once_per_model(demo_db, monkeypatch):
    from gpu_cluster import params

    resolved, real = [], params.resolve
    monkeypatch.setattr(params, "resolve", lambda requested, n: resolved.append(n) or real(requested, n))
    cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu", models=("Nomic",)))
    assert resolved == [300]


def test_unknown_model_is_an_error_listing_the_models(demo_db):
    with pytest.raises(UnknownName, match=(
            r"^no embeddings of model 'NoSuchModel' in this database; its models: Dummy \(5 "
            r"embeddings\), Nomic \(3,000 embeddings\), STSBMpnet \(3,000 embeddings\), "
            r"STSBRoberta \(3,000 embeddings\)$")):
        cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu",
                                                  models=("Nomic", "NoSuchModel")))
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]


def test_gpu_without_gpu_is_a_clear_error(demo_db):
    try:
        import cupy  # noqa: F401
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    with pytest.raises(NoGpuError, match=r"--device gpu: (CuPy is not installed; install the GPU "
                                         r"extra with: pip install 'gpu_cluster\[gpu\]'|no usable CUDA)"):
        cluster_database(str(demo_db), RunOptions(device="gpu"))
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]


def test_every_step_of_a_model_is_a_logged_stage(demo_db, caplog):
    """No work between the read and the write runs without a log line (at 1.1M rows the
    normalisation and the rows' hashes took 8.6 s before the fit's first line, and the
    selection's fingerprint 6.6 s before the normalisation's)."""
    caplog.set_level("INFO", logger="gpu_cluster")
    cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu", models=("Nomic",)))
    started = [m.split(": ")[1] for m in caplog.messages
               if m.startswith("Nomic: ") and m.endswith(": started") or
               m.startswith("Nomic: ") and ": started (" in m]
    assert started == ["read", "fingerprint", "normalise", "estimate", "cluster", "medoids",
                       "write"]
