"""No tracebacks, ever: every command against every bad input of the reliability matrix
gives one clear line (or a normal answer), never a Python traceback."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpu_cluster.cli import main
from helpers import raw
from test_reliability import lock_held, rollback_journal

pytestmark = pytest.mark.slow  # every command against every bad database, as subprocesses


def corrupt(path: Path, demo: Path, keep: int) -> None:
    """The demo's first ``keep`` bytes intact, the rest overwritten."""
    shutil.copy(demo, path)
    size = path.stat().st_size
    keep = keep if keep > 0 else size + keep
    with open(path, "r+b") as fh:
        fh.seek(keep)
        fh.write(b"\xde\xad\xbe\xef" * ((size - keep) // 4))


def bad_json(path: Path, demo: Path) -> None:
    """A stored result whose parameters/clusters are not JSON (a foreign writer's row)."""
    shutil.copy(demo, path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO clusteringresult VALUES (?, '2025-01-01 00:00:00.000000', "
                     "'Nomic', 'hdbscan', '{not json', 'nor this')", ("ab" * 16,))


def bad_blobs(path: Path, demo: Path) -> None:
    """Every vector of every model NULL or of a wrong length."""
    shutil.copy(demo, path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE embedding SET vector = CASE WHEN rowid % 2 THEN NULL ELSE x'0011' END")


def no_tables(path: Path, demo: Path) -> None:
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()


# name -> how to make the database argument (a path or URL) from (tmp_path, demo copy)
BAD_DATABASES = {
    "missing file": lambda d, demo: str(d / "missing.sqlite"),
    "directory": lambda d, demo: (d / "dir.sqlite").mkdir() or str(d / "dir.sqlite"),
    "text file": lambda d, demo: (d / "t.sqlite").write_text("hello") and str(d / "t.sqlite"),
    "empty file": lambda d, demo: (d / "e.sqlite").touch() or str(d / "e.sqlite"),
    "no panic-tda tables": lambda d, demo: no_tables(d / "n.sqlite", demo) or str(d / "n.sqlite"),
    "corrupt after page 1": lambda d, demo: corrupt(d / "c.sqlite", demo, 4096) or str(d / "c.sqlite"),
    "corrupt after page 4": lambda d, demo: corrupt(d / "c.sqlite", demo, 4 * 4096) or str(d / "c.sqlite"),
    "corrupt last pages": lambda d, demo: corrupt(d / "c.sqlite", demo, -8 * 4096) or str(d / "c.sqlite"),
    "non-JSON stored result": lambda d, demo: bad_json(d / "j.sqlite", demo) or str(d / "j.sqlite"),
    "only bad vectors": lambda d, demo: bad_blobs(d / "b.sqlite", demo) or str(d / "b.sqlite"),
    "unknown URL driver": lambda d, demo: "nosuchdb://user@host/db",
    "unparsable URL": lambda d, demo: "postgresql://user@host:notaport/db",
    "in-memory URL": lambda d, demo: "sqlite://",
    "nothing listening": lambda d, demo: "postgresql+psycopg://nobody@127.0.0.1:9/none",
    "missing folder": lambda d, demo: str(d / "no" / "such" / "x.sqlite"),
}

# name -> arguments after the database; "{db}" is replaced
COMMANDS = {
    "cluster": ["cluster", "{db}", "-d", "10", "--device", "cpu", "--lock-timeout", "0.3"],
    "cluster --check": ["cluster", "{db}", "--check", "--lock-timeout", "0.3"],
    "plan": ["plan", "{db}", "-d", "10", "--lock-timeout", "0.3"],
    "list": ["list", "{db}", "--lock-timeout", "0.3"],
    "status": ["status", "{db}", "--lock-timeout", "0.3"],
    "delete --model": ["delete", "{db}", "--model", "Nomic", "--yes", "--lock-timeout", "0.3"],
    "delete --result": ["delete", "{db}", "--result", "ab" * 16, "--yes", "--lock-timeout", "0.3"],
    "store-pending": ["store-pending", "{db}", "--lock-timeout", "0.3"],
    "demo-db": ["demo-db", "{db}", "--text-invocations", "20"],
}

# bad options, run against a good database
BAD_OPTIONS = {
    "unknown model": ["--model", "NoSuchModel"],
    "downsample 0": ["-d", "0"],
    "epsilon nan": ["--epsilon", "nan"],
    "batch size 0": ["--batch-size", "0"],
    "lock timeout -1": ["--lock-timeout", "-1"],
    "heartbeat 0": ["--heartbeat", "0"],
    "memory budget nonsense": ["--memory-budget", "lots"],
    "memory budget 1KiB": ["--memory-budget", "1KiB"],
    "min samples 0": ["--min-samples", "0"],
    "min cluster size 1": ["--min-cluster-size", "1"],
    "algorithm magic": ["--algorithm", "magic"],
    "gpu without one": ["--device", "gpu"],
    "misspelt option": ["--downsampel", "2"],
    "no --yes": None,  # delete only
}
OPTION_COMMANDS = {  # which commands take which bad options
    "cluster": ["cluster", "{db}", "--device", "cpu"],
    "cluster --check": ["cluster", "{db}", "--check", "--device", "cpu"],
    "plan": ["plan", "{db}", "--device", "cpu"],
}


def invoke(args: list[str]):
    res = CliRunner().invoke(main, args)
    crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
    return res, crashed


def check(res, crashed, label: str) -> None:
    assert not crashed, f"{label}: uncaught {res.exception!r}\n{res.output}"
    assert "Traceback" not in res.output, f"{label}:\n{res.output}"


def test_every_command_against_every_bad_database(demo_db, tmp_path, capsys):
    pairs, errors = 0, set()
    for i, (bad, make) in enumerate(BAD_DATABASES.items()):
        for j, (cmd, template) in enumerate(COMMANDS.items()):
            case = tmp_path / f"case{i}-{j}"
            case.mkdir()
            db = make(case, demo_db)
            if cmd == "demo-db" and "://" in db:
                continue  # demo-db takes a file path only
            res, crashed = invoke([a.replace("{db}", db) for a in template])
            check(res, crashed, f"{cmd} × {bad}")
            if res.exit_code:
                errors.add(res.exit_code)
            pairs += 1
    with lock_held(rollback_database(demo_db, tmp_path), "BEGIN EXCLUSIVE") as _:
        for cmd, template in COMMANDS.items():
            if cmd != "demo-db":
                res, crashed = invoke([a.replace("{db}", str(tmp_path / "rj.sqlite")) for a in template])
                check(res, crashed, f"{cmd} × locked")
                assert res.exit_code != 0, f"{cmd} × locked: {res.output}"
                pairs += 1
    for bad, opts in BAD_OPTIONS.items():
        commands = {"delete": ["delete", "{db}", "--model", "Nomic"]} if opts is None else OPTION_COMMANDS
        for cmd, template in commands.items():
            res, crashed = invoke([a.replace("{db}", str(demo_db)) for a in template + (opts or [])])
            check(res, crashed, f"{cmd} × {bad}")
            pairs += 1
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    with capsys.disabled():
        print(f"\n{pairs} bad-input × command pairs, no traceback; exit codes seen: {sorted(errors)}")
    assert pairs >= 150


def rollback_database(demo_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "rj.sqlite"
    shutil.copy(demo_db, path)
    rollback_journal(path)
    return path


# --- a WAL database in a folder the user cannot write -----------------------------------

READER = [sys.executable, "-c", "from gpu_cluster.cli import main; main()"]


SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_user(command: list[str]) -> list[str]:
    """``command`` run by a user who cannot write a root-owned folder: as root (the
    tests' usual user) it runs as nobody (util-linux's setpriv); otherwise as is."""
    return SETPRIV + command if os.geteuid() == 0 else command


@pytest.fixture
def unwritable_folder(demo_template):
    """A folder the command's user cannot write, holding a WAL-mode copy of the demo
    (no -wal/-shm beside it), results stored in it beforehand."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-cluster-ro-", dir="/tmp"))
    db = folder / "demo.sqlite"
    shutil.copy(demo_template, db)
    res = CliRunner().invoke(main, ["cluster", str(db), "-d", "10", "--device", "cpu",
                                    "--model", "Nomic"])
    assert res.exit_code == 0, res.output
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for leftover in ("demo.sqlite-wal", "demo.sqlite-shm"):
        (folder / leftover).unlink(missing_ok=True)
    os.chmod(db, 0o644)
    os.chmod(folder, 0o755 if os.geteuid() == 0 else 0o555)
    try:
        probe = subprocess.run(as_user([sys.executable, "-c", "import gpu_cluster"]),
                               capture_output=True)
    except FileNotFoundError:  # no setpriv
        probe = None
    if probe is None or probe.returncode != 0:
        shutil.rmtree(folder)
        pytest.skip("the unprivileged user cannot run this Python")
    yield db
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)


def test_read_commands_on_a_wal_file_in_an_unwritable_folder(unwritable_folder):
    """Really run as a user without write access (nobody, when the tests run as root):
    SQLite cannot create the -shm file, so the file is read as immutable."""
    db = unwritable_folder
    assert db.read_bytes()[18:20] == b"\x02\x02"  # WAL mode (read as bytes: opening it as
    # root here would create the -wal/-shm files this test is about)
    outputs = {}
    for cmd in (["list"], ["status"], ["plan", "-d", "10", "--device", "cpu"]):
        res = subprocess.run(as_user(READER + cmd + [str(db)]), capture_output=True, text=True,
                             cwd=db.parent)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip() == (f"{db}: its folder is not writable, so it is read as an "
                                      "immutable file (it is in WAL mode and has no pending "
                                      "-wal changes)")
        outputs[cmd[0]] = res.stdout
    assert "1 result(s)" in outputs["list"] and "Nomic" in outputs["status"]
    assert "Nomic: embeddings=3000 selected=300 dim=768" in outputs["plan"]
    assert sorted(p.name for p in db.parent.iterdir()) == ["demo.sqlite"]  # nothing created
    res = subprocess.run(as_user(READER + ["cluster", str(db)]), capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("gpu-cluster: error: ")


def test_pending_wal_changes_in_an_unwritable_folder_are_one_clear_line(unwritable_folder):
    db = unwritable_folder
    wal = db.with_name("demo.sqlite-wal")
    os.chmod(db.parent, 0o755)
    writer = sqlite3.connect(db, isolation_level=None)  # leaves a -wal with a commit in it
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE run SET seed = seed + 1")
    shutil.copy(wal, db.parent / "saved-wal")
    writer.close()  # checkpoints and removes -wal/-shm; put the -wal back alone
    os.replace(db.parent / "saved-wal", wal)
    os.chmod(wal, 0o644)
    os.chmod(db.parent, 0o755 if os.geteuid() == 0 else 0o555)
    res = subprocess.run(as_user(READER + ["status", str(db)]), capture_output=True, text=True)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr == (f"gpu-cluster: error: cannot read {db}: it is in WAL mode with "
                          "changes still in demo.sqlite-wal, and its folder is not writable, so "
                          "SQLite cannot open it; ask its owner to checkpoint it (sqlite3 "
                          f"{db} 'PRAGMA wal_checkpoint(TRUNCATE)') or copy it somewhere "
                          "writable\n")
