"""The plan of one model: parameters resolved once, memory and time, from counts alone.

:func:`plan_model` is the one place where a model's parameters are resolved: the
defaults for n, then min_samples within the backend's memory figure and limits (the
backend's ``plan_params``, built on its ``peak_bytes(n, dim, min_samples)``). Its
:class:`ModelPlan` is what ``gpu-cluster plan`` prints, what a run fits with, and what
``parameters.memory_plan`` stores. A run plans before reading (with the surveyed n) and
plans again only if the read dropped rows (then n differs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType

from . import params as P
from .budget import MemoryBudgetError, MemoryPlan, default_host_budget
from .selection import Selection
from .staging import STAGING_BUFFERS

# Read rates of the project's reader on this machine (768-d, SQLite, page cache warm):
# 95.8k rows/s at factor 1 on the 30k demo file (README, read path), 75k rows/s for 1.1M
# rows of one model in a 15 GB file holding three (its pages interleaved with the others');
# a selection that joins the invocations ~80k rows/s (a 200k x 768 file, cpu_facts). Plus
# a fixed start (the query, the first batch): 0.2 s measured at 600 rows.
PLAIN_SCAN_ROWS_PER_S = 90_000
JOIN_SCAN_ROWS_PER_S = 80_000
READ_START_S = 0.15
ID_BYTES = 32


@dataclass(frozen=True)
class ModelPlan:
    """The plan for one model at one downsample factor, for n rows.

    params: the parameters the fit uses (min_samples within memory), None when the model
    has no readable rows. memory: how min_samples was chosen (stored as
    ``parameters.memory_plan``). host_bytes / device_bytes: estimated peaks (device_bytes
    0 on the CPU). skip_reason: why the model is skipped, else None. failure: why its fit
    cannot fit in memory, else None.
    """

    model: str
    selection: Selection | None  # None for rows not from a database (benchmarks' synthetic)
    n: int
    params: P.HdbscanParams | None
    skip_reason: str | None
    memory: MemoryPlan | None
    host_bytes: int
    device_bytes: int
    read_seconds: float
    fit_seconds: float
    failure: str | None = None

    @property
    def ready(self) -> bool:
        """Parameters and memory are settled: the model can be fitted."""
        return self.skip_reason is None and self.failure is None and self.memory is not None


def available_memory(backend: ModuleType, memory_budget: int | None = None,
                     gpu_memory: int | None = None) -> int:
    """Bytes a fit may plan with: the given GPU memory or host budget, else the backend's
    default (free device memory on a GPU, 45% of the RAM on the CPU)."""
    given = gpu_memory if backend.DEVICE == "gpu" else memory_budget
    if given:
        return given
    default = getattr(backend, "free_memory", None)
    return default() if default is not None else default_host_budget()


def plan_model(sel: Selection, requested: P.RequestedParams, backend: ModuleType,
               available: int, *, n: int | None = None,
               batch_size: int = P.DEFAULT_BATCH_SIZE) -> ModelPlan:
    """Plan one selection for ``n`` rows (default: the surveyed count).

    ``available``: bytes of the backend's memory (host budget or free GPU memory).
    ``batch_size``: rows per read batch (a GPU read's pinned buffers hold two).
    """
    n = sel.expected_rows if n is None else n
    if sel.survey.layout is None or sel.dim == 0:
        return ModelPlan(sel.model, sel, n, None, "no readable embeddings with an invocation",
                         None, 0, 0, 0.0, 0.0)
    rate = JOIN_SCAN_ROWS_PER_S if sel.needs_join else PLAIN_SCAN_ROWS_PER_S
    return plan_rows(sel.model, n, sel.dim, requested, backend, available, selection=sel,
                     read_seconds=READ_START_S + n / rate, batch_size=batch_size)


def plan_rows(model: str, n: int, dim: int, requested: P.RequestedParams, backend: ModuleType,
              available: int, *, selection: Selection | None = None, read_seconds: float = 0.0,
              batch_size: int = P.DEFAULT_BATCH_SIZE) -> ModelPlan:
    """Plan a fit of n x dim rows: resolve the parameters (once), choose min_samples within
    the backend's memory and limits, and estimate its peaks and seconds."""
    plan = ModelPlan(model, selection, n, P.resolve(requested, n), None, None, 0, 0,
                     read_seconds, 0.0)
    if reason := P.too_few_reason(n, plan.params):
        return replace(plan, skip_reason=reason)
    try:
        memory = backend.plan_params(plan.params, n, dim, available=available,
                                     explicit=requested.min_samples is not None)
    except MemoryBudgetError as exc:
        return replace(plan, failure=str(exc))
    params = replace(plan.params, min_samples=memory.min_samples)
    fit_s, _ = backend.estimate(n, dim, params)
    fit_bytes = memory.planned_bytes  # the backend's peak_bytes at the chosen min_samples
    if backend.DEVICE == "gpu":  # host: ids, and the read's pinned staging buffers
        host = ID_BYTES * n + STAGING_BUFFERS * min(batch_size, n) * dim * 4
        return replace(plan, params=params, memory=memory, host_bytes=host,
                       device_bytes=fit_bytes, fit_seconds=fit_s)
    return replace(plan, params=params, memory=memory, host_bytes=fit_bytes + ID_BYTES * n,
                   fit_seconds=fit_s)


def plan_for_rows(plan: ModelPlan, n: int, requested: P.RequestedParams, backend: ModuleType,
                  available: int, batch_size: int = P.DEFAULT_BATCH_SIZE) -> ModelPlan:
    """``plan`` for the n rows actually read: itself when n is the planned n, else planned
    again (the read dropped rows with NaN/inf or zero vectors)."""
    if n == plan.n:
        return plan
    return plan_model(plan.selection, requested, backend, available, n=n, batch_size=batch_size)
