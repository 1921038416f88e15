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

from ..budget import GIB, MemoryBudgetError, MemoryPlan, choose_min_samples, format_bytes, parse_bytes  # noqa: F401
from ..errors import ParameterError

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


GpuMemoryError = MemoryBudgetError  # the GPU's name for it
GpuMemoryPlan = MemoryPlan


def peak_bytes(n: int, dim: int, min_samples: int) -> int:
    """Planned peak device bytes of one cuML HDBSCAN fit.

    Args:
        n: rows; dim: columns of the float32 input.
        min_samples: scikit-learn convention (cuML's + 1).
    """
    return BYTES_PER_FLOAT32 * n * dim + BYTES_PER_NEIGHBOUR * n * min_samples


def check_min_samples(min_samples: int) -> None:
    """Refuse a min_samples (sklearn convention) outside cuML's range: the one check,
    made by the plan for an explicit value and by the adapter before any GPU work."""
    if not SKLEARN_MIN_SAMPLES_MIN <= min_samples <= SKLEARN_MIN_SAMPLES_MAX:
        raise ParameterError(
            f"min_samples={min_samples} cannot run on the GPU: it must be from "
            f"{SKLEARN_MIN_SAMPLES_MIN} to {SKLEARN_MIN_SAMPLES_MAX} (cuML's "
            f"1..{CUML_MIN_SAMPLES_MAX}, which does not count the point itself)"
        )


def index_limit(n: int) -> int:
    """Largest min_samples (sklearn convention) keeping 2 * n * k below 2**31."""
    return INT32_MAX // (2 * max(n, 1))


def memory_limit(n: int, dim: int, budget_bytes: int) -> int:
    """Largest min_samples (sklearn convention) whose peak fits ``budget_bytes`` (may be < 2)."""
    spare = budget_bytes - BYTES_PER_FLOAT32 * n * dim
    return spare // (BYTES_PER_NEIGHBOUR * max(n, 1)) if spare > 0 else 0


def limits(n: int, dim: int, budget_bytes: int) -> list[tuple[int, str]]:
    """The three upper bounds on min_samples (sklearn convention), each with its cause."""
    return [
        (SKLEARN_MIN_SAMPLES_MAX, f"cuML accepts min_samples <= {CUML_MIN_SAMPLES_MAX} "
                                  f"(= {SKLEARN_MIN_SAMPLES_MAX} counting the point itself)"),
        (index_limit(n), f"2*n*min_samples must stay below 2**31 at n={n:,} (suspected "
                         "32-bit index overflow in cuML's kNN graph)"),
        (memory_limit(n, dim, budget_bytes), f"the fit must fit in {format_bytes(budget_bytes)} of "
                                             "GPU memory"),
    ]


def plan_min_samples(
    n: int, dim: int, requested: int, free_bytes: int, *, explicit: bool,
    safety: float = DEFAULT_SAFETY,
) -> MemoryPlan:
    """Choose min_samples (sklearn convention) for a cuML fit of n x dim float32 rows.

    The result is the largest value <= ``requested`` within cuML's cap, the suspected
    index limit and ``safety * free_bytes``. A default (``explicit=False``) is capped
    with a stated reason; an explicit ``--min-samples`` is used as given or refused.

    Raises:
        ParameterError: an explicit value outside cuML's range.
        GpuMemoryError: nothing fits (even min_samples=2), or an explicit value does not.
    """
    if explicit:
        check_min_samples(requested)
    return choose_min_samples(
        requested, explicit=explicit, n=n, dim=dim, where="GPU",
        peak=lambda k: peak_bytes(n, dim, k),
        bounds=limits(n, dim, int(safety * free_bytes)),
        available=free_bytes, safety=safety, lowest=SKLEARN_MIN_SAMPLES_MIN,
    )


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
