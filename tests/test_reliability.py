"""Reliability: bad rows, locks held by other processes, a full disk, failed models,
SQL built only from bound parameters. (Interruptions: test_interrupt.py.)"""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import gpu_cluster
from gpu_cluster import database, pipeline, writer
from gpu_cluster.cli import main
from gpu_cluster.database import open_database
from gpu_cluster.errors import DatabaseError, DatabaseLocked, ParameterError, ResultKept
from gpu_cluster.loading import mostly_unusable_reason
from gpu_cluster.pipeline import RunOptions, cluster_database, plan_database
from gpu_cluster.progress import Reporter
from gpu_cluster.results import latest_results, list_results
from gpu_cluster.selection import ModelSurvey, Selection
from helpers import raw

FAST = Reporter(heartbeat_s=0.3)  # lock-wait lines every max(0.3, 1) s


class AnonymousHolders(io.StringIO):
    """Log text with the lock holder's PID and command line ("held by PID 4242: python
    -c ...") replaced by "held by another process", for exact comparisons."""

    def getvalue(self) -> str:
        return re.sub(r"\(held by PID \d+: .*?\)(?= to store|: \d)", "(held by another process)",
                      super().getvalue())


@pytest.fixture
def gc_log():
    """The gpu_cluster logger's lines, whatever earlier CLI tests did to its handlers."""
    logger = logging.getLogger("gpu_cluster")
    saved = logger.handlers[:], logger.level, logger.propagate
    stream = AnonymousHolders()
    logger.handlers = [logging.StreamHandler(stream)]
    logger.setLevel(logging.INFO)
    yield stream
    logger.handlers, logger.level, logger.propagate = saved


def set_vectors(path, model: str, blob: bytes | None, count: int, offset: int,
                factor: int = 1) -> list[str]:
    """Give ``count`` of ``model``'s rows kept by downsample ``factor`` (by rowid, from
    ``offset``) the vector ``blob``."""
    with sqlite3.connect(path) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT e.id FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
            "WHERE e.embedding_model = ? AND ((i.sequence_number - 1) / 2) % ? = 0 "
            "ORDER BY e.rowid LIMIT ? OFFSET ?", (model, factor, count, offset))]
        conn.executemany("UPDATE embedding SET vector = ? WHERE id = ?", [(blob, i) for i in ids])
    return ids


def vec(dim: int, value: float = 1.0, first: float | None = None) -> bytes:
    v = np.full(dim, value, np.float32)
    if first is not None:
        v[0] = first
    return v.tobytes()


def consistent(path) -> bool:
    """Every result has exactly its parameters' n memberships; no membership is orphaned."""
    for rid, params in raw(path, "SELECT id, parameters FROM clusteringresult"):
        n = raw(path, "SELECT count(*) FROM embeddingcluster WHERE clustering_result_id = ?", rid)
        if n[0][0] != json.loads(params)["n"]:
            return False
    orphans = raw(path, "SELECT count(*) FROM embeddingcluster c LEFT JOIN clusteringresult r "
                        "ON r.id = c.clustering_result_id WHERE r.id IS NULL")
    return orphans == [(0,)] and raw(path, "PRAGMA integrity_check") == [("ok",)]


# --- bad rows --------------------------------------------------------------------------


def test_bad_rows_of_every_kind_are_skipped_counted_logged_and_stored(demo_db, gc_log):
    bad = set_vectors(demo_db, "Nomic", vec(384), 15, 0, 10)  # 5%: another model's dim
    bad += set_vectors(demo_db, "Nomic", b"\x00" * 10, 1, 15, 10)  # not whole float32s
    bad += set_vectors(demo_db, "Nomic", None, 3, 16, 10)
    bad += set_vectors(demo_db, "Nomic", vec(768, first=np.nan), 1, 19, 10)
    bad += set_vectors(demo_db, "Nomic", vec(768, first=np.inf), 1, 20, 10)
    bad += set_vectors(demo_db, "Nomic", vec(768, first=-np.inf), 1, 21, 10)
    bad += set_vectors(demo_db, "Nomic", vec(768, 0.0), 2, 22, 10)
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=("Nomic",),
                                                        device="cpu"))
    assert [(o.model, o.status, o.n) for o in summary.outcomes] == [("Nomic", "clustered", 276)]
    params = json.loads(raw(demo_db, "SELECT parameters FROM clusteringresult")[0][0])
    assert params["skipped_rows"] == {"wrong_length": 16, "null_vector": 3, "non_finite": 3,
                                      "zero_vector": 2}
    assert params["dim"] == 768 and params["n"] == 300 - 24 == 276
    stored = {r[0] for r in raw(demo_db, "SELECT embedding_id FROM embeddingcluster")}
    assert len(stored) == 276 and not stored & set(bad)
    log = gc_log.getvalue()
    assert ("skipped at selection: 16 wrong length (blob not 4*768 bytes), 3 NULL, "
            "0 without invocation") in log
    assert "Nomic: skipped rows while reading: {'non_finite': 3, 'zero_vector': 2}" in log


def selection(ok: int, wrong: int, nulls: int) -> Selection:
    return Selection(ModelSurvey("m", dim=4), 1, ok, wrong, nulls)


def test_unusable_majority_rule_counts_every_kind():
    assert mostly_unusable_reason(selection(50, 30, 20)) is None  # exactly half: clustered
    assert mostly_unusable_reason(selection(49, 31, 20)) == (
        "51 of 100 selected rows are unusable (wrong_length=31, null_vector=20); check how "
        "this model's embeddings were computed and stored")
    assert mostly_unusable_reason(selection(100, 0, 0), {"zero_vector": 20, "non_finite": 31,
                                                         "arrived_after_survey": 9}) == (
        "51 of 100 selected rows are unusable (non_finite=31, zero_vector=20); check how this "
        "model's embeddings were computed and stored")
    assert mostly_unusable_reason(selection(0, 0, 0)) is None


def test_model_with_mostly_bad_rows_is_skipped_with_its_reason(demo_db):
    set_vectors(demo_db, "STSBMpnet", vec(384), 1200, 0)  # known from the survey
    set_vectors(demo_db, "STSBMpnet", None, 400, 1200)
    set_vectors(demo_db, "STSBRoberta", vec(768, first=np.nan), 1000, 0)  # known once read
    set_vectors(demo_db, "STSBRoberta", vec(768, 0.0), 600, 1000)
    models = ("STSBMpnet", "STSBRoberta", "Nomic")
    plans = {p.model: p for p in plan_database(str(demo_db), downsample=10, models=models,
                                               device="cpu")[1]}
    assert plans["STSBMpnet"].skip_reason == (
        "160 of 300 selected rows are unusable (wrong_length=120, null_vector=40); check how "
        "this model's embeddings were computed and stored")
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=models, device="cpu"))
    reasons = {o.model: (o.status, o.reason) for o in summary.outcomes}
    assert reasons["STSBMpnet"] == ("skipped", plans["STSBMpnet"].skip_reason)
    assert reasons["STSBRoberta"] == ("skipped", (
        "160 of 300 selected rows are unusable (non_finite=100, zero_vector=60); check how "
        "this model's embeddings were computed and stored"))
    assert reasons["Nomic"] == ("clustered", "") and summary.ok  # the run goes on
    assert raw(demo_db, "SELECT embedding_model FROM clusteringresult") == [("Nomic",)]


# --- locks held by another process ---------------------------------------------------

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute(sys.argv[2])
conn.execute("INSERT INTO clusteringresult VALUES ('f' || hex(randomblob(15)), '2020-01-01', "
             "'Other', 'x', '{}', '[]')")  # an uncommitted write, as panic-tda's would be
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextmanager
def lock_held(path, begin: str = "BEGIN IMMEDIATE"):
    """Another process holds ``path``'s lock (with an uncommitted insert) until exit."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), begin],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        release(proc)


def release(proc) -> None:
    if not proc.stdin.closed:
        proc.stdin.close()
    proc.wait(timeout=30)


def release_when_logged(stream: io.StringIO, needle: str, proc) -> threading.Thread:
    """Release the holder once ``needle`` shows up in the log (so a wait really happened)."""
    def watch():
        deadline = time.monotonic() + 60
        while needle not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        release(proc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def rollback_journal(path) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)


@pytest.mark.slow
def test_write_waits_for_the_lock_with_a_heartbeat_then_writes(demo_db, gc_log):
    with lock_held(demo_db) as holder:
        watcher = release_when_logged(gc_log, "waiting for the database write lock", holder)
        summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=("Nomic",),
                                                            device="cpu", lock_timeout=60), FAST)
        watcher.join()
    assert summary.ok and summary.outcomes[0].status == "clustered"
    log = gc_log.getvalue()
    waiting = ("waiting for the database write lock (held by another process) to store Nomic's "
               "result (300 rows): 1 s of 60 s (--lock-timeout)")
    # In order: it waited, the lock was released, the write finished (no timeout between).
    assert log.index(waiting) < log.index("Nomic: write: finished") and "stayed locked" not in log
    assert raw(demo_db, "SELECT embedding_model FROM clusteringresult") == [("Nomic",)]
    assert consistent(demo_db)


TIMED_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
took = time.monotonic()
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
print(f"held {time.monotonic() - took:.2f}", flush=True)
"""


@pytest.mark.slow
def test_by_default_the_final_write_waits_as_long_as_the_lock_is_held(demo_db, gc_log):
    """No --lock-timeout: the write waits out a lock held past the old 60 s default's
    share of this test (released after 4 heartbeat lines), then stores the result."""
    holder = subprocess.Popen([sys.executable, "-c", TIMED_HOLDER, str(demo_db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"

    def release_after_four_beats():
        deadline = time.monotonic() + 120
        while gc_log.getvalue().count("waiting for the database write lock") < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holder.stdin.close()

    watcher = threading.Thread(target=release_after_four_beats, daemon=True)
    watcher.start()
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=("Nomic",),
                                                        device="cpu"), FAST)
    watcher.join()
    held = float(holder.stdout.readline().split()[1])
    holder.wait(timeout=30)
    named = io.StringIO.getvalue(gc_log)
    assert f"waiting for the database write lock (held by PID {holder.pid}: " in named
    log = gc_log.getvalue()
    beats = [line for line in log.splitlines() if "waiting for the database write lock" in line]
    assert beats[:4] == [f"waiting for the database write lock (held by another process) to "
                         f"store Nomic's result (300 rows): {s} s so far, no time limit "
                         f"(--lock-timeout sets one)" for s in (1, 2, 3, 4)]
    assert log.index(beats[-1]) < log.index("Nomic: write: finished")
    assert "Nomic: write: 0/300 rows" not in log  # the lock's lines, not an "ETA unknown" one
    outcome = summary.outcomes[0]
    assert (outcome.status, outcome.n) == ("clustered", 300)
    stored = raw(demo_db, "SELECT count(*) FROM embeddingcluster WHERE clustering_result_id = ?",
                 outcome.result_id)
    assert stored == [(300,)] and consistent(demo_db)
    assert not (demo_db.parent / "demo.sqlite.pending").exists()
    print(f"\nlock held {held:.1f} s by another connection (BEGIN EXCLUSIVE); the write "
          f"waited {outcome.seconds['write']:.1f} s with {len(beats)} heartbeat lines, then "
          f"stored result {outcome.result_id}: {outcome.n_clusters} clusters, 300 rows")


@pytest.mark.slow
def test_lock_timeout_is_a_clear_error_and_earlier_models_stay(demo_db, gc_log, monkeypatch):
    real_write, holders, waited = pipeline.write_result, [], []

    def write_then_lock(engine, result, **kw):
        if holders:  # the second model: time the wait
            start = time.monotonic()
            try:
                return real_write(engine, result, **kw)
            finally:
                waited.append(time.monotonic() - start)
        rid = real_write(engine, result, **kw)
        holders.append(lock_held(demo_db))  # panic-tda starts writing after our first model
        holders[0].__enter__()
        return rid

    monkeypatch.setattr(pipeline, "write_result", write_then_lock)
    options = RunOptions(downsample=10, models=("Nomic", "STSBMpnet"), device="cpu",
                         lock_timeout=1.5)
    kept = re.escape(str(demo_db) + ".pending/STSBMpnet-")
    try:
        with pytest.raises(ResultKept, match=(
                r"^the database stayed locked by another process for 1\.5 s while writing "
                r"STSBMpnet's results; nothing of them was written \(results stored before "
                r"stay\); rerun later or raise --lock-timeout; the computed result of STSBMpnet "
                rf"is kept in {kept}[0-9a-f]{{12}}\.npz: the same `gpu-cluster cluster` command, "
                r"or `gpu-cluster store-pending DB`, stores it without computing it again$")):
            cluster_database(str(demo_db), options, FAST)
    finally:
        holders[0].__exit__(None, None, None)
    assert 1.5 <= waited[0] < 10
    log = gc_log.getvalue()
    assert ("waiting for the database write lock (held by another process) to store "
            "STSBMpnet's result (300 rows): 1 s of 1.5 s (--lock-timeout)") in log
    assert ("stopped by a database error during STSBMpnet: write; 1 model(s) already stored: "
            "Nomic") in log
    assert raw(demo_db, "SELECT embedding_model FROM clusteringresult") == [("Nomic",)]
    assert consistent(demo_db)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_cli_lock_timeout_messages(demo_db):
    with lock_held(demo_db):
        res = run("cluster", demo_db, "--model", "Nomic", "-d", 10, "--device", "cpu",
                  "--lock-timeout", 1)
        assert res.exit_code == 2, res.output
        assert res.output.splitlines()[-1].startswith(
            "gpu-cluster: error: the database stayed locked by another process for 1 s while "
            "writing Nomic's results; nothing of them was written (results stored before "
            "stay); rerun later or raise --lock-timeout; the computed result of Nomic is kept "
            f"in {demo_db}.pending/Nomic-")
        res = run("delete", demo_db, "--model", "Nomic", "--yes", "--lock-timeout", 0.5)
        assert res.exit_code == 2
        assert res.output.splitlines()[-1] == ("gpu-cluster: error: the database stayed locked "
                                               "by another process for 0.5 s while deleting "
                                               "results; nothing was deleted; rerun later or "
                                               "raise --lock-timeout")
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    res = run("cluster", demo_db, "--lock-timeout", -1)
    assert res.exit_code == 3
    assert res.output == ("gpu-cluster: error: --lock-timeout -1.0: must be a number of "
                          "seconds >= 0\n")
    with pytest.raises(ParameterError, match=r"--lock-timeout inf: must be a number of seconds"):
        RunOptions(lock_timeout=float("inf"))


@pytest.mark.slow
def test_sigterm_while_waiting_for_the_lock_stops_at_once(demo_db):
    with lock_held(demo_db):
        proc = subprocess.Popen(
            [sys.executable, "-c", "from gpu_cluster.cli import main; main()",
             "cluster", str(demo_db), "--model", "Nomic", "-d", "10", "--device", "cpu",
             "--heartbeat", "0.3", "--lock-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the database write lock" in line:
                time.sleep(0.5)  # now inside one of SQLite's short busy waits
                proc.send_signal(signal.SIGTERM)
        # 143 (SIGTERM), not the lock timeout's 2: it stopped on the signal, while waiting.
        assert proc.wait(timeout=120) == 143, "".join(lines)
    log = "".join(lines)
    assert "stayed locked" not in log
    assert log.index("waiting for the database write lock") < log.index("received SIGTERM") \
        < log.index("interrupted during Nomic: write")
    assert "interrupted during Nomic: write; 0 model(s) already stored" in log
    assert f"the computed result of Nomic is kept in {demo_db}.pending/Nomic-" in log
    assert log.endswith("gpu-cluster: interrupted by SIGTERM\n")
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    assert len(list((demo_db.parent / "demo.sqlite.pending").glob("Nomic-*.npz"))) == 1


def test_wal_readers_are_not_blocked_by_a_writer(demo_db, gc_log):
    with lock_held(demo_db, "BEGIN EXCLUSIVE"):  # in WAL mode readers still read
        _, plans = plan_database(str(demo_db), downsample=10, device="cpu")
        engine = open_database(str(demo_db), lock_timeout_s=0.5)
        assert list_results(engine) == []  # the uncommitted write is not seen
    assert len(plans) == 4
    assert "waiting" not in gc_log.getvalue()  # neither waited for the writer's lock


@pytest.mark.slow
def test_rollback_journal_reader_waits_for_the_lock_then_times_out(demo_db):
    rollback_journal(demo_db)
    with lock_held(demo_db, "BEGIN EXCLUSIVE"):
        start = time.monotonic()
        with pytest.raises(DatabaseLocked, match=r"^the database stayed locked by another "
                                                 r"process for 0\.6 s; rerun later or raise "
                                                 r"--lock-timeout$"):
            open_database(str(demo_db), lock_timeout_s=0.6)
        assert 0.6 <= time.monotonic() - start  # it waited the whole timeout (load only adds)
        for command in ("status", "list", "plan"):
            res = run(command, demo_db, "--lock-timeout", 0.5)
            assert (res.exit_code, res.output) == (2, (
                "gpu-cluster: error: the database stayed locked by another process for 0.5 s; "
                "rerun later or raise --lock-timeout\n")), command


@pytest.mark.slow
def test_rollback_journal_run_waits_for_readers_lock_and_never_holds_one_while_clustering(
        demo_db, gc_log, monkeypatch):
    rollback_journal(demo_db)
    real_fit = pipeline.fit

    def fit_while_panic_tda_writes(backend, loaded, *args):
        # A writer that will not wait at all commits during our fit: we hold no read lock.
        other = sqlite3.connect(demo_db, timeout=0, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        other.execute("UPDATE run SET seed = seed")
        other.execute("COMMIT")
        other.close()
        return real_fit(backend, loaded, *args)

    monkeypatch.setattr(pipeline, "fit", fit_while_panic_tda_writes)
    with lock_held(demo_db, "BEGIN EXCLUSIVE") as holder:  # blocks readers in this mode
        watcher = release_when_logged(gc_log, "waiting for the database read lock", holder)
        summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=("Nomic",),
                                                            device="cpu"), FAST)
        watcher.join()
    assert summary.ok and summary.outcomes[0].status == "clustered"
    assert ("waiting for the database read lock (held by another process): 1 s so far, no "
            "time limit (--lock-timeout sets one)") in gc_log.getvalue()
    assert consistent(demo_db)


# --- full disk, failed models -----------------------------------------------------------


@pytest.fixture
def page_limit(monkeypatch):
    """A mutable max_page_count applied to every connection the library opens."""
    limit = {"pages": 2**30}
    real_engine = database._sqlite_engine

    def limited_engine(path, **kw):
        engine = real_engine(path, **kw)

        @sa.event.listens_for(engine, "connect")
        def _limit(dbapi, record):
            dbapi.execute(f"PRAGMA max_page_count = {int(limit['pages'])}")

        return engine

    monkeypatch.setattr(database, "_sqlite_engine", limited_engine)
    return limit


def test_full_disk_rolls_back_that_model_and_the_previous_result_stays_latest(
        demo_db, gc_log, page_limit, monkeypatch):
    first = cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu",
                                                      models=("STSBMpnet",)))
    before = {r.model: r.id for r in list_results(open_database(str(demo_db)))}
    real_write, real_rows, chunks = pipeline.write_result, writer.membership_rows, []

    def write_then_fill(engine, result, **kw):
        rid = real_write(engine, result, **kw)
        # ~20 pages hold a 300-row result: the next one fills the disk halfway through.
        page_limit["pages"] = raw(demo_db, "PRAGMA page_count")[0][0] + 8
        return rid

    def rows(result, result_id, start, stop):
        chunks.append((result.model, start))
        return real_rows(result, result_id, start, stop)

    monkeypatch.setattr(pipeline, "write_result", write_then_fill)
    monkeypatch.setattr(writer, "membership_rows", rows)
    monkeypatch.setattr(writer, "WRITE_CHUNK", 50)  # 6 chunks: rows are in when it fails
    with pytest.raises(DatabaseError, match=(
            r"^database or disk is full while writing STSBMpnet's results; nothing of them "
            r"was written \(results stored before stay\); free some space \(or raise the "
            r"quota\) and rerun; the computed result of STSBMpnet is kept in .*\.npz: ")):
        cluster_database(str(demo_db), RunOptions(downsample=10, device="cpu",
                                                  models=("Nomic", "STSBMpnet")))
    assert "stopped by a database error during STSBMpnet: write; 1 model(s) already stored: " \
           "Nomic" in gc_log.getvalue()
    assert 2 <= sum(model == "STSBMpnet" for model, _ in chunks) < 6  # failed mid-transaction
    assert consistent(demo_db)
    latest = latest_results(open_database(str(demo_db)))
    assert latest["STSBMpnet"].id == before["STSBMpnet"] == first.outcomes[0].result_id
    assert latest["STSBMpnet"].n == 300 and latest["Nomic"].n == 300
    assert raw(demo_db, "SELECT embedding_model, count(*) FROM clusteringresult GROUP BY 1") == \
        [("Nomic", 1), ("STSBMpnet", 1)]


def test_failed_fit_with_replace_keeps_the_previous_result_latest(demo_db, monkeypatch):
    opts = RunOptions(downsample=10, device="cpu", models=("Nomic",), replace=True)
    old = cluster_database(str(demo_db), opts).outcomes[0].result_id

    def broken_fit(*args):
        raise RuntimeError("the fit broke")

    monkeypatch.setattr(pipeline, "fit", broken_fit)
    summary = cluster_database(str(demo_db), opts)
    assert [(o.status, o.reason) for o in summary.outcomes] == [
        ("failed", "RuntimeError: the fit broke")]
    assert not summary.ok
    latest = latest_results(open_database(str(demo_db)))
    assert latest["Nomic"].id == old and latest["Nomic"].n == 300
    assert consistent(demo_db)


# --- SQL safety ---------------------------------------------------------------------------

HOSTILE = "x'); DROP TABLE embedding; --"


def test_hostile_model_name_is_data_not_sql(demo_db):
    tables = raw(demo_db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
    res = run("cluster", demo_db, "--model", HOSTILE, "--model", 'Nomic" OR 1=1 --', "-d", 10,
              "--device", "cpu")
    assert res.exit_code == 3, res.output
    assert (f"""no embeddings of model "{HOSTILE}", 'Nomic" OR 1=1 --' in this database; """
            "its models: Dummy (5 embeddings), Nomic (3,000 embeddings)") in res.output
    assert run("list", demo_db, "--model", HOSTILE).exit_code == 0  # no results: an empty list
    for args in (["plan", demo_db, "--model", HOSTILE],
                 ["delete", demo_db, "--model", HOSTILE, "--yes"]):
        assert run(*args).exit_code == 3
    assert run("delete", demo_db, "--result", HOSTILE, "--yes").output == \
        f"gpu-cluster: error: no clustering result with id {HOSTILE}\n"
    assert raw(demo_db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1") == tables
    assert raw(demo_db, "SELECT count(*) FROM embedding") == [(9005,)]


SQL_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql", "text"}


def formatted_sql_calls(source: str) -> list[int]:
    """Lines where an SQL-executing call gets a string built at run time."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        arg = node.args[0]
        built = isinstance(arg, ast.JoinedStr) or (
            isinstance(arg, ast.BinOp) and isinstance(arg.op, (ast.Mod, ast.Add))) or (
            isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "format")
        if name in SQL_CALLS and built:
            lines.append(node.lineno)
    return lines


def test_no_sql_is_built_from_strings():
    assert formatted_sql_calls('conn.execute(f"DELETE FROM t WHERE m = {m}")') == [1]
    assert formatted_sql_calls('sa.text("SELECT %s" % m)') == [1]
    assert formatted_sql_calls('c.exec_driver_sql("PRAGMA x=" + v)') == [1]
    assert formatted_sql_calls('c.execute("BEGIN IMMEDIATE"); c.execute(query, params)') == []
    package = Path(gpu_cluster.__file__).parent
    found = {str(p.relative_to(package)): formatted_sql_calls(p.read_text())
             for p in sorted(package.rglob("*.py"))}
    assert {f: lines for f, lines in found.items() if lines} == {}
    literal_sql = [node.args[0].value for p in package.rglob("*.py")
                   for node in ast.walk(ast.parse(p.read_text()))
                   if isinstance(node, ast.Call) and node.args
                   and getattr(node.func, "attr", None) in SQL_CALLS
                   and isinstance(node.args[0], ast.Constant)]
    assert set(literal_sql) <= {"BEGIN", "BEGIN EXCLUSIVE", "ROLLBACK", "PRAGMA journal_mode=WAL",
                                "SELECT count(*) FROM sqlite_master",
                                "SELECT set_config('lock_timeout', %s, false)",
                                "SET TRANSACTION SNAPSHOT :snapshot_id"}


def driver_error(message: str, **attrs) -> sa.exc.OperationalError:
    orig = sqlite3.OperationalError(message)
    for name, value in attrs.items():
        setattr(orig, name, value)
    return sa.exc.OperationalError("INSERT ...", {}, orig)


@pytest.mark.parametrize("error, message", [
    (driver_error("database or disk is full", sqlite_errorcode=sqlite3.SQLITE_FULL),
     "database or disk is full while writing M's results; nothing written; free some space "
     "(or raise the quota) and rerun"),
    (driver_error("could not extend file", sqlstate="53100"),  # PostgreSQL's disk_full
     "database or disk is full while writing M's results; nothing written; free some space "
     "(or raise the quota) and rerun"),
    (driver_error("database is locked", sqlite_errorcode=517),  # SQLITE_BUSY_SNAPSHOT
     "the database stayed locked by another process while writing M's results; nothing "
     "written; rerun later"),
    (driver_error("disk I/O error"),
     "OperationalError: disk I/O error while writing M's results; nothing written; see the "
     "database's message"),
])
def test_driver_errors_become_one_clear_line(error, message):
    with pytest.raises(DatabaseError, match=f"^{re.escape(message)}$"):
        with database.database_errors("writing M's results", "; nothing written"):
            raise error
