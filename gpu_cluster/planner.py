"""What a run would do, from counts alone: selected n, parameters, memory and time."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from . import params as P
from .selection import ModelSurvey, Selection

# Read rates measured on a 200k x 768 SQLite file on this project's machine (cpu_facts).
PLAIN_SCAN_ROWS_PER_S = 600_000
JOIN_SCAN_ROWS_PER_S = 80_000


@dataclass(frozen=True)
class ModelPlan:
    """The plan for one model at one downsample factor."""

    selection: Selection
    params: P.HdbscanParams | None
    skip_reason: str | None
    host_bytes: int
    read_seconds: float
    fit_seconds: float

    @property
    def model(self) -> str:
        return self.selection.model

    @property
    def n(self) -> int:
        return self.selection.expected_rows


def plan_model(
    survey: ModelSurvey, factor: int, requested: P.RequestedParams, backend: ModuleType
) -> ModelPlan:
    """Plan one model: skip reason or parameters, with memory (bytes) and time (s)."""
    sel = survey.selection(factor)
    n, dim = sel.expected_rows, sel.dim
    if survey.layout is None or dim == 0:
        return ModelPlan(sel, None, "no readable embeddings with an invocation", 0, 0.0, 0.0)
    params = P.resolve(requested, n)
    reason = P.too_few_reason(n, params)
    rate = JOIN_SCAN_ROWS_PER_S if sel.needs_join else PLAIN_SCAN_ROWS_PER_S
    read_s = n / rate
    if reason:
        return ModelPlan(sel, params, reason, 0, read_s, 0.0)
    fit_s, fit_bytes = backend.estimate(n, dim, params)
    array_bytes = 4 * n * dim + 32 * n
    return ModelPlan(sel, params, None, array_bytes + fit_bytes, read_s, fit_s)
