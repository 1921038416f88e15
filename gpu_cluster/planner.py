"""What a run would do, from counts alone: selected n, parameters, memory and time.

The same planning step runs before each fit (with the n actually read), so ``plan``
shows exactly the min_samples cap a run will apply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType

from . import params as P
from .budget import MemoryBudgetError, MemoryPlan
from .selection import ModelSurvey, Selection

# Read rates measured on a 200k x 768 SQLite file on this project's machine (cpu_facts).
PLAIN_SCAN_ROWS_PER_S = 600_000
JOIN_SCAN_ROWS_PER_S = 80_000
ID_BYTES = 32


@dataclass(frozen=True)
class ModelPlan:
    """The plan for one model at one downsample factor.

    host_bytes / device_bytes: estimated peaks (device_bytes 0 on the CPU).
    skip_reason: why the model will be skipped (too few vectors), else None.
    failure: why its fit cannot fit in memory, else None.
    """

    selection: Selection
    params: P.HdbscanParams | None
    skip_reason: str | None
    memory: MemoryPlan | None
    host_bytes: int
    device_bytes: int
    read_seconds: float
    fit_seconds: float
    failure: str | None = None

    @property
    def model(self) -> str:
        return self.selection.model

    @property
    def n(self) -> int:
        return self.selection.expected_rows


def fit_params(
    requested: P.RequestedParams, n: int, dim: int, backend: ModuleType, available: int
) -> tuple[P.HdbscanParams, MemoryPlan]:
    """Parameters for n rows, with min_samples capped to fit ``available`` bytes.

    Raises MemoryBudgetError when nothing fits or an explicit min_samples does not.
    """
    params = P.resolve(requested, n)
    memory = backend.plan_params(params, n, dim, available=available,
                                 explicit=requested.min_samples is not None)
    return replace(params, min_samples=memory.min_samples), memory


def plan_model(
    survey: ModelSurvey, factor: int, requested: P.RequestedParams, backend: ModuleType,
    available: int,
) -> ModelPlan:
    """Plan one model: skip reason or parameters, with memory (bytes) and time (s)."""
    sel = survey.selection(factor)
    n, dim = sel.expected_rows, sel.dim
    if survey.layout is None or dim == 0:
        return ModelPlan(sel, None, "no readable embeddings with an invocation", None, 0, 0, 0.0, 0.0)
    rate = JOIN_SCAN_ROWS_PER_S if sel.needs_join else PLAIN_SCAN_ROWS_PER_S
    read_s = n / rate
    params = P.resolve(requested, n)
    reason = P.too_few_reason(n, params)
    if reason:
        return ModelPlan(sel, params, reason, None, 0, 0, read_s, 0.0)
    try:
        params, memory = fit_params(requested, n, dim, backend, available)
    except MemoryBudgetError as exc:
        return ModelPlan(sel, params, None, None, 0, 0, read_s, 0.0, failure=str(exc))
    fit_s, fit_bytes = backend.estimate(n, dim, params)
    if backend.DEVICE == "gpu":  # host keeps ids and two pinned staging buffers
        return ModelPlan(sel, params, None, memory, ID_BYTES * n, fit_bytes, read_s, fit_s)
    return ModelPlan(sel, params, None, memory, fit_bytes + ID_BYTES * n, 0, read_s, fit_s)
