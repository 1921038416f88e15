"""perform-clustering.sh under stress: two launches at once, and the summary line that
ends every log (completed, failed, interrupted)."""

import os
import signal
import subprocess

import pytest

from test_perform_clustering import GPU_CLUSTER, SCRIPT, log_path, start, wait_finished, wait_for

pytestmark = pytest.mark.skipif(not GPU_CLUSTER.exists(), reason="gpu-cluster not installed beside python")


def test_two_launches_at_once_start_one_run(demo_db, tmp_path):
    env = {**os.environ, "GPU_CLUSTER": str(GPU_CLUSTER), "LOG_DIR": str(tmp_path / "logs")}
    args = ["bash", str(SCRIPT), str(demo_db), "--model", "Nomic", "-d", "10", "--device", "cpu"]
    procs = [subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    started = [o for o in outs if o[2] == 0]
    refused = [o for o in outs if o[2] == 1]
    assert len(started) == 1 and len(refused) == 1, outs
    assert "a run is already in progress" in refused[0][1]
    text = wait_finished(tmp_path / log_path(started[0][0]))
    assert "summary: done: 1 clustered, 0 skipped, 0 failed" in text
    assert len(list((tmp_path / "logs").glob("clustering-*.log"))) == 1


def test_summary_line_of_a_failed_and_an_interrupted_run(demo_db, tmp_path):
    missing = tmp_path / "missing.sqlite"
    res = start(tmp_path, missing, "-d", "10")
    text = wait_finished(tmp_path / log_path(res.stdout))
    assert text.splitlines()[-2].endswith(
        f"perform-clustering: summary: gpu-cluster: error: database file not found: {missing} "
        "(nothing was created)")
    assert text.rstrip().endswith("finished with exit status 2")
    res = start(tmp_path, demo_db, "--model", "Nomic", "-d", "10", "--device", "cpu")
    log = tmp_path / log_path(res.stdout)
    wait_for(log, "Nomic: cluster: started")
    os.kill(int((tmp_path / "logs" / "clustering.pid").read_text()), signal.SIGTERM)
    text = wait_finished(log)
    assert text.splitlines()[-2].endswith(
        "perform-clustering: summary: gpu-cluster: interrupted by SIGTERM (interrupted during "
        "Nomic: cluster; 0 model(s) already stored)")
    assert text.rstrip().endswith("finished with exit status 143")
