"""PostgreSQL as panic-tda itself creates it: selection, reads, writes and every command.

Each test gets a fresh database cloned from a template built from panic-tda's own
PostgreSQL DDL (the pg_dump copy in tests/data: native ``uuid`` ids, the
``invocationtype`` ENUM, ``bytea`` vectors, ``json`` columns) holding panic_like's rows
(see conftest.py and pg_support.py). Expectations come from raw SQL on the server
(panic-tda's own rule) or from the same rows on SQLite, never from gpu_cluster's queries.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

from gpu_cluster.cli import main
from gpu_cluster.database import Snapshot, open_database
from gpu_cluster.errors import DatabaseLocked
from gpu_cluster.loading import load_vectors
from gpu_cluster.pipeline import RunOptions, cluster_database
from gpu_cluster.progress import Reporter
from gpu_cluster.selection import survey_embeddings
from pg_support import (SNAPSHOT_MODEL, SNAPSHOT_ROWS, SNAPSHOT_ZERO, UNICODE_MODEL,
                        PanicWriter)

pytestmark = pytest.mark.slow  # a PostgreSQL server per session
psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")

# panic-tda's downsampling rule over TEXT invocations, in PostgreSQL integer arithmetic.
PANIC_RULE = """
    SELECT e.id FROM embedding e JOIN invocation i ON i.id = e.invocation_id
    WHERE e.embedding_model = %(model)s AND i.type = 'TEXT'
      AND ((i.sequence_number - 1) / 2) %% %(factor)s = 0
"""
DASHED = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def raw_pg(url: str):
    """A plain psycopg connection to the database of ``url`` (no gpu_cluster code)."""
    u = sa.make_url(url)
    return psycopg.connect(host=u.query["host"], port=int(u.query["port"]), user=u.username,
                           dbname=u.database)


def pg_rows(url: str, sql: str, params=None) -> list[tuple]:
    with raw_pg(url) as conn:
        return conn.execute(sql, params).fetchall()


def rule_ids(url: str, model: str, factor: int) -> set[str]:
    return {r[0].hex for r in pg_rows(url, PANIC_RULE, {"model": model, "factor": factor})}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def summary_lines(output: str) -> list[str]:
    """The command's per-model lines (not the log's), without the result id and time."""
    return [line.split(" result=")[0] for line in output.splitlines()
            if re.match(r"^\D.*: clustered n=\d+ clusters=", line)]


def stored_labels(url: str, model: str) -> dict[str, int]:
    with raw_pg(url) as conn:
        rows = conn.execute(
            "SELECT ec.embedding_id, ec.cluster_id FROM embeddingcluster ec JOIN "
            "clusteringresult r ON r.id = ec.clustering_result_id WHERE r.embedding_model = %s",
            (model,)).fetchall()
    return {e.hex: c for e, c in rows}


def sqlite_labels(path, model: str) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return dict(conn.execute(
            "SELECT ec.embedding_id, ec.cluster_id FROM embeddingcluster ec JOIN "
            "clusteringresult r ON r.id = ec.clustering_result_id WHERE r.embedding_model = ?",
            (model,)).fetchall())


# --- selection and reads ----------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_selected_sets_equal_panic_tda_rule(panic_pg, panic_sqlite, factor):
    engine, lite = open_database(panic_pg), open_database(str(panic_sqlite))
    with Snapshot(engine) as snap, snap.reading() as conn:
        surveys = survey_embeddings(conn)
        assert set(surveys) == {"Dummy", "Nomic", "STSBMpnet", "STSBRoberta", UNICODE_MODEL,
                                SNAPSHOT_MODEL}
        with lite.connect() as lconn:
            lite_surveys = survey_embeddings(lconn)
        for model, survey in surveys.items():
            sel = survey.selection(factor)
            expected = rule_ids(panic_pg, model, factor)
            assert sel.expected_rows == len(expected) > 0, model
            assert lite_surveys[model].selection(factor).expected_rows == len(expected), model
            loaded = load_vectors(conn, sel, batch_size=100)
            got = {i.decode() for i in loaded.ids}
            if model == SNAPSHOT_MODEL:  # its zero vectors are dropped and counted
                assert got < expected and len(got) + loaded.skipped["zero_vector"] == len(expected)
            else:
                assert got == expected and not loaded.skipped, model
    engine.dispose(), lite.dispose()


def test_vectors_are_fetched_as_binary_rows(panic_pg):
    """psycopg's default text rows would carry each bytea hex-encoded (twice the bytes)."""
    engine, formats = open_database(panic_pg), []

    @sa.event.listens_for(engine, "before_cursor_execute")  # runs after the engine's own
    def spy(conn, cursor, statement, parameters, context, executemany):
        if "embedding.vector" in statement and "count" not in statement:
            formats.append(int(cursor.format))

    with Snapshot(engine) as snap, snap.reading() as conn:
        sel = survey_embeddings(conn, ["Nomic"])["Nomic"].selection(2)
        loaded = load_vectors(conn, sel, batch_size=100)
    engine.dispose()
    assert formats == [int(psycopg.pq.Format.BINARY)] and loaded.n == sel.expected_rows > 0


# --- writes and commands ----------------------------------------------------------------


def test_cluster_on_panic_tda_schema_matches_sqlite(panic_pg, panic_sqlite):
    """The issue's command (-d 2 on panic-tda's own schema), the same labels as SQLite,
    and rows stored in the forms panic-tda reads back."""
    args = ["-d", 2, "--device", "cpu", "-m", "Nomic", "-m", UNICODE_MODEL]
    on_pg, on_lite = run("cluster", panic_pg, *args), run("cluster", panic_sqlite, *args)
    assert on_pg.exit_code == 0, on_pg.output
    assert on_lite.exit_code == 0, on_lite.output
    summary = summary_lines(on_pg.output)
    assert summary == summary_lines(on_lite.output)
    assert len(summary) == 2 and summary[1].startswith(f"{UNICODE_MODEL}: clustered n=")
    for model in ("Nomic", UNICODE_MODEL):
        a, b = stored_labels(panic_pg, model), sqlite_labels(panic_sqlite, model)
        assert set(a) == set(b) == rule_ids(panic_pg, model, 2)
        keys = sorted(a)
        assert adjusted_rand_score([a[k] for k in keys], [b[k] for k in keys]) == 1.0
    (model, created, algorithm, params, clusters), = pg_rows(
        panic_pg, "SELECT embedding_model, created_at, algorithm, parameters, clusters "
        "FROM clusteringresult WHERE embedding_model = %s", (UNICODE_MODEL,))
    assert model == UNICODE_MODEL and algorithm == "hdbscan"
    assert created.tzinfo is None  # naive UTC, as panic-tda's datetime.utcnow
    assert abs(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - created) < dt.timedelta(minutes=5)
    assert params["downsample"] == 2 and params["allow_single_cluster"] is True
    medoids = [c["medoid_embedding_id"] for c in clusters]
    assert medoids and all(DASHED.match(m) for m in medoids)  # dashed str(UUID) inside JSON
    assert pg_rows(panic_pg, "SELECT count(*) FROM embedding WHERE id = ANY(%s::uuid[])",
                   (medoids,)) == [(len(medoids),)]
    # JSON text as json.dumps writes it (panic-tda's serializer), in a json column.
    (text,), = pg_rows(panic_pg, "SELECT clusters::text FROM clusteringresult WHERE "
                       "embedding_model = %s", (UNICODE_MODEL,))
    assert text.startswith('[{"id": 0, "medoid_text": ')


def test_list_status_delete_and_replace(panic_pg):
    base = ["--device", "cpu", "-d", 3]
    assert run("cluster", panic_pg, *base, "-m", UNICODE_MODEL, "-m", "STSBRoberta").exit_code == 0
    res = run("cluster", panic_pg, *base, "-m", UNICODE_MODEL, "--replace")
    assert res.exit_code == 0, res.output
    listed = run("list", panic_pg)
    assert listed.exit_code == 0 and listed.output.splitlines()[-1] == "2 result(s)"
    lines = {line.split()[1]: line for line in listed.output.splitlines()[:-1]}
    assert set(lines) == {"Modèle", "STSBRoberta"}
    (replaced,), = pg_rows(panic_pg, "SELECT parameters->>'replaced_results' FROM "
                           "clusteringresult WHERE embedding_model = %s", (UNICODE_MODEL,))
    assert replaced == "1"
    one = run("list", panic_pg, "--model", UNICODE_MODEL)
    assert one.output.splitlines()[-1] == "1 result(s)" and UNICODE_MODEL in one.output
    status = run("status", panic_pg)
    assert status.exit_code == 0 and len(status.output.splitlines()) == 2
    rid = lines["STSBRoberta"].split()[0]
    assert run("delete", panic_pg, "--result", rid, "--yes").output == "deleted 1 clustering result(s)\n"
    res = run("delete", panic_pg, "--model", UNICODE_MODEL, "--yes")
    assert res.output == "deleted 1 clustering result(s)\n"
    assert run("list", panic_pg).output == "0 result(s)\n"
    assert run("status", panic_pg).output == "no clustering results stored\n"
    assert pg_rows(panic_pg, "SELECT count(*) FROM embeddingcluster") == [(0,)]


def test_other_column_types_are_read_from_the_database(panic_pg, panic_sqlite):
    """Hex ``character(32)`` ids, a ``varchar`` type, ``jsonb`` and ``timestamptz``: the
    same selection and writes work, in those forms."""
    from pg_support import copy_sqlite_rows, other_types_ddl

    with raw_pg(panic_pg) as conn:
        conn.execute("DROP TABLE embeddingcluster, clusteringresult, embedding, invocation, "
                     "persistencediagram, run, experimentconfig; DROP TYPE invocationtype")
        conn.execute(other_types_ddl())
        copy_sqlite_rows(panic_sqlite, conn, hex_ids=True)
    res = run("cluster", panic_pg, "-d", 2, "--device", "cpu", "-m", UNICODE_MODEL)
    assert res.exit_code == 0, res.output
    expected = {i for (i,) in pg_rows(panic_pg, PANIC_RULE, {"model": UNICODE_MODEL, "factor": 2})}
    labels = pg_rows(panic_pg, "SELECT embedding_id, clustering_result_id FROM embeddingcluster")
    assert {e for e, _ in labels} == expected and all(re.fullmatch("[0-9a-f]{32}", r) for _, r in labels)
    (created, params), = pg_rows(panic_pg, "SELECT created_at, parameters FROM clusteringresult")
    assert created.utcoffset() == dt.timedelta(0)  # naive UTC stored as UTC
    assert abs(dt.datetime.now(dt.timezone.utc) - created) < dt.timedelta(minutes=5)
    assert params["downsample"] == 2
    assert run("delete", panic_pg, "--model", UNICODE_MODEL, "--yes").exit_code == 0


def test_psycopg2_driver(panic_pg):
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (the test extra has it)")
    url = panic_pg.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    res = run("cluster", url, "-d", 2, "--device", "cpu", "-m", UNICODE_MODEL)
    assert res.exit_code == 0, res.output
    assert set(stored_labels(panic_pg, UNICODE_MODEL)) == rule_ids(panic_pg, UNICODE_MODEL, 2)


def test_lock_timeout_bounds_row_lock_waits(panic_pg, tmp_path, monkeypatch):
    """Row locks held by another session (as during its own --replace): every wait is
    bounded by --lock-timeout, and what was stored before stays."""
    monkeypatch.chdir(tmp_path)  # a result kept for a server URL goes to ./gpu-cluster-pending
    assert run("cluster", panic_pg, "--device", "cpu", "-d", 3, "-m", UNICODE_MODEL).exit_code == 0
    with raw_pg(panic_pg) as holder:
        holder.execute("SELECT id FROM clusteringresult WHERE embedding_model = %s FOR UPDATE",
                       (UNICODE_MODEL,))
        res = run("delete", panic_pg, "--model", UNICODE_MODEL, "--yes", "--lock-timeout", 0.5)
        assert res.exit_code == 2, res.output
        assert res.output == ("gpu-cluster: error: the database stayed locked by another "
                              "process for 0.5 s while deleting results; nothing was deleted; "
                              "rerun later or raise --lock-timeout\n")
        res = run("cluster", panic_pg, "--device", "cpu", "-d", 3, "-m", UNICODE_MODEL,
                  "--replace", "--lock-timeout", 0.5)
        assert res.exit_code != 0
        assert "stayed locked by another process for 0.5 s" in res.output
        holder.rollback()
    assert pg_rows(panic_pg, "SELECT count(*) FROM clusteringresult") == [(1,)]
    engine = open_database(panic_pg, write=True, lock_timeout_s=0.3)
    with raw_pg(panic_pg) as holder:
        holder.execute("LOCK TABLE embeddingcluster IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseLocked, match=r"stayed locked by another process for 0\.3 s"):
            from gpu_cluster.results import delete_results
            delete_results(engine, model=UNICODE_MODEL)
    engine.dispose()


# --- the read is the survey's snapshot ----------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, panic_sqlite):
    """(database, a raw connection for panic-tda's writer, is it PostgreSQL)."""
    if request.param == "sqlite":
        import sqlite3

        conn = sqlite3.connect(panic_sqlite)
        yield str(panic_sqlite), conn, False
    else:
        url = request.getfixturevalue("panic_pg")
        conn = raw_pg(url)
        yield url, conn, True
    conn.close()


def good_ids_now(db: str, postgres: bool) -> set[str]:
    """Ids of SNAPSHOT_MODEL's non-zero vectors, by raw SQL."""
    sql = "SELECT id, vector FROM embedding WHERE embedding_model = 'Snapshot'"
    if postgres:
        rows = [(i.hex, bytes(v)) for i, v in pg_rows(db, sql)]
    else:
        import sqlite3

        with sqlite3.connect(db) as conn:
            rows = conn.execute(sql).fetchall()
    return {i for i, v in rows if np.frombuffer(v, "<f4").any()}


class WritesBetweenBatches:
    """A progress stage that lets panic-tda's writer commit a run after every batch."""

    def __init__(self, writer: PanicWriter):
        self.writer, self.batches = writer, 0

    def advance(self, count: int = 1) -> None:
        self.batches += 1
        self.writer.add_run()


def test_read_is_the_survey_snapshot(backend):
    db, writer_conn, postgres = backend
    writer = PanicWriter(writer_conn, postgres=postgres)
    engine = open_database(db)
    before = good_ids_now(db, postgres)
    with Snapshot(engine) as snap:
        with snap.reading() as conn:
            sel = survey_embeddings(conn, [SNAPSHOT_MODEL])[SNAPSHOT_MODEL].selection(1)
        assert sel.expected_rows == SNAPSHOT_ROWS
        writer.add_run()  # arrives between the survey and the read
        stage = WritesBetweenBatches(writer)
        with snap.reading() as conn:
            loaded = load_vectors(conn, sel, batch_size=64, stage=stage)
    engine.dispose()
    assert stage.batches == 10  # zero rows in every batch; a run committed after each
    assert writer.embeddings == 3 * 11 and len(good_ids_now(db, postgres)) > len(before)
    assert loaded.n == SNAPSHOT_ROWS - SNAPSHOT_ZERO == 530
    assert dict(loaded.skipped) == {"zero_vector": SNAPSHOT_ZERO}
    assert {i.decode() for i in loaded.ids} == before


class WriterDuringRead(Reporter):
    """A reporter through which panic-tda's writer commits a run as each stage after the
    survey opens and after every batch read, so rows arrive between the survey and the
    read, and during it."""

    def __init__(self, writer: PanicWriter):
        super().__init__(heartbeat_s=60)
        self.writer = writer

    def _open(self, st) -> None:
        if st.name == "survey":  # the survey's query runs after its stage opens
            return
        self.writer.add_run()
        if st.name.endswith(": read"):
            advance = st.advance
            st.advance = lambda count=1: (advance(count), self.writer.add_run())


def test_run_clusters_the_survey_snapshot_while_panic_tda_writes(backend):
    db, writer_conn, postgres = backend
    writer = PanicWriter(writer_conn, postgres=postgres)
    before = good_ids_now(db, postgres)
    options = RunOptions(models=(SNAPSHOT_MODEL,), device="cpu", batch_size=64)
    summary = cluster_database(db, options, WriterDuringRead(writer))
    (outcome,) = summary.outcomes
    assert outcome.status == "clustered" and outcome.n == 530
    assert writer.runs >= 12
    engine = open_database(db)
    with engine.connect() as conn:
        from gpu_cluster.schema import clusteringresult

        (params,) = conn.execute(sa.select(clusteringresult.c.parameters)).scalars().all()
    engine.dispose()
    assert (params["selected"], params["n"]) == (580, 530)
    assert params["skipped_rows"] == {"wrong_length": 0, "null_vector": 0, "zero_vector": 50}
    labels = stored_labels(db, SNAPSHOT_MODEL) if postgres else sqlite_labels(db, SNAPSHOT_MODEL)
    assert set(labels) == before


def test_an_unbounded_lock_wait_says_who_holds_the_lock(panic_pg, tmp_path, monkeypatch):
    """Without --lock-timeout the write waits as long as it takes; on PostgreSQL the
    server does the waiting, and heartbeat lines still say who holds the lock."""
    monkeypatch.chdir(tmp_path)
    assert run("cluster", panic_pg, "--device", "cpu", "-d", 3, "-m", UNICODE_MODEL).exit_code == 0
    released = threading.Event()
    with raw_pg(panic_pg) as holder:
        holder.execute("SELECT id FROM clusteringresult WHERE embedding_model = %s FOR UPDATE",
                       (UNICODE_MODEL,))
        holder_pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]

        def release_later():
            time.sleep(2.5)
            holder.rollback()
            released.set()

        threading.Thread(target=release_later, daemon=True).start()
        res = run("cluster", panic_pg, "--device", "cpu", "-d", 3, "-m", UNICODE_MODEL,
                  "--replace", "--heartbeat", "0.5")
    assert released.is_set() and res.exit_code == 0, res.output
    assert f"waiting for a database lock (held by PID {holder_pid})" in res.output
    assert "no time limit" in res.output
    assert pg_rows(panic_pg, "SELECT count(*) FROM clusteringresult") == [(1,)]
