"""The sweep: every factor (smallest n first) x every model, stage by stage, within a budget.

For each factor and model the *main* backend (the device's default, or ``algorithm``)
runs every stage; with ``baseline`` scikit-learn's reference backend then clusters the
same normalised rows and both records get the adjusted Rand index and the speed ratio.
Before each step its stages are projected from the steps already measured
(``projection``); a step projected past the budget, or past 90% of the free host
memory, is recorded as skipped with the projection instead of being run.

Nothing is left in the database unless ``write`` is set: the write stage runs in full in
a transaction whose commit is turned into a rollback (``rollback_only_engine``), and the
number of stored results is checked before and after.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Callable

import psutil
import sqlalchemy as sa

from gpu_cluster import params as P
from gpu_cluster.backends import DEFAULT_ALGORITHM, MODULES, load_backend
from gpu_cluster.database import open_database, parse_target
from gpu_cluster.device import Device, resolve_device
from gpu_cluster.errors import DatabaseError, GpuClusterError, ParameterError
from gpu_cluster.planner import (
    JOIN_SCAN_ROWS_PER_S, PLAIN_SCAN_ROWS_PER_S, available_memory, plan_model, plan_rows,
)
from gpu_cluster.progress import Reporter, format_seconds
from gpu_cluster.schema import clusteringresult
from gpu_cluster.selection import survey_embeddings

from .machine import machine_facts
from .measure import (
    DbTarget, StepRecord, StepTimer, measure_baseline, measure_db_step, measure_synthetic_step,
    planned_params, projections_dict, warm_up,
)
from .projection import Projection, Projector, budget_verdict, memory_verdict, nominal_seconds
from .readpath import DEFAULT_REPEATS, compare_read_paths

log = logging.getLogger("gpu_cluster.bench")

REFERENCE = ("cpu", "reference")
BACKEND_STAGES = ("cluster", "medoids")  # stages whose cost depends on the backend
SYNTHETIC_MODEL = "synthetic"


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep; validated on construction (ParameterError)."""

    db: str | None
    factors: tuple[int, ...]
    device: str = "auto"
    models: tuple[str, ...] = ()
    algorithm: str | None = None
    budget_s: float | None = 600.0
    baseline: bool = False
    write: bool = False
    synthetic: tuple[int, int] | None = None
    batch_size: int = P.DEFAULT_BATCH_SIZE
    seed: int = 0
    read_path: bool = True
    requested: P.RequestedParams = field(default_factory=P.RequestedParams)

    def __post_init__(self):
        if (self.db is None) == (self.synthetic is None):
            raise ParameterError("give either a database or --synthetic N,D (exactly one)")
        if self.synthetic is not None and (self.write or self.models):
            raise ParameterError("--synthetic has no database: --write and --model do not apply")
        if not self.factors or any(not isinstance(f, int) or f < 1 for f in self.factors):
            raise ParameterError(f"--factors {self.factors!r}: need integers >= 1")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ParameterError(f"--budget-s {self.budget_s!r}: must be > 0 seconds")
        P.validate(batch_size=self.batch_size)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["factors_run_order"] = sorted(set(self.factors), reverse=True)
        return out


@dataclass
class Sweep:
    """Everything a sweep produced; ``report`` turns it into files and tables."""

    config: dict
    machine: dict
    device: dict
    backends: dict
    started: str
    steps: list[StepRecord] = field(default_factory=list)
    read_path: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    database_check: dict = field(default_factory=dict)
    warmup_s: dict = field(default_factory=dict)
    status: str = "running"
    finished: str | None = None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "steps"}
        out["steps"] = [s.as_dict() for s in self.steps]
        return out


@dataclass
class StepPlan:
    """Known before a step runs: n, dim, a reason to skip, and library-based priors (s)."""

    n: int
    dim: int
    stages: tuple[str, ...]
    skip_reason: str | None = None
    host_bytes: int = 0
    priors: dict = field(default_factory=dict)
    fit_estimate: Callable[[int], float] | None = None  # the backend's seconds at n rows


def fit_estimator(backend: ModuleType, dim: int,
                  requested: P.RequestedParams) -> Callable[[int], float]:
    """n -> the backend's own estimate of one fit's seconds at n rows, with the
    parameters a run would use there (min_samples capped to the device's memory); 0 where
    its plan refuses the fit (no growth exponent is then implied)."""
    def estimate(n: int) -> float:
        params = planned_params(requested, n, dim, backend)
        return backend.estimate(n, dim, params)[0] if params is not None else 0.0

    return estimate


def estimate_exponent(estimate: Callable[[int], float], n_from: int | None,
                      n_to: int) -> float | None:
    """The growth exponent an estimate implies between two sizes (None if undefined)."""
    if not n_from or n_from == n_to:
        return None
    a, b = estimate(n_from), estimate(n_to)
    if a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(n_to / n_from)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def rollback_only_engine(db: str) -> sa.Engine:
    """A write engine on ``db`` whose every COMMIT is a ROLLBACK.

    ``write_result`` runs unchanged (BEGIN IMMEDIATE, every insert, the commit call) but
    nothing persists. The dialect instance belongs to this engine alone, so no other
    engine is affected. The timed write therefore excludes the final commit's fsync.
    """
    engine = open_database(db, write=True)
    engine.dialect.do_commit = engine.dialect.do_rollback
    return engine


def result_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(clusteringresult)).scalar_one()


class DbSource:
    """Steps on a database: the initial survey gives every step's n without reading."""

    def __init__(self, cfg: SweepConfig, reporter: Reporter):
        self.cfg, self.reporter = cfg, reporter
        engine = open_database(cfg.db, write=False)
        write_engine, mode = self._write_engine(cfg)
        self.target = DbTarget(engine, write_engine, mode, cfg.batch_size)
        start = time.perf_counter()
        with reporter.stage("survey", unit="queries"), engine.connect() as conn:
            self.surveys = survey_embeddings(conn, list(cfg.models) or None)
        self.survey_s = time.perf_counter() - start  # the prior of every step's select
        self.models = list(self.surveys)
        self.results_before = result_count(engine)

    @staticmethod
    def _write_engine(cfg: SweepConfig) -> tuple[sa.Engine | None, str]:
        if cfg.write:
            return open_database(cfg.db, write=True), "committed"
        try:
            return rollback_only_engine(cfg.db), "rolled back"
        except DatabaseError as exc:
            return None, f"skipped: {exc}"

    def plan(self, model: str, factor: int, backend: ModuleType, device: Device) -> StepPlan:
        p = plan_model(self.surveys[model].selection(factor), self.cfg.requested, backend,
                       available_memory(backend), batch_size=self.cfg.batch_size)
        stages = ("select", "read", "normalise", "cluster", "medoids",
                  *(("write",) if self.target.write_engine is not None else ()))
        priors = {"select": self.survey_s, "read": p.read_seconds, "cluster": p.fit_seconds}
        return StepPlan(p.n, p.selection.dim, stages, p.skip_reason, p.host_bytes, priors,
                        fit_estimator(backend, p.selection.dim, self.cfg.requested))

    def measure(self, timer: StepTimer, backend: ModuleType):
        return measure_db_step(timer, self.target, backend, self.cfg.requested)

    def read_path(self, projector: Projector) -> dict:
        """The read-path comparison on the largest model, if the budget allows."""
        target = parse_target(self.cfg.db)
        if target.sqlite_path is None:
            return {"status": "skipped: not a SQLite file (the raw scan uses sqlite3)"}
        sized = [(s.selection(1).expected_rows, m) for m, s in self.surveys.items() if s.dim]
        if not sized:
            return {"status": "skipped: no readable embeddings"}
        n, model = max(sized)
        survey = self.surveys[model]
        rate = JOIN_SCAN_ROWS_PER_S if survey.selection(1).needs_join else PLAIN_SCAN_ROWS_PER_S
        one = projector.project(stage_key("read", "", survey.dim), n, n / rate).seconds
        projected = 2 * DEFAULT_REPEATS * one  # raw + library per repeat
        if verdict := budget_verdict(projected, self.cfg.budget_s):
            return {"status": verdict, "model": model, "n": n}
        return compare_read_paths(target.sqlite_path, self.target.read_engine, survey,
                                  batch_size=self.cfg.batch_size, reporter=self.reporter)

    def close(self) -> dict:
        """Dispose the engines; returns the stored-results check."""
        # Counted last through the read-write engine when there is one: the last connection
        # to close a WAL database must be read-write to checkpoint and remove -wal/-shm.
        after = result_count(self.target.write_engine or self.target.read_engine)
        check = {"write": self.target.write_mode, "results_before": self.results_before,
                 "results_after": after}
        if not self.cfg.write and after != self.results_before:
            log.error("the number of stored results changed from %d to %d without --write",
                      self.results_before, after)
        self.target.read_engine.dispose()
        if self.target.write_engine is not None:
            self.target.write_engine.dispose()
        return check


class SyntheticSource:
    """Steps on generated data: factor f means n = N // f rows of dimension D."""

    def __init__(self, cfg: SweepConfig, reporter: Reporter):
        self.cfg = cfg
        self.size, self.dim = cfg.synthetic
        self.models = [SYNTHETIC_MODEL]

    def plan(self, model: str, factor: int, backend: ModuleType, device: Device) -> StepPlan:
        n = self.size // factor
        plan = plan_rows(SYNTHETIC_MODEL, n, self.dim, self.cfg.requested, backend,
                         available_memory(backend))
        stages = ("generate", *(("transfer",) if device.kind == "gpu" else ()),
                  "normalise", "cluster", "medoids")
        if plan.skip_reason:
            return StepPlan(n, self.dim, stages, plan.skip_reason)
        # A plan that refuses the fit (nothing fits) is run: the step records its reason.
        return StepPlan(n, self.dim, stages, None, plan.host_bytes, {"cluster": plan.fit_seconds},
                        fit_estimator(backend, self.dim, self.cfg.requested))

    def measure(self, timer: StepTimer, backend: ModuleType):
        return measure_synthetic_step(timer, self.dim, self.cfg.seed, backend, self.cfg.requested)

    def read_path(self, projector: Projector) -> dict:
        return {"status": "skipped: synthetic data (no database)"}

    def close(self) -> dict:
        return {"write": "none (synthetic data)"}


def stage_key(stage: str, backend: str, dim: int) -> tuple[str, str, int]:
    return (stage, backend if stage in BACKEND_STAGES else "", dim)


def project_stages(projector: Projector, plan: StepPlan, backend: str) -> dict[str, Projection]:
    """Projected seconds of each of the plan's stages (fit, else prior).

    The cluster stage's exponent is at least the one the backend's own estimate implies
    from the largest measured n to this one.
    """
    out = {}
    for stage in plan.stages:
        key = stage_key(stage, backend, plan.dim)
        prior = plan.priors.get(stage, nominal_seconds(stage, plan.n, plan.dim))
        floor = None
        if stage == "cluster" and plan.fit_estimate is not None:
            floor = estimate_exponent(plan.fit_estimate, projector.largest_n(key), plan.n)
        out[stage] = projector.project(key, plan.n, prior, min_exponent=floor)
    return out


def learn(projector: Projector, record: StepRecord) -> None:
    """Feed a step's measured stages to the projector."""
    for stage, seconds in record.seconds.items():
        projector.record(stage_key(stage, record.backend, record.dim), record.n, seconds)


def log_step(record: StepRecord) -> None:
    if record.status != "ok":
        log.warning("%s: %s", record.label, record.status)
        return
    stages = ", ".join(f"{k} {format_seconds(v)}" for k, v in record.seconds.items())
    log.info("%s: n=%d, %s clusters, %.1f%% noise, total %s (%s)", record.label, record.n,
             record.n_clusters, 100 * (record.noise_fraction or 0), format_seconds(record.total_s),
             stages)


def pick_backends(device: Device, cfg: SweepConfig) -> tuple[ModuleType, ModuleType | None, str]:
    """(main backend, baseline backend or None, a note on the baseline)."""
    main = load_backend(device.kind, cfg.algorithm)
    if not cfg.baseline:
        return main, None, "not requested (--baseline)"
    if (main.DEVICE, main.NAME) == REFERENCE:
        return main, None, "the main backend is the reference; nothing to compare against"
    return main, load_backend(*REFERENCE), "scikit-learn reference on the same normalised rows"


class SweepRun:
    """One sweep in progress: the source, the backends, the projector and the records."""

    def __init__(self, cfg: SweepConfig, reporter: Reporter, on_step=None):
        self.cfg, self.reporter, self.on_step = cfg, reporter, on_step or (lambda sweep: None)
        self.device = resolve_device(cfg.device)
        self.main, self.baseline, note = pick_backends(self.device, cfg)
        self.projector = Projector()
        self.sweep = Sweep(
            config=cfg.as_dict(), machine=machine_facts(), started=now(),
            device={"kind": self.device.kind, "why": self.device.why, "name": self.device.name},
            backends={"main": self.main.NAME, "baseline": self.baseline and self.baseline.NAME,
                      "baseline_note": note, "defaults": dict(DEFAULT_ALGORITHM),
                      "available": sorted(f"{d}/{a}" for d, a in MODULES)},
        )
        log.info("device: %s (%s); main backend: %s; baseline: %s", self.device.kind,
                 self.device.why, self.main.NAME, self.baseline.NAME if self.baseline else note)

    def run(self) -> Sweep:
        source = (SyntheticSource if self.cfg.synthetic else DbSource)(self.cfg, self.reporter)
        try:
            self.warm_up()
            for factor in sorted(set(self.cfg.factors), reverse=True):
                for model in source.models:
                    self.factor_model(source, factor, model)
            if self.cfg.read_path:
                self.sweep.read_path = source.read_path(self.projector)
                self.on_step(self.sweep)
            self.sweep.status = "complete"
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            self.sweep.status = f"interrupted by {signal.Signals(signum).name}"
            for step in self.sweep.steps:
                if step.status == "pending":
                    step.status = "interrupted"
        finally:
            self.sweep.database_check = source.close()
            self.sweep.fits = self.projector.fits()
            self.sweep.finished = now()
        return self.sweep

    def warm_up(self) -> None:
        """One tiny fit per backend before anything is timed (imports, JIT)."""
        cpu = Device("cpu", "baseline")
        for backend, device in ((self.main, self.device), (self.baseline, cpu)):
            if backend is not None:
                with self.reporter.stage(f"warm-up: {backend.NAME}", unit="fit"):
                    self.sweep.warmup_s[backend.NAME] = warm_up(backend, device)

    def factor_model(self, source, factor: int, model: str) -> None:
        record, clustered = self.main_step(source, factor, model)
        self.on_step(self.sweep)
        if self.baseline is not None and clustered is not None:
            self.baseline_step(record, clustered)
            self.on_step(self.sweep)

    def main_step(self, source, factor: int, model: str):
        plan = source.plan(model, factor, self.main, self.device)
        record = StepRecord(factor, model, "main", self.main.NAME, self.device.kind,
                            n=plan.n, dim=plan.dim)
        self.sweep.steps.append(record)
        if plan.skip_reason:
            record.status = f"skipped: {plan.skip_reason}"
            log_step(record)
            return record, None
        record.projected = projections_dict(project_stages(self.projector, plan, self.main.NAME))
        available = psutil.virtual_memory().available
        verdict = (budget_verdict(record.projected_total_s, self.cfg.budget_s)
                   or memory_verdict(plan.host_bytes, available))
        if verdict:
            record.status = verdict
            log_step(record)
            return record, None
        clustered = self.measure(record, lambda timer: source.measure(timer, self.main))
        return record, clustered

    def baseline_step(self, main: StepRecord, clustered) -> None:
        base = self.baseline
        record = StepRecord(main.factor, main.model, "baseline", base.NAME, "cpu",
                            n=main.n, dim=main.dim)
        self.sweep.steps.append(record)
        fit_s, fit_bytes = base.estimate(main.n, main.dim, clustered.plan.params)
        plan = StepPlan(main.n, main.dim, ("cluster",), priors={"cluster": fit_s},
                        fit_estimate=fit_estimator(base, main.dim, self.cfg.requested))
        record.projected = projections_dict(project_stages(self.projector, plan, base.NAME))
        verdict = (budget_verdict(record.projected_total_s, self.cfg.budget_s)
                   or memory_verdict(fit_bytes, psutil.virtual_memory().available))
        if verdict:
            record.status = verdict
            log_step(record)
            return
        self.measure(record, lambda timer: measure_baseline(timer, main, clustered, base))

    def measure(self, record: StepRecord, work):
        """Run ``work(timer)``; a failure is recorded and the sweep goes on."""
        result = None
        try:
            result = work(StepTimer(record, self.reporter, self.device))
        except (MemoryError, RuntimeError, ValueError, GpuClusterError) as exc:
            log.exception("%s: failed", record.label)
            record.status = f"failed: {type(exc).__name__}: {exc}"
        learn(self.projector, record)
        log_step(record)
        return result


def run_sweep(cfg: SweepConfig, reporter: Reporter | None = None, on_step=None) -> Sweep:
    """Run the sweep ``cfg`` describes; ``on_step(sweep)`` after every step (to save)."""
    return SweepRun(cfg, reporter or Reporter(), on_step).run()
