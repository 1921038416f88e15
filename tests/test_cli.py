"""The command line: one clear line and a non-zero exit for each expected failure."""

import os
import re
import signal
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gpu_cluster.cli import main
from helpers import raw


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_missing_file_is_an_error_and_is_not_created(tmp_path):
    target = tmp_path / "nope.sqlite"
    for cmd in ("cluster", "plan", "list", "status"):
        res = run(cmd, target)
        assert res.exit_code == 2
        assert res.output.strip() == f"gpu-cluster: error: database file not found: {target} (nothing was created)"
        assert not target.exists()
    res = run("cluster", f"sqlite:///{target}")
    assert res.exit_code == 2 and "database file not found" in res.output and not target.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), r"is a directory, not a SQLite database file"),
    (lambda p: p.write_text("hello"), r"is not a SQLite database \(wrong file header\)"),
])
def test_not_a_database(tmp_path, make, message):
    target = tmp_path / "x.sqlite"
    make(target)
    res = run("cluster", target)
    assert res.exit_code == 2
    assert re.search(message, res.output) and res.output.count("\n") == 1


def test_sqlite_without_panic_tables(tmp_path):
    target = tmp_path / "empty.sqlite"
    sqlite3.connect(target).execute("CREATE TABLE t (x)").connection.close()
    res = run("plan", target)
    assert res.exit_code == 2
    assert "is not a panic-tda database: missing invocation, embedding, clusteringresult, embeddingcluster" in res.output


def test_read_only_file_refused_before_work(demo_db, monkeypatch):
    # root can write a 0444 file, so pretend the permission check says no.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(demo_db)
                        and mode == os.W_OK else real_access(p, mode))
    res = run("cluster", demo_db, "-d", 10)
    assert res.exit_code == 2 and "is read-only; results cannot be written" in res.output
    assert run("plan", demo_db, "-d", 10).exit_code == 0  # reading needs no write access


def test_unknown_driver_url():
    res = run("plan", "nosuchdb://user@host/db")
    assert res.exit_code == 2
    assert res.output.startswith("gpu-cluster: error: cannot use database URL nosuchdb://")


@pytest.mark.parametrize("args, message", [
    (["-d", "0"], r"--downsample 0: must be an integer >= 1"),
    (["--epsilon", "-1"], r"--epsilon -1.0: must be a finite number >= 0"),
    (["--min-cluster-size", "1"], r"--min-cluster-size 1: must be an integer >= 2"),
    (["--batch-size", "0"], r"--batch-size 0: must be an integer from 1 to 1,000,000"),
    (["--algorithm", "magic", "--device", "cpu"], r"no algorithm 'magic' on the cpu"),
])
def test_bad_parameters(demo_db, args, message):
    res = run("cluster", demo_db, *args)
    assert res.exit_code == 3, res.output
    assert re.search(message, res.output)
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]


def test_delete_refuses_without_yes(demo_db):
    res = run("delete", demo_db, "--model", "Nomic")
    assert res.exit_code == 2 and "refusing to delete without --yes" in res.output


def test_delete_unknown_result(demo_db):
    res = run("delete", demo_db, "--result", "0" * 32, "--yes")
    assert res.exit_code == 3 and f"no clustering result with id {'0' * 32}" in res.output


def test_delete_needs_model_or_result(demo_db):
    res = run("delete", demo_db, "--yes")
    assert res.exit_code == 3 and "delete needs exactly one of --model or --result" in res.output


def test_cluster_list_status_delete(demo_db):
    res = run("cluster", demo_db, "-d", 10, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "Dummy: skipped: only 1 usable vector(s) selected" in res.output
    assert "done: 3 clustered, 1 skipped, 0 failed" in res.output
    listed = run("list", demo_db)
    assert listed.exit_code == 0 and "3 result(s)" in listed.output
    assert all(m in listed.output for m in ("Nomic", "STSBMpnet", "STSBRoberta"))
    status = run("status", demo_db)
    assert status.exit_code == 0 and status.output.count("\n") == 3
    deleted = run("delete", demo_db, "--model", "Nomic", "--yes")
    assert deleted.exit_code == 0 and "deleted 1 clustering result(s)" in deleted.output
    assert "Nomic" not in run("status", demo_db).output


def test_plan_output(demo_db):
    res = run("plan", demo_db, "-d", 100, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "Nomic: embeddings=3000 selected=100 dim=768" in res.output
    assert "rule: TEXT invocations, position = (sequence_number - 1) / 2, keep position % 100 == 0" in res.output
    assert "params: min_cluster_size=2 min_samples=2 epsilon=0.4" in res.output


def test_demo_db_refuses_existing_path(demo_db):
    res = run("demo-db", demo_db)
    assert res.exit_code == 3 and "already exists" in res.output




def test_help_flags_and_untruncated_command_descriptions():
    short, long_ = run("-h"), run("--help")
    assert short.exit_code == 0 and short.output == long_.output
    commands = long_.output.split("Commands:")[1]
    assert "..." not in commands
    for name in ("cluster", "delete", "demo-db", "list", "plan", "status", "store-pending"):
        assert re.search(rf"^  {name} +\S", commands, re.M), commands
    assert run("cluster", "-h").output == run("cluster", "--help").output
    demo = run("demo-db", "-h").output
    for option in ("--text-invocations", "--dim", "--seed"):
        line = next(line for line in demo.splitlines() if line.strip().startswith(option))
        assert len(line.split()) > 2, f"{option} has no help text"


def test_cpu_fallback_replace_and_identical_results_are_each_said_once(demo_db):
    first = run("cluster", demo_db, "-d", 10, "--model", "Nomic")  # --device auto
    assert first.exit_code == 0, first.output
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert first.output.count("fell back to the CPU") == 1, first.output
    rid = re.search(r"result=([0-9a-f]{32})", first.output).group(1)
    second = run("cluster", demo_db, "-d", 10, "--model", "Nomic")
    assert (f"Nomic: the database already holds 1 result(s) of the same rows and parameters: "
            f"{rid} (") in second.output
    assert "this run stores another identical one; --replace keeps only the newest" in second.output
    rid2 = re.search(r"result=([0-9a-f]{32})", second.output).group(1)
    third = run("cluster", demo_db, "-d", 10, "--model", "Nomic", "--replace")
    assert "--replace deletes them when this one is stored" in third.output
    assert f"Nomic: --replace deleted 2 earlier result(s): {rid}, {rid2}" in third.output
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(1,)]
    other = run("cluster", demo_db, "-d", 10, "--model", "Nomic", "--epsilon", "0.3")
    assert "already holds" not in other.output  # other parameters: not identical


def test_sigint_is_logged_like_sigterm(demo_db):
    proc = subprocess.Popen([sys.executable, "-c", "from gpu_cluster.cli import main; main()",
                             "cluster", str(demo_db), "-d", "2", "--device", "cpu",
                             "--model", "Nomic", "--heartbeat", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Nomic: cluster: started" in line:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    log = "".join(lines)
    assert "received SIGINT: stopping; the model in progress is stored whole or not at all" in log
    assert log.endswith("gpu-cluster: interrupted by SIGINT\n")


def test_unknown_names_are_errors_with_one_exit_code(demo_db):
    model = run("delete", demo_db, "--model", "NoSuch", "--yes")
    result = run("delete", demo_db, "--result", "0" * 32, "--yes")
    cluster = run("cluster", demo_db, "--model", "NoSuch", "-d", 10)
    assert model.exit_code == result.exit_code == cluster.exit_code == 3
    assert model.output == ("gpu-cluster: error: no clustering results of model 'NoSuch' "
                            "(models with results: none)\n")
    assert cluster.output.splitlines()[-1] == (
        "gpu-cluster: error: no embeddings of model 'NoSuch' in this database; its models: "
        "Dummy (5 embeddings), Nomic (3,000 embeddings), STSBMpnet (3,000 embeddings), "
        "STSBRoberta (3,000 embeddings)")
    assert "blob not 4*0 bytes" not in cluster.output


def test_demo_db_in_a_missing_folder_is_one_line(tmp_path):
    res = run("demo-db", tmp_path / "no" / "dir" / "x.sqlite")
    assert res.exit_code == 2
    assert res.output == (f"gpu-cluster: error: cannot create {tmp_path}/no/dir/x.sqlite: "
                          f"folder {tmp_path}/no/dir does not exist\n")


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_a_reporter_refuses_a_heartbeat_that_would_spin(seconds):
    from gpu_cluster.errors import ParameterError
    from gpu_cluster.progress import Reporter

    with pytest.raises(ParameterError, match=r"--heartbeat .*: must be a number of seconds > 0"):
        Reporter(heartbeat_s=seconds)
