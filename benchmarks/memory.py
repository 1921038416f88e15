"""Peak host RSS (and GPU memory) during one stage, sampled by a background thread.

``getrusage``'s ``ru_maxrss`` is the process-lifetime maximum, so after the first large
step it says nothing about later ones. A thread samples the resident set size every
``interval_s`` (and once at entry and exit, so a stage shorter than the interval still
has two samples); with a GPU it samples the device's used memory the same way.

A CPU fit runs in a forked child (``gpu_cluster.isolation``) that shares the parent's
pages copy-on-write, so the peak is the parent's RSS plus each child's *unique* set size
(USS: pages only the child holds); USS reads /proc/PID/smaps, so it is sampled at most
every ``CHILD_INTERVAL_S``.
"""

from __future__ import annotations

import threading
import time

import psutil

DEFAULT_INTERVAL_S = 0.05
CHILD_INTERVAL_S = 0.5


def gpu_used_bytes() -> int:
    """Bytes in use on CUDA device 0 (every process, every allocator: cuML uses RMM)."""
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return int(total - free)


class PeakSampler:
    """Context manager: ``start_rss``, ``peak_rss`` and ``peak_gpu`` (bytes) of a stage."""

    def __init__(self, *, gpu: bool = False, interval_s: float = DEFAULT_INTERVAL_S):
        self.gpu, self.interval_s = gpu, interval_s
        self._process = psutil.Process()
        self.start_rss = self.peak_rss = 0
        self.peak_gpu: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._children_uss, self._children_at = 0, 0.0

    def children_uss(self) -> int:
        """Bytes held only by child processes (a fit's child), refreshed every 0.5 s."""
        now = time.monotonic()
        if now - self._children_at >= CHILD_INTERVAL_S:
            total = 0
            for child in self._process.children(recursive=True):
                try:
                    total += child.memory_full_info().uss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self._children_uss, self._children_at = total, now
        return self._children_uss

    def sample(self) -> None:
        rss = self._process.memory_info().rss + self.children_uss()
        self.peak_rss = max(self.peak_rss, rss)
        if self.gpu:
            self.peak_gpu = max(self.peak_gpu or 0, gpu_used_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakSampler":
        self.start_rss = self._process.memory_info().rss
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def as_dict(self) -> dict:
        """{'peak_rss_bytes', 'rss_delta_bytes' (peak minus start), 'peak_gpu_bytes'}."""
        return {"peak_rss_bytes": self.peak_rss,
                "rss_delta_bytes": self.peak_rss - self.start_rss,
                "peak_gpu_bytes": self.peak_gpu}
