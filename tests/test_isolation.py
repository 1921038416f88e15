"""Fits run in a child process: heartbeats keep going, crashes fail one model only."""

import ctypes
import faulthandler
import logging
import os
import types

import numpy as np
import pytest

from gpu_cluster import isolation
from gpu_cluster.labels import Labels
from gpu_cluster.params import HdbscanParams
from gpu_cluster.progress import Reporter

P = HdbscanParams(2, 2, 0.4, True)


def fake_backend(fit, device="cpu"):
    mod = types.ModuleType("fake")
    mod.NAME, mod.DEVICE, mod.fit = "fake", device, fit
    return mod


def gil_holding_fit(x, params):
    logging.getLogger("gpu_cluster").info("fit: native call starts")
    ctypes.PyDLL(None).sleep(2)  # a native call that keeps the GIL for 2 s
    logging.getLogger("gpu_cluster").info("fit: native call ended")
    return Labels(np.zeros(len(x), np.int64), np.ones(len(x)), {"pid": os.getpid()})


def log_during(fit_function, caplog):
    """The fit's result and the log's messages, in order, around a stage heartbeating
    every 0.2 s (the fit's own lines are only there when it runs in this process)."""
    caplog.set_level(logging.INFO, logger="gpu_cluster")
    with Reporter(heartbeat_s=0.2).stage("cluster", unit="fit"):
        result = fit_function()
    return result, [r.getMessage() for r in caplog.records]


def heartbeats_between(messages, first, last):
    """Heartbeat lines after the first message starting with ``first`` and before the
    first one after it starting with ``last``."""
    start = next(i for i, m in enumerate(messages) if m.startswith(first))
    end = next(i for i, m in enumerate(messages) if i > start and m.startswith(last))
    return sum("still running" in m for m in messages[start:end])


def test_child_fit_keeps_heartbeats_going(caplog):
    backend = fake_backend(gil_holding_fit)
    result, messages = log_during(lambda: isolation.fit(backend, np.zeros((5, 3)), P), caplog)
    assert result.labels.tolist() == [0] * 5 and result.details["pid"] != os.getpid()
    # The parent keeps logging while the child holds its own GIL (~10 lines expected;
    # only "some" is asserted, which holds however loaded the machine is).
    assert heartbeats_between(messages, "cluster: started", "cluster: finished") >= 1


@pytest.mark.slow
def test_thread_fit_would_starve_them(caplog):
    """Why the child exists: the same fit in a thread silences the heartbeat while its
    native call runs (one line may slip in between the fit's log line and the call)."""
    backend = fake_backend(gil_holding_fit)
    _, messages = log_during(
        lambda: isolation.fit_in_thread(backend, np.zeros((5, 3)), P), caplog)
    assert heartbeats_between(messages, "fit: native call starts", "fit: native call ended") <= 1


def test_native_crash_fails_the_fit_not_the_process():
    def crash(x, params):
        faulthandler.disable()  # pytest's faulthandler would print "Fatal Python error"
        os.abort()

    with pytest.raises(isolation.FitCrashed, match=r"died \(signal SIGABRT\) without a result"):
        isolation.fit(fake_backend(crash), np.zeros((3, 2)), P)


@pytest.mark.parametrize("error, kind", [(MemoryError("no room"), MemoryError),
                                         (ValueError("bad"), ValueError),
                                         (KeyError("k"), RuntimeError)])
def test_errors_come_back_typed(error, kind):
    def fail(x, params):
        raise error

    with pytest.raises(kind):
        isolation.fit(fake_backend(fail), np.zeros((3, 2)), P)


def test_gpu_backends_fit_in_a_thread():
    seen = {}

    def fit(x, params):
        seen["pid"] = os.getpid()
        return Labels(np.zeros(1, np.int64), np.ones(1), {})

    isolation.fit(fake_backend(fit, device="gpu"), np.zeros((1, 2)), P)
    assert seen["pid"] == os.getpid()


def test_an_interrupt_during_the_fork_is_not_lost():
    """A SIGINT landing while the child is forked is held, then raised after the fork."""
    import signal as sig

    reached = []
    before = sig.getsignal(sig.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with isolation.interrupts_deferred():
            os.kill(os.getpid(), sig.SIGINT)  # arrives inside the protected window
            reached.append("after the signal")  # still here: the handler only recorded it
    assert reached == ["after the signal"]
    assert sig.getsignal(sig.SIGINT) is before  # handler restored


def test_a_domain_error_in_the_child_keeps_its_type_and_message():
    """An EnvironmentProblem (or any GpuClusterError) raised in the fit child arrives as
    itself, so the CLI renders one line instead of a RuntimeError with a traceback."""
    import types

    from gpu_cluster.errors import EnvironmentProblem

    def fit(x, params):
        raise EnvironmentProblem("numpy 9.9 with scikit-learn 0.1 is known to fail")

    backend = types.SimpleNamespace(fit=fit, NAME="raising")
    with pytest.raises(EnvironmentProblem, match=r"^numpy 9.9 with scikit-learn 0.1 is known to fail$"):
        isolation.fit_in_child(backend, np.zeros((3, 2), np.float32), None)


def test_a_spawned_child_fits_like_a_forked_one(monkeypatch):
    """Where fork is missing or unsafe (macOS, Windows) the child is spawned: it imports
    the backend by name and gets the rows pickled; the labels are the same."""
    from gpu_cluster.backends import knn_graph
    from helpers import blobs

    x = blobs(300, 8, seed=3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    params = HdbscanParams(10, 10, 0.0, False)
    forked = isolation.fit(knn_graph, x, params)
    monkeypatch.setattr(isolation, "start_method", lambda: "spawn")
    spawned = isolation.fit(knn_graph, x, params)
    assert np.array_equal(spawned.labels, forked.labels) and forked.n_clusters >= 2


# A real `cluster` run whose fit (a fake backend, in this process only) writes its pid
# and then sleeps; the test SIGKILLs the run once that pid is written.
SLEEPING_RUN = """
import os, sys, time, types
import numpy as np
from gpu_cluster import backends
from gpu_cluster.backends import knn_graph
mod = types.ModuleType("sleeping_backend")
mod.NAME, mod.DEVICE = "sleeping", "cpu"
mod.estimate, mod.plan_params = knn_graph.estimate, knn_graph.plan_params
def fit(x, params):
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
mod.fit = fit
sys.modules["sleeping_backend"] = mod
backends.MODULES[("cpu", "sleeping")] = "sleeping_backend"
from gpu_cluster.cli import main
main(["cluster", sys.argv[2], "--device", "cpu", "--algorithm", "sleeping", "-d", "4",
      "--model", "Nomic"], prog_name="gpu-cluster")
"""


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (dead, waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc (Linux)")
def test_the_fit_child_dies_with_a_run_killed_by_sigkill(demo_db, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "fit.pid"
    run = subprocess.Popen([sys.executable, "-c", SLEEPING_RUN, str(pid_file), str(demo_db)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # a bound on waiting for the fit, not a timing claim
        while not (pid_file.exists() and pid_file.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, "the fit never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert not process_gone(child)  # the fit runs
        run.send_signal(signal.SIGKILL)
        run.wait()
        while not process_gone(child):
            assert time.monotonic() < deadline, f"fit child {child} outlived its killed run"
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
