"""Run a backend's fit where it can neither starve the heartbeat nor kill the run.

A CPU fit runs in a forked child process: native code that holds the GIL for minutes
(scikit-learn's tree building does: an 81 s gap in heartbeats was measured at
n = 11,000) cannot stall the parent's progress lines, and a native crash (seen here:
segfaults in BLAS and in scikit-learn at n = 20k) fails that model instead of the run.
The child inherits the normalised array copy-on-write (no copy is made) and sends back
labels and probabilities. A GPU fit runs in a thread instead: CUDA does not survive a
fork, and cuML releases the GIL.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from types import ModuleType

from . import errors
from .labels import Labels
from .errors import GpuClusterError
from .params import HdbscanParams

POLL_S = 0.2


class FitCrashed(RuntimeError):
    """The fit's child process died without a result (e.g. a native crash)."""


def fit(backend: ModuleType, x, params: HdbscanParams) -> Labels:
    """``backend.fit(x, params)``, isolated as the module docstring describes."""
    if getattr(backend, "DEVICE", "cpu") == "gpu":
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

    worker = threading.Thread(target=target, name="fit", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _child(backend: ModuleType, x, params: HdbscanParams, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent decides about interrupts
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    after_fork = getattr(backend, "after_fork", None)  # the backend's own repairs (faiss)
    if after_fork is not None:
        after_fork()
    try:
        labels = backend.fit(x, params)
        conn.send(("ok", (labels.labels, labels.probabilities, labels.details)))
    except GpuClusterError as exc:  # an expected failure keeps its type and message
        conn.send(("domain", (type(exc).__name__, str(exc))))
    except BaseException as exc:  # report any other failure, typed, to the parent
        conn.send(("error", (type(exc).__name__, str(exc), traceback.format_exc())))
    finally:
        conn.close()


@contextmanager
def interrupts_deferred():
    """Hold SIGINT/SIGTERM until the block ends, then act on the first one.

    An interrupt that lands inside ``fork()``'s after-fork callbacks (logging's lock
    release, say) is raised there and *ignored* by Python: the run would go on. So the
    handlers only record the signal while forking; the original handler runs after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            replay(caught[0], old[caught[0]])


def replay(signum: int, handler) -> None:
    """Act on a deferred signal as its original handler would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL and signum == signal.SIGINT:
        raise KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def fit_in_child(backend: ModuleType, x, params: HdbscanParams) -> Labels:
    """Fit in a forked child; raise its error here, or FitCrashed if it died."""
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(backend, x, params, child_end), daemon=True)
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
