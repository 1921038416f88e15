"""Independent cross-check of ``gpu_cluster`` on a database it did not generate.

The database comes from ``tests/panic_like.py`` (raw ``sqlite3`` + NumPy, panic-tda's
verbatim DDL, uuid4 ids, shuffled rowids). Every expectation here is computed with raw
SQL and scikit-learn, never with ``gpu_cluster`` code: the selection by panic-tda's own
rule ``((sequence_number - 1) / 2) % N == 0`` over TEXT invocations, the labels by
``sklearn.cluster.HDBSCAN`` on rows this file decodes and normalises itself.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sqlite3
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial.distance import cdist
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from panic_like import PANIC_TDA_DDL, build_panic_like_db

SEED = 20250301
FACTORS = (1, 2, 3, 10)
DOWNSAMPLE = 2
HEX32 = re.compile(r"^[0-9a-f]{32}$")
DASHED = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")

# panic-tda's downsampling rule, in SQLite integer arithmetic, over TEXT invocations.
PANIC_RULE_FROM = """
    FROM embedding AS e JOIN invocation AS i ON i.id = e.invocation_id
    WHERE e.embedding_model = :model AND i.type = 'TEXT'
      AND ((i.sequence_number - 1) / 2) % :factor = 0
"""


def raw_connect(path) -> sqlite3.Connection:
    return sqlite3.connect(str(path))


def panic_rule_count(conn: sqlite3.Connection, model: str, factor: int) -> int:
    sql = "SELECT count(*)" + PANIC_RULE_FROM
    return conn.execute(sql, {"model": model, "factor": factor}).fetchone()[0]


def panic_rule_vectors(conn: sqlite3.Connection, model: str, factor: int):
    """(ids, X): the rule's rows ordered by id, X (n, d) float32 with unit rows."""
    sql = "SELECT e.id, e.vector" + PANIC_RULE_FROM + " ORDER BY e.id"
    rows = conn.execute(sql, {"model": model, "factor": factor}).fetchall()
    ids = [r[0] for r in rows]
    x = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return ids, x.astype(np.float32)


def all_models(conn: sqlite3.Connection) -> list[str]:
    return [m for (m,) in conn.execute("SELECT DISTINCT embedding_model FROM embedding")]


# --- the builder itself -----------------------------------------------------------------


def test_builder_writes_panic_tda_layout(tmp_path):
    path = tmp_path / "panic.sqlite"
    info = build_panic_like_db(path, seed=SEED)
    with raw_connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        stored = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        assert len(stored) == 21
        assert sum(t == "table" for t, _, _ in stored) == 7
        assert sum(t == "index" and sql is None for t, _, sql in stored) == 7
        expected = {s.strip() for s in PANIC_TDA_DDL.split(";") if s.strip()}
        assert {sql for _, _, sql in stored if sql} == expected
        # Parity: IMAGE on even sequence numbers, TEXT on odd ones; embeddings on TEXT only.
        assert conn.execute(
            "SELECT count(*) FROM invocation WHERE (type = 'TEXT') != (sequence_number % 2 = 1)"
        ).fetchone()[0] == 0
        assert conn.execute(
            "SELECT count(*) FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "WHERE i.type != 'TEXT'"
        ).fetchone()[0] == 0
        assert conn.execute(
            "SELECT count(*) FROM invocation WHERE type = 'IMAGE' "
            "AND substr(output_image_data, 1, 4) = CAST('RIFF' AS BLOB) "
            "AND substr(output_image_data, 9, 8) = CAST('WEBPVP8L' AS BLOB)"
        ).fetchone()[0] == info["invocations"] - info["text_invocations"]
        # rowid order is not sequence order.
        seqs = [s for (s,) in conn.execute("SELECT sequence_number FROM invocation ORDER BY rowid")]
        assert seqs != sorted(seqs)
        # Duplicated texts, and exactly duplicated vectors.
        dup_texts = conn.execute(
            "SELECT count(*) - count(DISTINCT output_text) FROM invocation WHERE type = 'TEXT'"
        ).fetchone()[0]
        assert dup_texts > info["text_invocations"] // 10
        for model in info["models"]:
            n, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT vector) FROM embedding WHERE embedding_model = ?",
                (model,),
            ).fetchone()
            assert n == info["embeddings"][model] and n - distinct > n // 10
            assert panic_rule_count(conn, model, DOWNSAMPLE) <= 800
    assert 1 <= info["embeddings"][info["tiny_model"]] <= 3
    assert {1, 2} & set(info["max_lengths"])
    assert {L % 2 for L in info["max_lengths"]} == {0, 1}


# --- a. selection counts ----------------------------------------------------------------


def test_selection_counts_match_panic_tda_rule(tmp_path):
    from gpu_cluster.database import open_database
    from gpu_cluster.selection import survey_embeddings

    path = tmp_path / "panic.sqlite"
    info = build_panic_like_db(path, seed=SEED + 1)
    engine = open_database(str(path))
    try:
        with engine.connect() as conn:
            surveys = survey_embeddings(conn)
    finally:
        engine.dispose()
    with raw_connect(path) as conn:
        models = all_models(conn)
        assert set(models) == {*info["models"], info["tiny_model"]}
        assert set(surveys) == set(models)
        for model in models:
            for factor in FACTORS:
                expected = panic_rule_count(conn, model, factor)
                got = surveys[model].selection(factor).expected_rows
                assert got == expected, (model, factor)
            assert surveys[model].selection(1).expected_rows == info["embeddings"][model]
        # The trap: a naive modulus on sequence_number hits only IMAGE rows.
        naive = conn.execute(
            "SELECT count(*) FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "WHERE i.sequence_number % 10 = 0"
        ).fetchone()[0]
        assert naive == 0


# --- b, c. the CLI end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """A fresh panic-like database after ``gpu-cluster cluster --downsample 2 --device cpu``."""
    from gpu_cluster.cli import main

    path = tmp_path_factory.mktemp("independent") / "panic.sqlite"
    info = build_panic_like_db(path, seed=SEED + 2)
    with raw_connect(path) as conn:
        before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("run", "invocation", "embedding")}
    old_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(
            main, ["cluster", str(path), "--downsample", str(DOWNSAMPLE), "--device", "cpu"]
        )
    finally:
        signal.signal(signal.SIGTERM, old_sigterm)
        logging.getLogger("gpu_cluster").handlers.clear()  # they point at CliRunner's stream
    return {"path": path, "info": info, "result": result, "before": before}


def test_cli_exits_cleanly_and_reports_the_tiny_model_skipped(clustered):
    result, info = clustered["result"], clustered["info"]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    tiny = info["tiny_model"]
    assert re.search(rf"^{tiny}: skipped: ", result.output, re.M), result.output
    for model in info["models"]:
        assert re.search(rf"^{model}: clustered n=\d+ ", result.output, re.M), result.output
    assert f"done: {len(info['models'])} clustered, 1 skipped, 0 failed" in result.output


def test_cli_touches_only_result_tables(clustered):
    with raw_connect(clustered["path"]) as conn:
        for table, count in clustered["before"].items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count
        models = {m for (m,) in conn.execute("SELECT embedding_model FROM clusteringresult")}
        assert models == set(clustered["info"]["models"])
        assert conn.execute("SELECT count(*) FROM clusteringresult").fetchone()[0] == len(models)


def stored_result(conn: sqlite3.Connection, model: str):
    rows = conn.execute(
        "SELECT id, created_at, algorithm, parameters, clusters FROM clusteringresult "
        "WHERE embedding_model = ?", (model,),
    ).fetchall()
    assert len(rows) == 1, rows
    rid, created_at, algorithm, params_text, clusters_text = rows[0]
    return rid, created_at, algorithm, params_text, clusters_text


@pytest.mark.parametrize("model", ["STSBMpnet", "Nomic", "STSBRoberta"])
def test_stored_labels_equal_scikit_learn(clustered, model):
    assert model in clustered["info"]["models"]
    with raw_connect(clustered["path"]) as conn:
        rid, _, algorithm, params_text, clusters_text = stored_result(conn, model)
        assert HEX32.match(rid) and algorithm == "hdbscan"
        p = json.loads(params_text)
        ids, x = panic_rule_vectors(conn, model, DOWNSAMPLE)
        n = len(ids)
        assert p["cluster_selection_epsilon"] == 0.4
        assert p["allow_single_cluster"] is True
        assert p["downsample"] == DOWNSAMPLE
        assert p["n"] == n
        assert p["min_cluster_size"] == max(2, int(0.001 * n))  # the documented default
        assert p["min_samples"] == p["min_cluster_size"]
        members = conn.execute(
            "SELECT id, embedding_id, cluster_id FROM embeddingcluster "
            "WHERE clustering_result_id = ?", (rid,),
        ).fetchall()
    assert len(members) == n
    assert all(HEX32.match(mid) and HEX32.match(eid) for mid, eid, _ in members)
    stored = {eid: label for _, eid, label in members}
    assert len(stored) == n and set(stored) == set(ids)

    fitted = HDBSCAN(
        min_cluster_size=p["min_cluster_size"], min_samples=p["min_samples"],
        cluster_selection_epsilon=0.4, allow_single_cluster=True, metric="euclidean",
        copy=True,
    ).fit(x)
    expected = fitted.labels_
    got = np.array([stored[i] for i in ids])
    assert adjusted_rand_score(expected, got) == 1.0
    assert set(np.flatnonzero(got == -1)) == set(np.flatnonzero(expected == -1))
    assert expected.max() >= 1  # the data has cluster structure: not a trivial labelling

    # Each stored medoid minimises scikit-learn's medoid objective (store_centers="medoid"):
    # sum_j p_j * ||x_i - x_j|| over the cluster's members. Ties are common (any 2-member
    # cluster, duplicated rows) and are broken by row order, which is the tool's read order,
    # so the check is "attains the minimum", not "is the same row".
    row_of = {eid: k for k, eid in enumerate(ids)}
    clusters = json.loads(clusters_text)
    assert len(clusters) == expected.max() + 1
    for entry in clusters:
        members = np.flatnonzero(got == entry["id"])
        assert np.unique(expected[members]).size == 1
        # scikit-learn's objective (HDBSCAN._weighted_cluster_center), with exact float64
        # pairwise differences so that identical rows are at distance 0, not Gram-trick noise.
        sums = cdist(x[members].astype(np.float64), x[members].astype(np.float64))
        sums = sums @ fitted.probabilities_[members]
        medoid_row = row_of[uuid.UUID(entry["medoid_embedding_id"]).hex]
        at = int(np.flatnonzero(members == medoid_row)[0])
        tolerance = 1e-6 * members.size  # float32 rounding of up to m distances
        assert sums[at] <= sums.min() + tolerance, (entry, sums[at], sums.min())


@pytest.mark.parametrize("model", ["STSBMpnet", "Nomic", "STSBRoberta"])
def test_clusters_json_names_a_member_medoid_with_its_text(clustered, model):
    with raw_connect(clustered["path"]) as conn:
        rid, _, _, params_text, clusters_text = stored_result(conn, model)
        labels = dict(conn.execute(
            "SELECT embedding_id, cluster_id FROM embeddingcluster WHERE clustering_result_id = ?",
            (rid,),
        ).fetchall())
        texts = dict(conn.execute(
            "SELECT e.id, i.output_text FROM embedding e JOIN invocation i "
            "ON i.id = e.invocation_id WHERE e.embedding_model = ?", (model,),
        ).fetchall())
    # JSON text as json.dumps writes it with default arguments (", ", ": ", ASCII only).
    for text in (params_text, clusters_text):
        assert json.dumps(json.loads(text)) == text
    clusters = json.loads(clusters_text)
    cluster_ids = {c for c in labels.values() if c != -1}
    assert sorted(entry["id"] for entry in clusters) == sorted(cluster_ids)
    for entry in clusters:
        assert set(entry) == {"id", "medoid_text", "medoid_embedding_id"}
        medoid = entry["medoid_embedding_id"]
        assert isinstance(medoid, str) and DASHED.match(medoid)
        medoid_hex = uuid.UUID(medoid).hex
        assert labels.get(medoid_hex) == entry["id"], entry
        assert entry["medoid_text"] == texts[medoid_hex]


def test_created_at_is_panic_tda_datetime_text(clustered):
    with raw_connect(clustered["path"]) as conn:
        rows = conn.execute("SELECT created_at, typeof(created_at) FROM clusteringresult").fetchall()
    assert len(rows) == len(clustered["info"]["models"])
    for created_at, kind in rows:
        assert kind == "text" and DATETIME.match(created_at), created_at
