"""Holding SIGINT/SIGTERM with ``pthread_sigmask``: shared by the fit child and the threads.

Python runs signal handlers in the main thread, but the kernel hands a process-directed
signal to any thread that does not block it. So the helper threads this package starts
(heartbeats, the live display's refresh, a GPU fit) start with the stop signals blocked,
and the main thread alone receives them; it blocks them itself while it forks (see
isolation.py), and they are delivered, with their own handlers, when it unblocks.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_CAN_MASK = hasattr(signal, "pthread_sigmask")  # not on Windows


@contextmanager
def held():
    """Block SIGINT/SIGTERM in this thread for the block; a pending one is delivered after."""
    if not _CAN_MASK:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_quiet(thread: threading.Thread) -> threading.Thread:
    """Start ``thread`` with SIGINT/SIGTERM blocked in it (a new thread inherits the mask)."""
    with held():
        thread.start()
    return thread
