"""Scale-out on Dask with the real engine: local clusters of worker processes, a
`dask scheduler` + `dask worker` pair started here, a worker killed during a fit, the
driver interrupted, and the GPU branch (LocalCUDACluster, the GPU resource) on the CPU
with the stand-in device. `-m gpu` runs it on real GPUs."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

from gpu_cluster import pending, pipeline, scaleout  # noqa: E402
from gpu_cluster.device import gpu_status  # noqa: E402
from gpu_cluster.errors import ParameterError, ScaleOutError  # noqa: E402
from gpu_cluster.pipeline import RunOptions, cluster_database  # noqa: E402
from gpu_cluster.scaleout import ScaleOut, cluster_database_on_dask  # noqa: E402
from helpers import raw  # noqa: E402
from test_gpu_pipeline_simulated import simulated_gpu  # noqa: E402,F401 (fixture)
from test_cuml_adapter import stand_in  # noqa: E402,F401 (fixture)
from test_interrupt import partial_results  # noqa: E402
from test_pending import OPTIONS as KEPT_OPTIONS, keep_under_lock  # noqa: E402

REAL = ("Nomic", "STSBMpnet", "STSBRoberta")
WORKER_LINE = re.compile(r"\[([0-9.]+):(\d+)\] (\w+): cluster: started")


def stored(path) -> dict[str, dict]:
    """model -> {embedding id: cluster id} of every stored result (one per model)."""
    out: dict[str, dict] = {}
    for rid, model in raw(path, "SELECT id, embedding_model FROM clusteringresult"):
        assert model not in out, f"{model} stored twice"
        out[model] = dict(raw(path, "SELECT embedding_id, cluster_id FROM embeddingcluster "
                                    "WHERE clustering_result_id = ?", rid))
    return out


def medoids(path) -> dict[str, list]:
    return {m: json.loads(p) for m, p in raw(path, "SELECT embedding_model, clusters "
                                                   "FROM clusteringresult")}


def test_local_cluster_of_two_processes_matches_the_in_process_run(demo_template, tmp_path):
    here, there = tmp_path / "here.sqlite", tmp_path / "there.sqlite"
    for p in (here, there):
        p.write_bytes(Path(demo_template).read_bytes())
    options = RunOptions(downsample=2, models=REAL)
    local = cluster_database(str(here), options)
    dask = cluster_database_on_dask(str(there), options, ScaleOut(workers=2))
    assert [(o.model, o.status) for o in dask.outcomes] == [(m, "clustered") for m in REAL]
    assert [o.n_clusters for o in dask.outcomes] == [o.n_clusters for o in local.outcomes]
    assert stored(there) == stored(here) and medoids(there) == medoids(here)
    workers = {json.loads(p)["dask_worker"] for (p,) in raw(there, "SELECT parameters FROM "
                                                               "clusteringresult")}
    assert len(workers) == 2  # both worker processes took models
    budget = {json.loads(p)["memory_plan"]["budget_bytes"] for (p,) in
              raw(there, "SELECT parameters FROM clusteringresult")}
    assert budget == {scaleout.worker_share(2).memory_budget}  # each plans with its share


@pytest.mark.slow
def test_a_kept_result_is_stored_by_the_driver_not_computed_again(demo_db):
    path = keep_under_lock(demo_db)
    kept = pending.load(path)
    summary = cluster_database_on_dask(str(demo_db), KEPT_OPTIONS, ScaleOut(workers=1))
    assert [(o.model, o.status) for o in summary.outcomes] == [("Nomic", "clustered"),
                                                               ("STSBMpnet", "clustered")]
    nomic = summary.outcomes[0]
    assert (nomic.result_id, nomic.n, nomic.n_clusters) == (
        kept.result_id, kept.labels.shape[0], kept.medoid_rows.shape[0])
    assert not path.exists() and sorted(stored(demo_db)) == ["Nomic", "STSBMpnet"]
    params = dict(raw(demo_db, "SELECT embedding_model, parameters FROM clusteringresult"))
    assert "dask_worker" not in json.loads(params["Nomic"])  # no task ran for it
    assert "dask_worker" in json.loads(params["STSBMpnet"])


@pytest.mark.slow
def test_a_run_without_the_options_never_imports_dask(demo_db):
    code = ("import sys; from gpu_cluster.cli import main; sys.argv = ['gpu-cluster', 'cluster', "
            f"{str(demo_db)!r}, '-d', '20', '-m', 'Nomic']\n"
            "try: main()\nexcept SystemExit as e: assert e.code == 0, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dask_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ScaleOutError, match=r"pip install 'gpu_cluster\[distributed\]'"):
        scaleout.require_dask()


def test_workers_and_scheduler_together_are_refused():
    with pytest.raises(ParameterError, match="give one of them"):
        ScaleOut(workers=2, scheduler="tcp://127.0.0.1:8786")


@pytest.mark.slow
def test_unreachable_scheduler_is_one_line_and_a_nonzero_exit(demo_db):
    done = subprocess.run([sys.executable, "-m", "gpu_cluster.cli", "cluster", str(demo_db),
                           "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "2"],
                          capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == ScaleOutError.exit_code
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["gpu-cluster: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9 "
                      "within 2s (OSError); is `dask scheduler` running there, and the address "
                      "right?"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    checked = subprocess.run([sys.executable, "-m", "gpu_cluster.cli", "cluster", str(demo_db),
                              "--check", "--scheduler", "tcp://127.0.0.1:9",
                              "--scheduler-timeout", "1"], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == ScaleOutError.exit_code
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["cluster", "--scheduler", "nonsense", "--scheduler-timeout", "1"],
     "gpu-cluster: error: --scheduler 'nonsense' is not a Dask scheduler address"),
    (["plan", "--workers", "0"], "gpu-cluster: error: --workers must be at least 1 (got 0)"),
    (["cluster", "--workers", "0"], "gpu-cluster: error: --workers must be at least 1 (got 0)"),
])
def test_bad_scale_out_options_are_one_line_not_a_traceback(demo_db, args, expected):
    command, *options = args
    done = subprocess.run([sys.executable, "-m", "gpu_cluster.cli", command, str(demo_db),
                           *options], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(expected), done.stderr


@pytest.mark.slow
def test_plan_with_workers_splits_the_budget(demo_db):
    done = subprocess.run([sys.executable, "-m", "gpu_cluster.cli", "plan", str(demo_db),
                           "--workers", "2", "--memory-budget", "8GiB", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    cores = max(1, (os.cpu_count() or 1) // 2)
    assert (f"dask: 2 worker process(es), each {cores} core(s) and a host memory budget of "
            f"4.0 GiB (of 8.0 GiB)") in out
    assert "  at once: Dummy, Nomic\n  then, as workers free up: STSBMpnet, STSBRoberta" in out
    assert out.count("of 4.0 GiB usable host memory") == 4


# ------------------------------------------------------------------ real processes


def run_cli(args, path, on_line=None, timeout=180):
    """Run `gpu-cluster cluster` with ``args``; call ``on_line(line, proc)`` per log line."""
    command = [sys.executable, "-m", "gpu_cluster.cli", "cluster", str(path), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if on_line is not None:
            on_line(line, proc)
    return proc.wait(timeout=timeout), "".join(lines)


def process_listening_on(root_pid: int, port: int) -> psutil.Process:
    """The descendant of ``root_pid`` with a TCP socket listening on ``port``."""
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            conns = child.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in conns):
            return child
    raise AssertionError(f"no process of {root_pid} listens on {port}")


def kill_worker_of(model: str, times: int):
    """An ``on_line`` that SIGKILLs the worker process fitting ``model``, ``times`` times."""
    killed = []

    def on_line(line, proc):
        m = WORKER_LINE.search(line)
        if m and m.group(3) == model and len(killed) < times:
            victim = process_listening_on(proc.pid, int(m.group(2)))
            victim.kill()
            killed.append(victim.pid)

    return on_line, killed


SLOW = ["--algorithm", "reference", "-m", "Nomic", "-m", "STSBMpnet", "--heartbeat", "2"]


def run_killing_nomics_worker(demo_db, times: int) -> tuple[int, str]:
    """Run the slow models on 2 workers, SIGKILLing Nomic's worker ``times`` times."""
    on_line, killed = kill_worker_of("Nomic", times=times)
    code, log = run_cli(["--workers", "2", *SLOW], demo_db, on_line)
    assert len(killed) == times, log
    return code, log


@pytest.mark.slow
def test_a_worker_killed_mid_fit_is_retried_and_every_model_stored_once(demo_db):
    code, log = run_killing_nomics_worker(demo_db, times=1)
    assert code == 0, log
    assert "Nomic: now on worker" in log and "the scheduler retries it" in log
    # the driver's heartbeat: which worker has which model, its stage, elapsed vs estimate
    assert re.search(r"dask: 2 model\(s\): [01]/2 models .*(Nomic|STSBMpnet) on 127\.0\.0\.1:\d+: "
                     r"cluster: elapsed [\d.]+s of ~[\d.]+s estimated", log), log
    results = stored(demo_db)
    assert sorted(results) == ["Nomic", "STSBMpnet"]  # stored() asserts: once each
    assert partial_results(demo_db) == 0


@pytest.mark.slow
def test_a_model_whose_worker_dies_twice_fails_while_the_others_go_on(demo_db):
    code, log = run_killing_nomics_worker(demo_db, times=2)
    assert code == 1, log
    assert re.search(r"Nomic: clustering failed: its worker died while running it, on every "
                     r"try the scheduler allows", log), log
    assert "Nomic: failed: its worker died" in log
    assert sorted(stored(demo_db)) == ["STSBMpnet"]
    assert partial_results(demo_db) == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_driver_interrupted_cancels_the_tasks_and_writes_nothing_partial(demo_db, signum):
    seen: list = []

    def on_line(line, proc):
        if WORKER_LINE.search(line) and not seen:
            seen.extend(proc_tree(proc.pid))
            proc.send_signal(signum)

    code, log = run_cli(["--workers", "2", *SLOW], demo_db, on_line)
    assert code == 128 + signum, log
    assert f"interrupted by {signal.Signals(signum).name}" in log
    assert raw(demo_db, "SELECT count(*) FROM clusteringresult") == [(0,)]
    assert partial_results(demo_db) == 0
    deadline = time.monotonic() + 15
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in seen):
        assert time.monotonic() < deadline, [p.pid for p in seen if p.is_running()]
        time.sleep(0.2)


def proc_tree(pid: int) -> list:
    return psutil.Process(pid).children(recursive=True)


@pytest.fixture
def dask_pair(tmp_path):
    """A `dask scheduler` and a `dask worker` (2 processes, 1 thread each), real processes."""
    dask = Path(sys.executable).parent / "dask"
    file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "error"}
    procs = [subprocess.Popen([str(dask), "scheduler", "--scheduler-file", str(file), "--port",
                               "0", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    deadline = time.monotonic() + 60
    while not file.exists() or not file.read_text().strip():
        assert time.monotonic() < deadline and procs[0].poll() is None, "no scheduler"
        time.sleep(0.1)
    address = json.loads(file.read_text())["address"]
    procs.append(subprocess.Popen([str(dask), "worker", "--scheduler-file", str(file),
                                   "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  cwd=tmp_path, start_new_session=True))
    with distributed.Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for p in reversed(procs):  # each in a session of its own: the nanny and its workers
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=20)


@pytest.mark.slow
def test_scheduler_address_of_a_running_dask_cluster(demo_template, dask_pair, tmp_path,
                                                      monkeypatch):
    here, there = tmp_path / "here.sqlite", tmp_path / "there.sqlite"
    for p in (here, there):
        p.write_bytes(Path(demo_template).read_bytes())
    monkeypatch.chdir(tmp_path)  # a relative path reaches the workers as an absolute one
    code, log = run_cli(["--scheduler", dask_pair, "-d", "2", *sum((["-m", m] for m in REAL), [])],
                        "there.sqlite")
    assert code == 0, log
    assert f"dask: connected to the scheduler at {dask_pair} (2 worker(s))" in log
    code, log = run_cli(["--check", "--scheduler", dask_pair], "there.sqlite")
    assert code == 0 and f"ok: the Dask scheduler at {dask_pair} answers, with 2 worker(s)" in log
    cluster_database(str(here), RunOptions(downsample=2, models=REAL))
    assert stored(there) == stored(here)


# ------------------------------------------------------------------ the GPU branch


class StandInCudaCluster:
    """dask_cuda's LocalCUDACluster as the run calls it, recording its arguments: a real
    LocalCluster of in-process workers (threads), so the stand-in GPU reaches them."""

    calls: list = []

    def __new__(cls, **kwargs):
        cls.calls.append(kwargs)
        return distributed.LocalCluster(processes=False, **kwargs)


def test_gpu_branch_one_worker_per_gpu_and_one_model_per_card(demo_db, simulated_gpu,  # noqa: F811
                                                              monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gpu_cluster")
    monkeypatch.setitem(sys.modules, "dask_cuda", _module(LocalCUDACluster=StandInCudaCluster))
    monkeypatch.setattr(scaleout, "gpu_count", lambda: 2)
    StandInCudaCluster.calls.clear()
    spans, lock = [], threading.Lock()
    compute = pipeline.compute_from_database

    def recorded(db, model, options, reporter=None, survey=None):
        start = time.monotonic()
        result = compute(db, model, options, reporter, survey)
        time.sleep(0.3)  # hold the card a little: a second model on it would overlap
        with lock:
            spans.append((distributed.get_worker().address, start, time.monotonic(), options.device))
        return result

    monkeypatch.setattr(pipeline, "compute_from_database", recorded)
    summary = cluster_database_on_dask(str(demo_db), RunOptions(downsample=10, device="auto",
                                                                models=REAL),
                                       ScaleOut(local_gpu=True))
    assert [o.status for o in summary.outcomes] == ["clustered"] * 3
    assert caplog.text.count("] Nomic: read: started") == 1  # forwarded once, not echoed
    assert StandInCudaCluster.calls == [{"n_workers": 2, "threads_per_worker": 1,
                                         "resources": {"GPU": 1}, "dashboard_address": ":0"}]
    assert {d for *_, d in spans} == {"gpu"} and len({w for w, *_ in spans}) == 2
    for worker in {w for w, *_ in spans}:
        mine = sorted((s, e) for w, s, e, _ in spans if w == worker)
        assert all(a[1] <= b[0] for a, b in zip(mine, mine[1:])), "two models shared a card"
    for (p,) in raw(demo_db, "SELECT parameters FROM clusteringresult"):
        p = json.loads(p)
        assert (p["backend"], p["device"], p["device_name"]) == ("cuml", "gpu", "Stand-in GPU")


def _module(**attrs):
    module = type(sys)("dask_cuda")
    module.__dict__.update(attrs)
    return module


def test_more_gpu_workers_than_gpus_is_refused(demo_db, simulated_gpu, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "dask_cuda", _module(LocalCUDACluster=StandInCudaCluster))
    monkeypatch.setattr(scaleout, "gpu_count", lambda: 1)
    with pytest.raises(ParameterError, match="only 1 GPU"):
        cluster_database_on_dask(str(demo_db), RunOptions(downsample=10, device="gpu"),
                                 ScaleOut(workers=2))


@pytest.mark.gpu
def test_local_cuda_cluster_on_real_gpus(demo_db):
    pytest.importorskip("cupy")
    pytest.importorskip("cuml")
    pytest.importorskip("dask_cuda")
    usable, why = gpu_status()
    if not usable:
        pytest.skip(why)
    summary = cluster_database_on_dask(str(demo_db), RunOptions(downsample=2, device="gpu",
                                                                models=REAL),
                                       ScaleOut(local_gpu=True))
    assert [o.status for o in summary.outcomes] == ["clustered"] * 3
    for (p,) in raw(demo_db, "SELECT parameters FROM clusteringresult"):
        p = json.loads(p)
        assert p["device"] == "gpu" and p["backend"] == "cuml" and p["dask_worker"]


def test_the_drivers_line_for_a_model_counts_time_since_the_workers_last_report():
    fit = {"stage": "Nomic: cluster", "elapsed": 20.0, "estimate_s": 60.0, "total": None}
    assert scaleout.stage_text("Nomic", fit, 5.0, 10.0) == "cluster: elapsed 25.0s of ~1m00s estimated"
    assert scaleout.stage_text("Nomic", fit, 45.0, 10.0) == (
        "cluster: elapsed 20.0s of ~1m00s estimated (no report from the worker for 45.0s)")
    read = {"stage": "Nomic: read", "elapsed": 2.0, "done": 1500, "total": 3000, "unit": "rows"}
    assert scaleout.stage_text("Nomic", read, 1.0, 10.0) == "read: 1,500/3,000 rows, elapsed 3.0s"
    between = {"stage": None, "finished": "Nomic: read", "elapsed": 3.0}
    assert scaleout.stage_text("Nomic", between, 0.1, 10.0) == "read finished, next stage starting"
