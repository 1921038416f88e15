"""Run a backend's fit where it can neither starve the heartbeat nor kill the run.

A CPU fit runs in a child process: native code that holds the GIL for minutes
(scikit-learn's tree building does: an 81 s gap in heartbeats was measured at
n = 11,000) cannot stall the parent's progress lines, and a native crash (seen here:
segfaults in BLAS and in scikit-learn at n = 20k) fails that model instead of the run.
On Linux the child is forked and inherits the normalised array copy-on-write (no copy
is made); where fork is unavailable or unsafe (macOS, Windows) it is spawned, and the
array is pickled to it (a second copy, in the child). It sends back labels and
probabilities; a GpuClusterError keeps its type and message. The child dies with its
parent (``PR_SET_PDEATHSIG`` on Linux, a liveness check elsewhere): a run killed with
SIGKILL leaves no fit behind. A GPU fit runs in a thread instead: CUDA does not survive
a fork, and cuML releases the GIL. So does a CPU fit in a daemonic process (a Dask worker
started with its default ``distributed.worker.daemon``), which Python forbids to have
children; there the worker's nanny isolates crashes, and the run's driver heartbeats.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from types import ModuleType

from . import errors
from .errors import GpuClusterError
from .labels import Labels
from .params import HdbscanParams
from .signals import STOP_SIGNALS, held, start_quiet

POLL_S = 0.2


class FitCrashed(RuntimeError):
    """The fit's child process died without a result (e.g. a native crash)."""


def fit(backend: ModuleType, x, params: HdbscanParams) -> Labels:
    """``backend.fit(x, params)``, isolated as the module docstring describes."""
    if getattr(backend, "DEVICE", "cpu") == "gpu" or multiprocessing.current_process().daemon:
        return fit_in_thread(backend, x, params)
    return fit_in_child(backend, x, params)


def fit_in_thread(backend: ModuleType, x, params: HdbscanParams) -> Labels:
    """Fit in a daemon thread; the caller waits in short joins, so signals stay prompt."""
    box: dict = {}

    def target():
        try:
            box["value"] = backend.fit(x, params)
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    worker = start_quiet(threading.Thread(target=target, name="fit", daemon=True))
    while worker.is_alive():
        worker.join(POLL_S)
    if "error" in box:
        raise box["error"]
    return box["value"]


def start_method() -> str:
    """'fork' on Linux (the input is shared copy-on-write); 'spawn' where fork is missing
    or unsafe (Windows has none; on macOS system libraries are not fork-safe)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LIVENESS_S = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` ends, even by SIGKILL.

    Linux: the kernel sends SIGKILL when the thread that started the child exits (a run
    starts it from the thread running the pipeline). Elsewhere: a daemon thread checks
    every LIVENESS_S seconds that the parent is still this process's parent.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
            return

    def watch():
        while os.getppid() == parent_pid:
            threading.Event().wait(LIVENESS_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-liveness", daemon=True).start()


def _child(backend: ModuleType, x, params: HdbscanParams, conn, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    for s in STOP_SIGNALS:  # the parent decides about interrupts
        signal.signal(s, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # forked while they were held
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        labels = backend.fit(x, params)
        conn.send(("ok", (labels.labels, labels.probabilities, labels.details)))
    except GpuClusterError as exc:  # an expected failure keeps its type and message
        conn.send(("domain", (type(exc).__name__, str(exc))))
    except BaseException as exc:  # report any other failure, typed, to the parent
        conn.send(("error", (type(exc).__name__, str(exc), traceback.format_exc())))
    finally:
        conn.close()


def _spawned_child(backend_name: str, x, params: HdbscanParams, conn, parent_pid: int) -> None:
    """A spawned child's entry: import the backend by name, then fit as a forked one."""
    _child(importlib.import_module(backend_name), x, params, conn, parent_pid)


def interrupts_deferred():
    """Hold SIGINT/SIGTERM (``pthread_sigmask``) while the child starts; act on them after.

    An interrupt that lands inside ``fork()``'s after-fork callbacks (logging's lock
    release, say) is raised there and *ignored* by Python: the run would go on. Blocked,
    it stays pending and reaches its own handler when the block ends. The package's
    helper threads block these signals for good (signals.py), so none of them takes it.
    """
    return held()


def fit_in_child(backend: ModuleType, x, params: HdbscanParams) -> Labels:
    """Fit in a child process; raise its error here, or FitCrashed if it died."""
    method = start_method()
    ctx = multiprocessing.get_context(method)
    parent_end, child_end = ctx.Pipe(duplex=False)
    if method == "fork":
        target, first = _child, backend
    else:  # a spawned child imports the backend by name and gets a pickled copy of x
        target, first = _spawned_child, backend.__name__
    proc = ctx.Process(target=target, args=(first, x, params, child_end, os.getpid()),
                       daemon=True)
    try:
        with interrupts_deferred():
            proc.start()
        child_end.close()
        message = receive(parent_end, proc)
    finally:
        stop(proc)
    status, payload = message
    if status == "ok":
        return Labels(*payload)
    if status == "domain":
        raise domain_error(*payload)
    name, text, trace = payload
    error = {"MemoryError": MemoryError, "ValueError": ValueError}.get(name, RuntimeError)
    raise error(f"{name} in the fit: {text}\n{trace}" if error is RuntimeError else text)


def domain_error(name: str, text: str) -> GpuClusterError:
    """The child's GpuClusterError, rebuilt here with its own class and message."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GpuClusterError)):
        cls = GpuClusterError
    error = cls.__new__(cls)
    Exception.__init__(error, text)
    if isinstance(error, errors.ModelSkipped):
        error.reason = text
    return error


def stop(proc) -> None:
    """End the child if it still runs (SIGTERM, then SIGKILL after 2 s)."""
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
    proc.join()


def receive(conn, proc):
    """Wait for the child's one message while it lives."""
    while True:
        if conn.poll(POLL_S):
            try:
                return conn.recv()
            except EOFError:
                break
        if not proc.is_alive() and not conn.poll(0):
            break
    proc.join()
    code = proc.exitcode
    cause = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
    raise FitCrashed(f"the clustering process died ({cause}) without a result")
