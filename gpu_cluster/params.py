"""Clustering parameters: defaults, the declarative constraint table, resolution.

Defaults mirror the research group's original scikit-learn tool: rows L2-normalised,
euclidean distance, ``min_cluster_size = min_samples = max(2, int(0.001 * n))``,
``cluster_selection_epsilon = 0.4`` and ``allow_single_cluster = True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import ParameterError

DEFAULT_EPSILON = 0.4
DEFAULT_FRACTION = 0.001
DEFAULT_BATCH_SIZE = 10_000
DEFAULT_LOCK_TIMEOUT_S = 60.0  # list/status/plan/delete waiting for another process's lock
# `cluster` waits for the lock as long as it takes (None) unless --lock-timeout is given:
# its computed result must never be thrown away for a lock.

# name -> (predicate, message). Checked once, at the boundary, before any work.
CONSTRAINTS = {
    "downsample": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
    "epsilon": (lambda v: math.isfinite(v) and v >= 0.0, "must be a finite number >= 0"),
    "min_cluster_size": (
        lambda v: v is None or (isinstance(v, int) and v >= 2),
        "must be an integer >= 2",
    ),
    "min_samples": (
        lambda v: v is None or (isinstance(v, int) and v >= 1),
        "must be an integer >= 1",
    ),
    "lock_timeout": (
        lambda v: v is None or (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0),
        "must be a number of seconds >= 0",
    ),
    "heartbeat": (
        lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
        "must be a number of seconds > 0",
    ),
    "batch_size": (
        lambda v: isinstance(v, int) and 1 <= v <= 1_000_000,
        "must be an integer from 1 to 1,000,000",
    ),
}


def validate(**values) -> None:
    """Raise ParameterError for the first value outside its CONSTRAINTS entry."""
    for name, value in values.items():
        check, message = CONSTRAINTS[name]
        if not check(value):
            raise ParameterError(f"--{name.replace('_', '-')} {value!r}: {message}")


@dataclass(frozen=True)
class RequestedParams:
    """What the user asked for; ``None`` means "derive from n"."""

    epsilon: float = DEFAULT_EPSILON
    min_cluster_size: int | None = None
    min_samples: int | None = None
    allow_single_cluster: bool = True

    def __post_init__(self):
        validate(
            epsilon=self.epsilon,
            min_cluster_size=self.min_cluster_size,
            min_samples=self.min_samples,
        )


@dataclass(frozen=True)
class HdbscanParams:
    """Concrete HDBSCAN parameters for one model's n vectors.

    ``min_samples`` counts the point itself, as scikit-learn (>= 1.3) does.
    """

    min_cluster_size: int
    min_samples: int
    cluster_selection_epsilon: float
    allow_single_cluster: bool
    metric: str = "euclidean"

    def as_dict(self) -> dict:
        return asdict(self)


def default_size(n: int) -> int:
    """The original tool's heuristic: ``max(2, int(0.001 * n))``."""
    return max(2, int(DEFAULT_FRACTION * n))


def resolve(requested: RequestedParams, n: int) -> HdbscanParams:
    """Fill in the n-dependent defaults for a model with n selected vectors."""
    size = requested.min_cluster_size or default_size(n)
    samples = requested.min_samples or size
    return HdbscanParams(
        min_cluster_size=size,
        min_samples=samples,
        cluster_selection_epsilon=float(requested.epsilon),
        allow_single_cluster=requested.allow_single_cluster,
    )


def too_few_reason(n: int, params: HdbscanParams) -> str | None:
    """Why n vectors cannot be clustered with ``params``, or None when they can."""
    need = max(2, params.min_cluster_size, params.min_samples)
    if n < need:
        return (
            f"only {n} usable vector(s) selected; HDBSCAN with min_cluster_size="
            f"{params.min_cluster_size}, min_samples={params.min_samples} needs >= {need}"
        )
    return None
