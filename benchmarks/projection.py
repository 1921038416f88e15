"""Project a stage's seconds at a new n from the steps already measured.

Each stage is modelled as a power law, ``seconds = exp(a) * n ** b``, fitted by least
squares on ``log(seconds) = a + b * log(n)`` over the measured (n, seconds) points of
that stage (per backend and dimension, pooled over models). Before any measurement the
projection is the stage's *prior* (the backend's own ``estimate`` for the fit, the
planner's read rate for the read, nominal rates for the rest); with one point it
assumes the stage's usual exponent (``PRIOR_EXPONENT``).

Two guards keep projections from being optimistic, because an optimistic projection is
what makes a sweep "appear to hang":

* only the points at the ``FIT_WINDOW`` largest distinct n are fitted — the local slope,
  which is what extrapolating one more order of magnitude needs: at tiny n fixed costs
  (query planning, thread start-up, a 5-row model) dominate and flatten the slope;
* the fitted exponent is clamped to ``[MIN_EXPONENT, MAX_EXPONENT]``: no stage but the
  survey does less than linear work in n. A caller may raise the floor for one
  projection (the runner passes the exponent the backend's own ``estimate`` implies for
  the fit: measurements calibrate the constant, the backend's complexity bounds the
  growth from below).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

# The usual growth of each stage's work with n (used with a single measured point).
PRIOR_EXPONENT = {
    "select": 0.0,  # the survey counts every embedding whatever the factor
    "generate": 1.0, "read": 1.0, "transfer": 1.0, "normalise": 1.0, "write": 1.0,
    "cluster": 2.0,  # scikit-learn's exact HDBSCAN is ~n^2.1; faster backends are below
    "medoids": 2.0,  # sum over clusters of size^2; a fixed number of attractors -> ~n^2
}
MIN_EXPONENT = {"select": 0.0}
DEFAULT_MIN_EXPONENT = 1.0
MAX_EXPONENT = 3.0
FIT_WINDOW = 2
MIN_SECONDS = 1e-6  # log(0) guard for stages too fast for the clock

StageKey = tuple[str, str, int]  # (stage, backend or "" when backend-independent, dim)


@dataclass(frozen=True)
class PowerLaw:
    """``seconds(n) = exp(log_a) * n ** exponent``; ``basis`` says how it was obtained."""

    log_a: float
    exponent: float
    basis: str

    def seconds(self, n: float) -> float:
        return math.exp(self.log_a + self.exponent * math.log(max(n, 1)))


def fit_power_law(
    ns: list[int], seconds: list[float], *, prior_exponent: float,
    min_exponent: float = DEFAULT_MIN_EXPONENT, window: int = FIT_WINDOW,
) -> PowerLaw:
    """Least-squares power law through measured points (n >= 1, seconds >= 0).

    Only points at the ``window`` largest distinct n are used. With one distinct n the
    exponent is ``prior_exponent``; otherwise the fitted slope clamped to
    ``[min_exponent, MAX_EXPONENT]``. A clamped line is anchored at the largest n
    measured (the point nearest to what is being projected).
    """
    if not ns:
        raise ValueError("fit_power_law needs at least one point")
    kept_n = sorted(set(ns))[-window:]
    pts = [(math.log(max(n, 1)), math.log(max(s, MIN_SECONDS)))
           for n, s in zip(ns, seconds) if n in kept_n]
    mean_x = sum(x for x, _ in pts) / len(pts)
    mean_y = sum(y for _, y in pts) / len(pts)
    if len(kept_n) < 2:
        return PowerLaw(mean_y - prior_exponent * mean_x, prior_exponent,
                        f"1 point, assumed n^{prior_exponent:g}")
    sxx = sum((x - mean_x) ** 2 for x, _ in pts)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in pts)
    slope = sxy / sxx
    exponent = min(max(slope, min_exponent), MAX_EXPONENT)
    if exponent == slope:
        return PowerLaw(mean_y - exponent * mean_x, exponent,
                        f"fit n^{exponent:.2f} over {len(pts)} points")
    top = [(x, y) for x, y in pts if x == max(p[0] for p in pts)]
    anchor = sum(y - exponent * x for x, y in top) / len(top)
    how = "raised" if exponent > slope else "capped"
    return PowerLaw(anchor, exponent, f"n^{exponent:.2f} (fit {slope:.2f}, {how}) "
                                      f"through the largest n over {len(pts)} points")


@dataclass(frozen=True)
class Projection:
    """Projected seconds of one stage and how the number was obtained."""

    seconds: float
    basis: str

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 6), "basis": self.basis}


class Projector:
    """Measured (n, seconds) points per stage key, and projections from them."""

    def __init__(self) -> None:
        self._points: dict[StageKey, list[tuple[int, float]]] = defaultdict(list)

    def record(self, key: StageKey, n: int, seconds: float) -> None:
        self._points[key].append((int(n), float(seconds)))

    def largest_n(self, key: StageKey) -> int | None:
        pts = self._points.get(key)
        return max(n for n, _ in pts) if pts else None

    def law(self, key: StageKey, min_exponent: float | None = None) -> PowerLaw | None:
        """The current power law of ``key``, or None before its first measurement.

        ``min_exponent`` raises the stage's exponent floor (and its one-point exponent).
        """
        pts = self._points.get(key)
        if not pts:
            return None
        stage = key[0]
        floor = MIN_EXPONENT.get(stage, DEFAULT_MIN_EXPONENT)
        prior = PRIOR_EXPONENT.get(stage, 1.0)
        if min_exponent is not None:
            floor, prior = max(floor, min_exponent), max(prior, min_exponent)
        return fit_power_law([n for n, _ in pts], [s for _, s in pts],
                             prior_exponent=min(prior, MAX_EXPONENT),
                             min_exponent=min(floor, MAX_EXPONENT))

    def project(self, key: StageKey, n: int, prior_s: float,
                min_exponent: float | None = None) -> Projection:
        """Seconds of stage ``key`` at ``n``: the fitted law, or ``prior_s`` without data."""
        law = self.law(key, min_exponent)
        if law is None:
            return Projection(prior_s, "prior (no measurement yet)")
        return Projection(law.seconds(n), law.basis)

    def fits(self) -> dict[str, dict]:
        """Every current law, for the report: 'stage/backend/dim' -> {exponent, ...}."""
        out = {}
        for key in sorted(self._points):
            law = self.law(key)
            out["/".join(str(k) for k in key if k != "")] = {
                "exponent": round(law.exponent, 3), "seconds_at_1e6": law.seconds(10**6),
                "basis": law.basis, "points": [list(p) for p in self._points[key]],
            }
        return out


def budget_verdict(projected_s: float, budget_s: float | None) -> str | None:
    """The skip status of a step projected at ``projected_s`` seconds, or None to run it."""
    if budget_s is not None and projected_s > budget_s:
        return f"skipped: projected {projected_s:,.1f} s > budget {budget_s:g} s"
    return None


def memory_verdict(projected_bytes: int, available_bytes: int) -> str | None:
    """The skip status of a step projected to need more host memory than is free."""
    if projected_bytes > 0.9 * available_bytes:
        return (f"skipped: projected host memory {projected_bytes / 2**30:.1f} GiB > 90% of "
                f"available {available_bytes / 2**30:.1f} GiB")
    return None


# Nominal rates for stages the library has no estimate of, used only before a stage's
# first measurement (deliberately on the slow side: an early skip is cheaper than a hang).
NOMINAL_FLOATS_PER_S = {"generate": 2e7, "normalise": 5e8}
NOMINAL_TRANSFER_BYTES_PER_S = 5e9
NOMINAL_WRITE_ROWS_PER_S = 50_000
NOMINAL_FLOPS = 2e9
ASSUMED_CLUSTERS = 10  # medoid work is 2 * d * sum(m_c^2): equal clusters -> 2*d*n^2/k


def nominal_seconds(stage: str, n: int, dim: int) -> float:
    """A rough prior for ``stage`` on n rows of dim float32 values, in seconds."""
    if stage in NOMINAL_FLOATS_PER_S:
        return n * dim / NOMINAL_FLOATS_PER_S[stage]
    if stage == "transfer":
        return 4 * n * dim / NOMINAL_TRANSFER_BYTES_PER_S
    if stage == "write":
        return n / NOMINAL_WRITE_ROWS_PER_S
    if stage == "medoids":
        # exact medoids cost m^2 per cluster of m; above medoids.EXACT_MAX_MEMBERS each
        # member is scored against a bounded sample, so the cost per member is capped.
        from gpu_cluster.medoids import EXACT_MAX_MEMBERS

        return 2 * dim * n * min(n / ASSUMED_CLUSTERS, EXACT_MAX_MEMBERS) / NOMINAL_FLOPS
    return 0.0
