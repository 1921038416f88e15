"""Choosing min_samples against a memory budget (host RAM or GPU memory).

A backend knows its peak memory as a function of min_samples and its hard limits; this
module turns those into one decision with a sentence for the log and the stored
parameters: the requested value when it fits, the largest that fits when the value was a
default, or a clear error when an explicit value (or anything at all) does not fit.
Every min_samples here counts the point itself (scikit-learn's convention).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Callable

from .errors import ParameterError

GIB = 1024**3
DEFAULT_HOST_FRACTION = 0.45  # default host budget: 45% of RAM (measured peak 12.6 GiB at 50%, 1.1M x 768)


class MemoryBudgetError(ParameterError, MemoryError):
    """The requested clustering cannot fit in the memory budget.

    A ``ParameterError`` (the CLI renders it as one line) and a ``MemoryError``, so the
    pipeline's per-model ``except MemoryError`` records that model as failed and goes on.
    """


def format_bytes(n: float) -> str:
    """'512 B' / '3.4 MiB' / '17.7 GiB': the one byte formatter (messages, plans, logs)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def physical_memory() -> int:
    """Total RAM of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_host_budget() -> int:
    return int(DEFAULT_HOST_FRACTION * physical_memory())


@dataclass(frozen=True)
class MemoryPlan:
    """The min_samples one model will use, and why.

    where: 'GPU' or 'host'. planned/available/budget bytes are in that memory.
    reason: a sentence for the log and the stored parameters.
    """

    where: str
    requested_min_samples: int
    min_samples: int
    capped: bool
    reason: str
    planned_bytes: int
    available_bytes: int
    budget_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def choose_min_samples(
    requested: int, *, explicit: bool, n: int, dim: int, where: str,
    peak: Callable[[int], int], bounds: list[tuple[int, str]],
    available: int, safety: float = 1.0, lowest: int = 2,
) -> MemoryPlan:
    """The largest min_samples <= ``requested`` within every bound, or a clear error.

    Args:
        requested: the default or user-given min_samples.
        explicit: True when the user gave it (then it is used as given or refused).
        peak: planned peak bytes for a given min_samples.
        bounds: (largest allowed min_samples, cause) pairs: memory, library limits.
        available: bytes available (free GPU memory, or the host budget).
        safety: fraction of ``available`` to plan against.
    Raises:
        MemoryBudgetError: nothing fits (even ``lowest``), or an explicit value does not.
    """
    budget = int(safety * available)
    bound, cause = min(bounds, key=lambda bc: bc[0])
    on = "on the GPU" if where == "GPU" else "in host memory"
    usable = f"{format_bytes(budget)} usable {where} memory"
    if bound < lowest:
        raise MemoryBudgetError(
            f"nothing fits {on} for n={n:,}, dim={dim}: even min_samples={lowest} needs "
            f"{format_bytes(peak(lowest))}, {'free' if where == 'GPU' else 'budget'} {format_bytes(available)} (planning with "
            f"{safety:.0%} of it, {format_bytes(budget)}; {cause}); downsample more"
            + (" or use the CPU" if where == "GPU" else " or raise --memory-budget")
        )
    if requested <= bound:
        chosen = requested
        reason = (f"min_samples={requested} as {'given' if explicit else 'defaulted'}; "
                  f"planned {format_bytes(peak(requested))} of {usable}")
    elif explicit:
        raise MemoryBudgetError(
            f"--min-samples {requested} does not fit {on} for n={n:,}, dim={dim}: it needs "
            f"{format_bytes(peak(requested))} with {usable} ({safety:.0%} of {format_bytes(available)}); "
            f"the largest that fits is {bound} ({cause})"
        )
    else:
        chosen = bound
        reason = (f"min_samples capped from {requested} to {bound} because {cause}; "
                  f"planned {format_bytes(peak(bound))} of {usable}")
    return MemoryPlan(where, requested, chosen, chosen != requested, reason,
                      peak(chosen), int(available), budget)


def plan_linear(
    requested: int, *, explicit: bool, n: int, dim: int, fixed: int, per_k: int,
    available: int, what: str, floor_k: int = 0,
) -> MemoryPlan:
    """choose_min_samples for a host-memory model ``peak(k) = fixed + per_k * max(k, floor_k)``
    bytes (``floor_k``: the fewest neighbours the fit uses whatever min_samples is)."""
    spare = available - fixed
    bound = spare // per_k if spare > 0 and per_k > 0 else 0
    if fixed + per_k * floor_k > available:  # not even the floor fits
        bound = 0
    return choose_min_samples(
        requested, explicit=explicit, n=n, dim=dim, where="host",
        peak=lambda k: fixed + per_k * max(k, floor_k),
        bounds=[(int(bound), f"{what} must fit in the {format_bytes(available)} host memory budget")],
        available=available,
    )


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Bytes in a size such as '80GiB', '80 GB', '512MiB', '1.5TiB' or '123456'.

    GB/MB/KB/TB are decimal (10**9 ...), GiB/MiB/KiB/TiB binary (2**30 ...); a bare
    number is bytes. Raises ParameterError for anything else.
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ParameterError(
            f"{text!r}: expected a size such as 80GiB, 40GB, 512MiB or a number of bytes"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ParameterError(f"{text!r}: must be more than 0 bytes")
    return value
