"""GPU memory planning for cuML's HDBSCAN: pure arithmetic, no CuPy at import time.

cuML 26.10's HDBSCAN (``build_algo='brute_force'``, float32 input) peaks at about

    4 * n * d  +  140 * n * (min_samples_cuml + 1)      bytes

(measured; cuml_facts). cuML's ``min_samples`` does not count the point itself, so with
scikit-learn's convention ``k = min_samples_cuml + 1`` the second term is ``140 * n * k``.
For n = 1.1M, d = 768 that is ~17.7 GiB at min_samples 100, ~75 GiB at 500 and
~150 GiB at 1023: the original tool's default (0.1% of n = 1,100) neither passes cuML's
``1 <= min_samples <= 1023`` check nor fits an 80 GB card. So min_samples is planned
against free device memory here, the choice is stated in a sentence for the log and the
stored parameters, and nothing-fits is a clear error.

The formula is measured for brute force, which the cuML backend uses up to 2M rows;
past that (nn_descent) it is applied unverified.

Every ``min_samples`` in this module's API is in scikit-learn's convention (counts the
point itself), like :class:`gpu_cluster.params.HdbscanParams`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .errors import ParameterError

GIB = 1024**3
BYTES_PER_FLOAT32 = 4
# Device bytes per point per kNN neighbour slot (kNN indices and distances, the
# mutual-reachability graph and its MST/dendrogram work buffers), measured (cuml_facts).
BYTES_PER_NEIGHBOUR = 140
# cuML checks ``1 <= min_samples <= 1023`` in its own (point-excluded) convention.
CUML_MIN_SAMPLES_MAX = 1023
SKLEARN_MIN_SAMPLES_MIN = 2  # cuML 1 + the point itself
SKLEARN_MIN_SAMPLES_MAX = CUML_MIN_SAMPLES_MAX + 1
# An index overflow is suspected near cuML min_samples >= 976 at n ~= 1.1M (cuml_facts).
# That is exactly where 2 * n * (min_samples_cuml + 1), the entry count of the
# symmetrised kNN graph, passes 2**31 - 1 (1.1M * 977 * 2 = 2.149e9 > 2.147e9): a
# 32-bit edge index. Plan below it rather than risk a crash or silently wrong labels.
INT32_MAX = 2**31 - 1
DEFAULT_SAFETY = 0.85  # plan against 85% of free memory: allocator slack, CUDA context


class GpuMemoryError(ParameterError, MemoryError):
    """The requested clustering cannot fit in the GPU's memory.

    A ``ParameterError`` (the CLI renders it as one line) and a ``MemoryError``, so the
    pipeline's per-model ``except MemoryError`` records the model as failed and goes on
    with the next (smaller) model.
    """


def peak_bytes(n: int, dim: int, min_samples: int) -> int:
    """Planned peak device bytes of one cuML HDBSCAN fit.

    Args:
        n: rows; dim: columns of the float32 input.
        min_samples: scikit-learn convention (cuML's + 1).
    """
    return BYTES_PER_FLOAT32 * n * dim + BYTES_PER_NEIGHBOUR * n * min_samples


def index_limit(n: int) -> int:
    """Largest min_samples (sklearn convention) keeping 2 * n * k below 2**31."""
    return INT32_MAX // (2 * max(n, 1))


def memory_limit(n: int, dim: int, budget_bytes: int) -> int:
    """Largest min_samples (sklearn convention) whose peak fits ``budget_bytes`` (may be < 2)."""
    spare = budget_bytes - BYTES_PER_FLOAT32 * n * dim
    return spare // (BYTES_PER_NEIGHBOUR * max(n, 1)) if spare > 0 else 0


def gib(nbytes: float) -> str:
    """'17.7 GiB'."""
    return f"{nbytes / GIB:.1f} GiB"


@dataclass(frozen=True)
class GpuMemoryPlan:
    """The min_samples one model will use on the GPU, and why.

    min_samples / requested_min_samples: scikit-learn convention.
    planned_bytes, free_bytes, budget_bytes: device bytes.
    reason: a sentence for the log and the stored parameters.
    """

    requested_min_samples: int
    min_samples: int
    capped: bool
    reason: str
    planned_bytes: int
    free_bytes: int
    budget_bytes: int

    def as_dict(self) -> dict:
        """For the stored ``parameters`` JSON."""
        return asdict(self)


def limits(n: int, dim: int, budget_bytes: int) -> list[tuple[int, str]]:
    """The three upper bounds on min_samples (sklearn convention), each with its cause."""
    return [
        (SKLEARN_MIN_SAMPLES_MAX, f"cuML accepts min_samples <= {CUML_MIN_SAMPLES_MAX} "
                                  f"(= {SKLEARN_MIN_SAMPLES_MAX} counting the point itself)"),
        (index_limit(n), f"2*n*min_samples must stay below 2**31 at n={n:,} (suspected "
                         "32-bit index overflow in cuML's kNN graph)"),
        (memory_limit(n, dim, budget_bytes), f"the fit must fit in {gib(budget_bytes)} of "
                                             "GPU memory"),
    ]


def plan_min_samples(
    n: int, dim: int, requested: int, free_bytes: int, *, explicit: bool,
    safety: float = DEFAULT_SAFETY,
) -> GpuMemoryPlan:
    """Choose min_samples (sklearn convention) for a cuML fit of n x dim float32 rows.

    The result is the largest value <= ``requested`` within cuML's cap, the suspected
    index limit and ``safety * free_bytes``. A default (``explicit=False``) is capped
    with a stated reason; an explicit ``--min-samples`` is used as given or refused.

    Raises:
        ParameterError: an explicit value outside cuML's range.
        GpuMemoryError: nothing fits (even min_samples=2), or an explicit value does not.
    """
    if explicit and not SKLEARN_MIN_SAMPLES_MIN <= requested <= SKLEARN_MIN_SAMPLES_MAX:
        raise ParameterError(
            f"--min-samples {requested}: on the GPU it must be from {SKLEARN_MIN_SAMPLES_MIN} "
            f"to {SKLEARN_MIN_SAMPLES_MAX} (cuML's 1..{CUML_MIN_SAMPLES_MAX}, which does not "
            "count the point itself)"
        )
    budget = int(safety * free_bytes)
    bound, cause = min(limits(n, dim, budget), key=lambda lc: lc[0])
    if bound < SKLEARN_MIN_SAMPLES_MIN:
        raise GpuMemoryError(
            f"nothing fits on the GPU for n={n:,}, dim={dim}: even min_samples=2 needs "
            f"{gib(peak_bytes(n, dim, 2))}, free {gib(free_bytes)} (planning with "
            f"{safety:.0%} of it, {gib(budget)}; {cause}); downsample more or use the CPU"
        )
    if requested <= bound:
        chosen, reason = requested, (
            f"min_samples={requested} as {'given' if explicit else 'defaulted'}; planned "
            f"{gib(peak_bytes(n, dim, requested))} of {gib(budget)} usable GPU memory"
        )
    elif explicit:
        raise GpuMemoryError(
            f"--min-samples {requested} does not fit on the GPU for n={n:,}, dim={dim}: it "
            f"needs {gib(peak_bytes(n, dim, requested))} with {gib(budget)} usable "
            f"({safety:.0%} of {gib(free_bytes)} free); the largest that fits is {bound} "
            f"({cause})"
        )
    else:
        chosen, reason = bound, (
            f"min_samples capped from {requested} to {bound} because {cause}; planned "
            f"{gib(peak_bytes(n, dim, bound))} of {gib(budget)} usable GPU memory"
        )
    return GpuMemoryPlan(requested, chosen, chosen != requested, reason,
                         peak_bytes(n, dim, chosen), int(free_bytes), budget)


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
            f"--gpu-memory {text!r}: expected a size such as 80GiB, 40GB, 512MiB or a "
            "number of bytes"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ParameterError(f"--gpu-memory {text!r}: must be more than 0 bytes")
    return value


def free_device_memory() -> int:
    """Free bytes on the current CUDA device, after returning CuPy's cached blocks.

    CuPy's memory pool keeps freed blocks (an earlier model's arrays) that
    ``memGetInfo`` counts as used; releasing them first makes the number honest.
    Raises whatever CUDA raises when there is no usable device.
    """
    import cupy

    cupy.get_default_memory_pool().free_all_blocks()
    free, _total = cupy.cuda.runtime.memGetInfo()
    return int(free)
