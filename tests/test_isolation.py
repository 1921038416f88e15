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
    ctypes.PyDLL(None).sleep(2)  # a native call that keeps the GIL for 2 s
    return Labels(np.zeros(len(x), np.int64), np.ones(len(x)), {"pid": os.getpid()})


def heartbeats_during(fit_function, caplog):
    caplog.set_level(logging.INFO, logger="gpu_cluster")
    with Reporter(heartbeat_s=0.2).stage("cluster", unit="fit"):
        result = fit_function()
    return result, sum("still running" in r.getMessage() for r in caplog.records)


def test_child_fit_keeps_heartbeats_going(caplog):
    backend = fake_backend(gil_holding_fit)
    result, beats = heartbeats_during(lambda: isolation.fit(backend, np.zeros((5, 3)), P), caplog)
    assert result.labels.tolist() == [0] * 5 and result.details["pid"] != os.getpid()
    assert beats >= 5  # ~10 expected over 2 s at 0.2 s


def test_thread_fit_would_starve_them(caplog):
    """Why the child exists: the same fit in a thread silences the heartbeat."""
    backend = fake_backend(gil_holding_fit)
    _, beats = heartbeats_during(
        lambda: isolation.fit_in_thread(backend, np.zeros((5, 3)), P), caplog)
    assert beats <= 2


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
