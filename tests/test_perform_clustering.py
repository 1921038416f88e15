"""perform-clustering.sh: nohup run, log file with heartbeats, PID file, refusals."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perform-clustering.sh"
GPU_CLUSTER = Path(sys.executable).with_name("gpu-cluster")

pytestmark = [pytest.mark.skipif(not GPU_CLUSTER.exists(), reason="gpu-cluster not installed beside python"),
              pytest.mark.slow]  # real launches of perform-clustering.sh


def start(tmp_path, *args):
    env = {**os.environ, "GPU_CLUSTER": str(GPU_CLUSTER), "LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def wait_finished(log: Path, timeout=120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "perform-clustering: finished with exit status" in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"run did not finish; log so far:\n{log.read_text()}")


def wait_for(log: Path, needle: str, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{log.read_text()}"
        time.sleep(0.1)


def log_path(out: str) -> Path:
    return Path(next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith("log:")))


def test_run_logs_heartbeats_and_exit_status(demo_db, tmp_path):
    # The reference backend: the knn fit of 1,500 rows ends in ~0.05 s, before any heartbeat;
    # scikit-learn's takes ~1 s (with its import), so heartbeats every 0.05 s must appear.
    res = start(tmp_path, demo_db, "--model", "Nomic", "-d", "2", "--device", "cpu",
                "--algorithm", "reference", "--heartbeat", "0.05")
    assert res.returncode == 0, res.stderr
    assert "follow:  tail -f" in res.stdout and "stop:    kill" in res.stdout
    text = wait_finished(tmp_path / log_path(res.stdout))
    beats = re.findall(r"INFO Nomic: (\w+): (?:still running, |[\d,]+/[\d,]+ .*)elapsed", text)
    assert "cluster" in beats, text  # heartbeat lines during the fit
    assert "Nomic: clustered n=1500" in text
    assert "done: 1 clustered, 0 skipped, 0 failed" in text
    assert text.rstrip().endswith("finished with exit status 0")
    assert not (tmp_path / "logs" / "clustering.pid").exists()


def test_refuses_second_run_then_stop_is_recorded(demo_db, tmp_path):
    first = start(tmp_path, demo_db, "-d", "1", "--device", "cpu", "--heartbeat", "0.5")
    assert first.returncode == 0, first.stderr
    second = start(tmp_path, demo_db, "-d", "1", "--device", "cpu")
    assert second.returncode == 1 and "a run is already in progress" in second.stderr
    pid = int((tmp_path / "logs" / "clustering.pid").read_text())
    log = tmp_path / log_path(first.stdout)
    wait_for(log, "cluster: started")
    os.kill(pid, signal.SIGTERM)
    text = wait_finished(log)
    assert "received SIGTERM" in text and "interrupted by SIGTERM" in text
    assert "finished with exit status 143" in text


def test_stale_pid_file_is_replaced(demo_db, tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "clustering.pid").write_text("999999\n")
    res = start(tmp_path, demo_db, "--model", "Dummy", "-d", "10", "--device", "cpu")
    assert res.returncode == 0 and "removing stale PID file" in res.stdout
    text = wait_finished(tmp_path / log_path(res.stdout))
    assert "Dummy: skipped" in text and "exit status 0" in text
