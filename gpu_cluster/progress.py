"""Progress reporting: one interface, a log-line implementation and a rich one.

The library reports through a :class:`Reporter`; it never prints. Under ``nohup`` (output
not a terminal) the base :class:`Reporter` writes timestamped log lines and a heartbeat at a
fixed interval in every stage — counts, rate and ETA when the stage has a total, elapsed
time and the planner's estimate when it has none (an HDBSCAN fit). On a terminal the CLI
uses :class:`RichReporter`: one live display for the whole run, holding a bar per running
stage, with every log line (stage starts and ends included) printed above it; a finished
stage's bar is removed, its "finished" log line stays.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .params import validate
from .signals import held, start_quiet

log = logging.getLogger("gpu_cluster")

DEFAULT_HEARTBEAT_S = 10.0


def format_seconds(seconds: float) -> str:
    """'1h02m03s' / '2m05s' / '4.2s' — compact, for log lines."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s"


class Stage:
    """A running stage: call :meth:`advance` as work completes."""

    def __init__(self, name: str, total: int | None, unit: str, estimate_s: float | None):
        self.name, self.total, self.unit, self.estimate_s = name, total, unit, estimate_s
        self.done = 0
        self.waiting = ""  # set while the stage waits on something that logs for itself
        self.detail = None  # optional callable: text appended to each heartbeat line
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status_line(self) -> str:
        """One heartbeat line: counts, rate and ETA, or elapsed against an estimate, then
        the stage's ``detail()`` if it has one."""
        line = self._progress_text()
        return f"{line}; {self.detail()}" if self.detail is not None else line

    def _progress_text(self) -> str:
        elapsed = self.elapsed
        if self.total:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else None
            eta_text = format_seconds(eta) if eta is not None else "unknown"
            return (
                f"{self.name}: {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%), "
                f"{rate:,.0f} {self.unit}/s, elapsed {format_seconds(elapsed)}, ETA {eta_text}"
            )
        estimate = (
            f" of ~{format_seconds(self.estimate_s)} estimated" if self.estimate_s else ""
        )
        return f"{self.name}: still running, elapsed {format_seconds(elapsed)}{estimate}"


class Reporter:
    """Base reporter: logs each stage's start and end, and heartbeats in between."""

    def __init__(self, heartbeat_s: float = DEFAULT_HEARTBEAT_S):
        validate(heartbeat=heartbeat_s)  # CONSTRAINTS: at 0 or below the heartbeat would spin
        self.heartbeat_s = heartbeat_s

    @contextmanager
    def stage(
        self, name: str, total: int | None = None, unit: str = "rows",
        estimate_s: float | None = None,
    ) -> Iterator[Stage]:
        st = Stage(name, total, unit, estimate_s)
        size = f" ({total:,} {unit})" if total else ""
        log.info("%s: started%s", name, size)
        stop = threading.Event()
        beat = start_quiet(threading.Thread(target=self._beat, args=(st, stop), daemon=True))
        self._open(st)
        try:
            yield st
        finally:
            stop.set()
            beat.join()
            self._close(st)
        log.info("%s: finished in %s", name, format_seconds(st.elapsed))

    def _beat(self, st: Stage, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            self._heartbeat(st)

    def _heartbeat(self, st: Stage) -> None:
        if not st.waiting:  # a wait (for a lock, say) logs its own heartbeat
            log.info("%s", st.status_line())

    def _open(self, st: Stage) -> None:
        pass

    def _close(self, st: Stage) -> None:
        pass

    def close(self) -> None:
        """End the reporter's display (nothing to do for log lines)."""



class RichReporter(Reporter):
    """One live rich display for the whole run: a bar per running stage, log lines above.

    The log's RichHandler must write to the same ``console``: rich then prints each log
    line above the live display instead of letting the display overwrite it. A stage's
    bar is removed when the stage ends (its "finished" line is in the log); ``close``
    takes the empty display down.
    """

    def __init__(self, console, heartbeat_s: float = 0.5):
        super().__init__(heartbeat_s)
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
            TimeElapsedColumn, TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )
        self._tasks: dict[int, int] = {}
        self._live = False

    def _open(self, st: Stage) -> None:
        if not self._live:  # started once, at the first stage, and kept until close()
            with held():  # its refresh thread inherits the blocked stop signals
                self._progress.start()
            self._live = True
        self._tasks[id(st)] = self._progress.add_task(st.name, total=st.total, rate="")

    def _heartbeat(self, st: Stage) -> None:
        rate = st.done / st.elapsed if st.elapsed > 0 and st.total else 0
        text = st.waiting or (f"{rate:,.0f} {st.unit}/s" if st.total else "")
        self._progress.update(self._tasks[id(st)], completed=st.done, rate=text)

    def _close(self, st: Stage) -> None:
        self._progress.remove_task(self._tasks.pop(id(st)))

    def close(self) -> None:
        if self._live:
            self._progress.stop()
            self._live = False
