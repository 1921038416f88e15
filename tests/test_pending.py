"""Never lose computed work to a lock: a result that cannot be stored is kept beside the
database, and the next run (or ``store-pending``) stores it without fitting again."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from gpu_cluster import pending, pipeline
from gpu_cluster.cli import main
from gpu_cluster.errors import ResultKept
from gpu_cluster.pipeline import RunOptions, cluster_database
from gpu_cluster.progress import Reporter
from helpers import raw
from test_reliability import consistent, gc_log, lock_held, set_vectors, vec  # noqa: F401 (gc_log: a fixture)

FAST = Reporter(heartbeat_s=0.3)
OPTIONS = RunOptions(downsample=10, models=("Nomic", "STSBMpnet"), device="cpu")


@pytest.mark.parametrize("dim", [8, 7])  # 7: a row's last 4 bytes are not a whole word
@pytest.mark.parametrize("column", [0, 3, -1])
def test_fingerprint_ignores_row_order_and_sees_any_change(dim, column):
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:032x}".encode() for i in range(50)], "S32")
    x = rng.standard_normal((50, dim)).astype(np.float32)
    perm = rng.permutation(50)
    assert pending.fingerprint(ids, x) == pending.fingerprint(ids[perm], x[perm])
    y = x.copy()
    y[7, column] = np.nextafter(y[7, column], np.float32(np.inf))  # one bit of one float
    swapped = x.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # same rows, other ids: a change too
    assert len({pending.fingerprint(ids, x), pending.fingerprint(ids, y),
                pending.fingerprint(ids, swapped), pending.fingerprint(ids[:49], x[:49])}) == 4


def keep_under_lock(demo_db, options=OPTIONS) -> list:
    """Cluster while another process holds the write lock, with a 0.5 s bound: the first
    model's result is computed, cannot be stored and is kept; that stops the run."""
    with lock_held(demo_db):
        with pytest.raises(ResultKept) as info:
            cluster_database(str(demo_db), RunOptions(**{**options.__dict__, "lock_timeout": 0.5}),
                             FAST)
    return info.value.path


def test_kept_result_holds_the_state_and_the_next_run_stores_it_without_a_fit(
        demo_db, gc_log, monkeypatch):
    path = keep_under_lock(demo_db)
    assert path.parent == demo_db.parent / "demo.sqlite.pending" and path.name.startswith("Nomic-")
    kept = pending.load(path)
    assert kept.ids.shape == kept.labels.shape == kept.probabilities.shape == (300,)
    assert kept.key["model"] == "Nomic" and kept.key["downsample"] == 10
    assert kept.key["params"]["min_cluster_size"] == 2 and kept.key["backend"] == "knn"
    assert kept.medoid_rows.shape == (kept.parameters["n_clusters"],)
    assert kept.parameters["selection_fingerprint"] == kept.key["fingerprint"]
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    assert "Nomic: the computed result is not stored; the computed result of Nomic is kept " \
           f"in {path}" in gc_log.getvalue()

    fits = []
    real_fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda *a: fits.append(a[1].model) or real_fit(*a))
    summary = cluster_database(str(demo_db), OPTIONS, FAST)  # the same command, no lock now
    assert [(o.model, o.status) for o in summary.outcomes] == [("Nomic", "clustered"),
                                                               ("STSBMpnet", "clustered")]
    assert fits == ["STSBMpnet"]  # Nomic came from the file
    assert summary.outcomes[0].result_id == kept.result_id and not path.exists()
    stored = dict(raw(demo_db, "SELECT embedding_id, cluster_id FROM embeddingcluster "
                               "WHERE clustering_result_id = ?", kept.result_id))
    assert stored == {i.decode(): int(label) for i, label in zip(kept.ids, kept.labels)}
    assert f"Nomic: storing the result computed at {kept.computed_at} and kept in {path}" in \
        gc_log.getvalue()
    assert consistent(demo_db)


def test_a_kept_result_for_other_parameters_or_rows_is_not_used(demo_db, gc_log):
    path = keep_under_lock(demo_db)
    other = RunOptions(downsample=10, models=("Nomic",), device="cpu",
                       requested=pipeline.P.RequestedParams(min_cluster_size=5))
    assert cluster_database(str(demo_db), other, FAST).outcomes[0].status == "clustered"
    assert f"Nomic: the result kept in {path} was computed for other params; it is left" in \
        gc_log.getvalue()
    assert path.exists()


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_store_pending_stores_what_still_matches_and_leaves_the_rest(demo_db):
    nomic = keep_under_lock(demo_db, RunOptions(downsample=10, models=("Nomic",), device="cpu"))
    mpnet = keep_under_lock(demo_db, RunOptions(downsample=10, models=("STSBMpnet",),
                                                device="cpu"))
    set_vectors(demo_db, "STSBMpnet", vec(768, 0.5), 1, 0, 10)  # one selected row changed
    check = run("cluster", demo_db, "--check")
    assert check.exit_code == 0 and check.output.splitlines()[-1] == (
        f"2 result(s) kept by an earlier run, stored by this run if they match it: {nomic}, "
        f"{mpnet}")
    res = run("store-pending", demo_db)
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    rid = pending.load(mpnet).result_id
    assert any(line.startswith("Nomic: stored: result ") and str(nomic) in line for line in lines)
    assert (f"STSBMpnet: left: its 300 rows changed since it was computed (now 300 rows with "
            f"another fingerprint); cluster again ({mpnet})") in lines
    assert lines[-1] == "1 stored, 1 left"
    assert not nomic.exists() and mpnet.exists()
    assert raw(demo_db, "SELECT embedding_model FROM clusteringresult") == [("Nomic",)]
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult WHERE id = ?", rid) == [(0,)]
    assert consistent(demo_db)
    again = run("store-pending", demo_db)
    assert again.exit_code == 1 and again.output.splitlines()[-1] == "0 stored, 1 left"


def test_lock_holders_are_found_in_proc_locks(tmp_path):
    from gpu_cluster import lockinfo

    db = tmp_path / "x.sqlite"
    db.write_bytes(b"")
    shm = tmp_path / "x.sqlite-shm"
    shm.write_bytes(b"")
    key = lockinfo._file_key(db)
    shm_key = lockinfo._file_key(shm)
    text = "\n".join([
        f"1: POSIX  ADVISORY  READ 111 {key} 1073741826 1073742335",  # a reader: not a holder
        f"2: POSIX  ADVISORY  WRITE 222 {shm_key} 120 120",  # WAL's writer lock
        f"3: POSIX  ADVISORY  WRITE 333 {key} 1073741824 1073741824",  # rollback journal
        f"4: -> POSIX  ADVISORY  WRITE 444 {key} 1073741824 1073741824",  # a waiter
        "5: POSIX  ADVISORY  WRITE 555 00:00:1 0 EOF",  # another file
        f"6: POSIX  ADVISORY  WRITE {os.getpid()} {key} 0 EOF",  # ourselves
    ])
    assert lockinfo.write_lock_holders(db, text) == [222, 333]
    assert lockinfo.describe_process(os.getpid()).startswith(f"PID {os.getpid()}: ")


def test_a_kept_result_whose_write_did_commit_is_removed_not_stored_twice(demo_db, gc_log):
    path = keep_under_lock(demo_db, RunOptions(downsample=10, models=("Nomic",), device="cpu"))
    copy = path.read_bytes()
    stored = pipeline.store_kept_results(str(demo_db))
    assert [o.status for o in stored] == ["stored"] and not path.exists()

    def as_if_stopped_right_after_its_commit():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(copy)

    as_if_stopped_right_after_its_commit()
    summary = cluster_database(str(demo_db), RunOptions(downsample=10, models=("Nomic",),
                                                        device="cpu"), FAST)
    assert summary.outcomes[0].status == "clustered" and not path.exists()
    assert f"Nomic: the result kept in {path} is already stored as result " in gc_log.getvalue()
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(2,)]  # one new fit
    as_if_stopped_right_after_its_commit()
    res = run("store-pending", demo_db)
    assert res.exit_code == 0 and "Nomic: stored: already, as result " in res.output, res.output
    assert not path.exists()
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(2,)]
