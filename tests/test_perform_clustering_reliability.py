"""perform-clustering.sh under stress: two launches at once, and the summary line that
ends every log (completed, failed, interrupted)."""

import os
import signal
import subprocess

import pytest

from test_perform_clustering import GPU_CLUSTER, SCRIPT, log_path, start, wait_finished, wait_for

pytestmark = [pytest.mark.skipif(not GPU_CLUSTER.exists(), reason="gpu-cluster not installed beside python"),
              pytest.mark.slow]  # real launches of perform-clustering.sh


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
    # A run that starts and then fails its model (a memory budget nothing fits in).
    res = start(tmp_path, demo_db, "--model", "Nomic", "-d", "10", "--device", "cpu",
                "--memory-budget", "1KiB")
    text = wait_finished(tmp_path / log_path(res.stdout))
    assert text.splitlines()[-2].endswith(
        "perform-clustering: summary: done: 0 clustered, 0 skipped, 1 failed")
    assert text.rstrip().endswith("finished with exit status 1")
    # The reference backend's fit of 1,500 rows lasts ~1 s (knn's ~0.05 s): the signal
    # sent as the fit starts lands inside it.
    res = start(tmp_path, demo_db, "--model", "Nomic", "-d", "2", "--device", "cpu",
                "--algorithm", "reference")
    log = tmp_path / log_path(res.stdout)
    wait_for(log, "Nomic: cluster: started")
    os.kill(int((tmp_path / "logs" / "clustering.pid").read_text()), signal.SIGTERM)
    text = wait_finished(log)
    assert text.splitlines()[-2].endswith(
        "perform-clustering: summary: gpu-cluster: interrupted by SIGTERM (interrupted during "
        "Nomic: cluster; 0 model(s) already stored)")
    assert text.rstrip().endswith("finished with exit status 143")


@pytest.mark.parametrize("args, rc, message", [
    (["missing.sqlite"], 2, "gpu-cluster: error: database file not found: missing.sqlite "
                            "(nothing was created)"),
    (["{db}", "--downsampel", "2"], 2, "Error: No such option '--downsampel'. (Did you mean "
                                       "one of: '--downsample', '--min-samples'?)"),
    (["{db}", "--model", "NoSuchModel"], 3, "gpu-cluster: error: no embeddings of model "
                                            "'NoSuchModel' in this database; its models: "),
    (["{db}", "--heartbeat", "0"], 3, "gpu-cluster: error: --heartbeat 0.0: must be a number "
                                      "of seconds > 0"),
])
def test_a_run_that_cannot_start_says_why_on_the_terminal(demo_db, tmp_path, args, rc, message):
    res = start(tmp_path, *[a.format(db=demo_db) for a in args])
    assert res.returncode == rc, (res.stdout, res.stderr)
    assert message in res.stderr
    assert res.stderr.rstrip().endswith(
        f"perform-clustering: not started (the check above failed with exit status {rc})")
    assert "started gpu-cluster" not in res.stdout and "Traceback" not in res.stderr
    logs = tmp_path / "logs"
    assert not logs.exists() or not list(logs.iterdir())  # no log, no PID file


def test_help_works(tmp_path):
    for flag in ("--help", "-h"):
        res = start(tmp_path, flag)
        assert res.returncode == 0 and res.stderr == ""
        assert res.stdout.startswith("Start `gpu-cluster cluster` under nohup")
        assert "cluster options:" in res.stdout and "--lock-timeout FLOAT" in res.stdout
    res = start(tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("Start `gpu-cluster cluster`")
