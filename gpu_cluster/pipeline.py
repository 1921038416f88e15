"""The run: for each embedding model, select -> load -> normalise -> cluster -> medoids -> write.

``cluster_database`` is what ``gpu-cluster cluster`` calls. Each model is independent:
a model with too few vectors (or mostly unusable rows) is skipped with its reason, a
model whose fit fails is recorded as failed, and the run goes on. Nothing is written for
a model until its clustering and medoids are complete, and then in one short
transaction. A database failure (full disk, a lock held past ``--lock-timeout``) or an
interruption stops the run; the log says during which model and stage, and how many
models were already stored.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
import time
from dataclasses import dataclass, field, replace
from types import ModuleType

import sqlalchemy as sa

from . import __version__
from . import isolation
from . import params as P
from .backends import Labels, load_backend
from .budget import MemoryBudgetError, default_host_budget
from .database import DEFAULT_LOCK_TIMEOUT_S, Snapshot, database_errors, open_database
from .device import Device, resolve_device, to_host
from .errors import DatabaseError, ModelSkipped
from .loading import LoadedVectors, load_vectors, mostly_unusable_reason, normalise_rows
from .medoids import medoid_indices
from .planner import ModelPlan, fit_params, plan_model
from .progress import Reporter, format_seconds
from .selection import ModelSurvey, survey_embeddings
from .writer import ResultToWrite, write_result

log = logging.getLogger("gpu_cluster")


@dataclass(frozen=True)
class RunOptions:
    """Options of one ``cluster`` run (validated on construction)."""

    downsample: int = 1
    models: tuple[str, ...] = ()
    device: str = "auto"
    algorithm: str | None = None
    requested: P.RequestedParams = field(default_factory=P.RequestedParams)
    batch_size: int = P.DEFAULT_BATCH_SIZE
    replace: bool = False
    memory_budget: int | None = None  # host bytes for a CPU fit (default: 45% of the RAM)
    gpu_memory: int | None = None  # device bytes to plan with (default: free memory)
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S  # seconds to wait for another process's lock

    def __post_init__(self):
        P.validate(downsample=self.downsample, batch_size=self.batch_size,
                   lock_timeout=self.lock_timeout)


@dataclass
class ModelOutcome:
    """What happened to one model: status is 'clustered', 'skipped' or 'failed'."""

    model: str
    status: str
    reason: str = ""
    n: int = 0
    n_clusters: int = 0
    n_noise: int = 0
    result_id: str | None = None
    seconds: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    outcomes: list[ModelOutcome]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


def library_versions() -> dict:
    """Versions stored with a result. scikit-learn's is read from its metadata, not by
    importing it: only the reference backend uses it (None when it is not installed)."""
    import numpy

    try:
        sklearn_version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        sklearn_version = None
    return {"gpu_cluster": __version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn_version, "sqlalchemy": sa.__version__,
            "python": platform.python_version()}


def survey_models(snapshot: Snapshot, models: tuple[str, ...], reporter: Reporter) -> dict[str, ModelSurvey]:
    """Count every model's embeddings by layout (one grouped query), in ``snapshot``."""
    with reporter.stage("survey", unit="queries"), database_errors("surveying the embeddings"):
        with snapshot.reading() as conn:
            return survey_embeddings(conn, list(models) or None)


@dataclass
class ModelClock:
    """Seconds per stage of one model, and the stage running now (for the stop line)."""

    stage: str = "select"
    seconds: dict = field(default_factory=dict)

    def run(self, name: str, work):
        """``work()``, timed as stage ``name``."""
        self.stage = name
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.seconds[name] = time.perf_counter() - start


def cluster_database(db: str, options: RunOptions, reporter: Reporter | None = None) -> RunSummary:
    """Cluster every (or each requested) embedding model of ``db`` and store the results.

    Raises DatabaseError (full disk, lock timeout) and lets KeyboardInterrupt through,
    after logging where the run stopped; results stored before that stay.
    """
    reporter = reporter or Reporter()
    engine = open_database(db, write=True, lock_timeout_s=options.lock_timeout,
                           lock_heartbeat_s=max(reporter.heartbeat_s, 1.0))
    outcomes: list[ModelOutcome] = []
    place, clock = "startup", None  # where the run is, for the line saying where it stopped
    snapshot = Snapshot(engine)  # the survey and every read see the same rows
    try:
        device = resolve_device(options.device)
        backend = load_backend(device.kind, options.algorithm)
        check_explicit_params(backend, options.requested)
        log.info("device: %s (%s); backend: %s", device.kind, device.why, backend.NAME)
        place = "survey"
        surveys = survey_models(snapshot, options.models, reporter)
        for i, (model, s) in enumerate(surveys.items(), 1):
            log.info("model %d/%d: %s", i, len(surveys), model)
            place, clock = model, ModelClock()
            outcomes.append(cluster_model(engine, s, options, device, backend, reporter, clock,
                                          snapshot))
            log_outcome(outcomes[-1])
        return RunSummary(outcomes)
    except (KeyboardInterrupt, DatabaseError) as exc:
        log_stop(exc, f"{place}: {clock.stage}" if clock else place, outcomes)
        raise
    finally:
        snapshot.close()
        engine.dispose()


def log_stop(exc: BaseException, where: str, outcomes: list[ModelOutcome]) -> None:
    """One line saying where the run stopped and which models are already stored."""
    stored = [o.model for o in outcomes if o.status == "clustered"]
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by a database error"
    names = f": {', '.join(stored)}" if stored else ""
    log.error("%s during %s; %d model(s) already stored%s", what, where, len(stored), names)


def log_outcome(o: ModelOutcome) -> None:
    if o.status == "clustered":
        log.info("%s: clustered n=%d into %d clusters, %.1f%% noise, result %s (%s)", o.model,
                 o.n, o.n_clusters, 100 * o.n_noise / max(o.n, 1), o.result_id,
                 ", ".join(f"{k} {format_seconds(v)}" for k, v in o.seconds.items()))
    else:
        log.warning("%s: %s: %s", o.model, o.status.upper(), o.reason)


def available_memory(device: Device, options: RunOptions) -> int:
    """Bytes a fit may plan with: free GPU memory, or the host budget."""
    if device.kind == "gpu":
        from .gpu_memory import free_device_memory

        return options.gpu_memory or free_device_memory()
    return options.memory_budget or default_host_budget()


def cluster_model(
    engine: sa.Engine, survey: ModelSurvey, options: RunOptions, device: Device,
    backend: ModuleType, reporter: Reporter, clock: ModelClock | None = None,
    snapshot: Snapshot | None = None,
) -> ModelOutcome:
    """Run one model through every stage; never raises for a skip or a failed fit.

    ``clock`` (optional) receives the per-stage seconds and the stage running now;
    ``snapshot`` is the one the survey was taken in (default: a fresh one).
    """
    clock = clock or ModelClock()
    snapshot = snapshot or Snapshot(engine)
    seconds = clock.seconds
    available = available_memory(device, options)
    plan = plan_model(survey, options.downsample, options.requested, backend, available)
    sel = plan.selection
    log.info("%s: %d embeddings, %d selected (%s); skipped at selection: %d wrong length "
             "(blob not 4*%d bytes), %d NULL, %d without invocation", survey.model,
             survey.total, sel.expected_rows, sel.rule, sel.wrong_length, sel.dim,
             sel.null_vectors, survey.orphans)
    try:
        if reason := mostly_unusable_reason(sel) or plan.skip_reason:
            raise ModelSkipped(reason)
        if plan.failure:  # known before reading a single vector
            raise MemoryBudgetError(plan.failure)
        loaded = clock.run("read", lambda: read_model(snapshot, plan, options, device, reporter))
        if reason := mostly_unusable_reason(sel, loaded.skipped):
            raise ModelSkipped(reason)
        if reason := P.too_few_reason(loaded.n, P.resolve(options.requested, loaded.n)):
            raise ModelSkipped(reason)
        params, memory = fit_params(options.requested, loaded.n, sel.dim, backend, available)
        log.info("%s: %s", survey.model, memory.reason)
        clock.run("normalise", lambda: normalise_rows(loaded.vectors))
        labels = clock.run("cluster", lambda: fit(backend, loaded, params, plan, reporter))
        medoids = clock.run("medoids", lambda: find_medoids(loaded, labels, reporter))
    except ModelSkipped as skip:
        return ModelOutcome(survey.model, "skipped", skip.reason, seconds=seconds)
    except MemoryBudgetError as exc:
        return ModelOutcome(survey.model, "failed", str(exc), seconds=seconds)
    except (MemoryError, RuntimeError, ValueError) as exc:
        log.exception("%s: clustering failed", survey.model)
        return ModelOutcome(survey.model, "failed", f"{type(exc).__name__}: {exc}", seconds=seconds)
    parameters = stored_parameters(plan, params, loaded, labels, device, backend, seconds)
    parameters["memory_plan"] = memory.as_dict()
    result = ResultToWrite(survey.model, loaded.ids, labels.labels, medoids, parameters)
    result_id = clock.run("write", lambda: write_model(engine, result, options, reporter))
    return ModelOutcome(survey.model, "clustered", "", loaded.n, labels.n_clusters,
                        labels.n_noise, result_id, seconds)


def write_model(engine, result: ResultToWrite, options: RunOptions, reporter) -> str:
    with reporter.stage(f"{result.model}: write", total=result.ids.shape[0]) as st:
        return write_result(engine, result, replace=options.replace, stage=st)


def read_model(snapshot: Snapshot, plan: ModelPlan, options: RunOptions, device: Device,
               reporter) -> LoadedVectors:
    sel = plan.selection
    with reporter.stage(f"{sel.model}: read", total=sel.expected_rows) as st:
        with database_errors(f"reading {sel.model}'s vectors"):
            with snapshot.reading() as conn:  # the survey's rows; released after the read
                return load_vectors(conn, sel, batch_size=options.batch_size,
                                    device=device.kind, stage=st)


def fit(backend, loaded: LoadedVectors, params: P.HdbscanParams, plan: ModelPlan, reporter) -> Labels:
    """The backend's fit, isolated (see isolation.py) so heartbeats and signals go on."""
    estimate_s, _ = backend.estimate(loaded.n, plan.selection.dim, params)
    with reporter.stage(f"{plan.model}: cluster", unit="fit", estimate_s=estimate_s):
        return isolation.fit(backend, loaded.vectors, params)


def find_medoids(loaded: LoadedVectors, labels: Labels, reporter):
    with reporter.stage(f"{loaded.model}: medoids", total=labels.n_clusters, unit="clusters") as st:
        return medoid_indices(loaded.vectors, to_host(labels.labels), to_host(labels.probabilities),
                              on_cluster=st.advance)


def stored_parameters(plan, params, loaded, labels, device, backend, seconds) -> dict:
    """The ``parameters`` JSON: enough to reproduce and judge the run."""
    sel = plan.selection
    return {
        **params.as_dict(),
        "normalised": True,
        "downsample": sel.factor,
        "selection_rule": sel.rule,
        "embeddings_total": sel.survey.total,
        "selected": sel.expected_rows,
        "skipped_rows": {"wrong_length": sel.wrong_length, "null_vector": sel.null_vectors,
                         **dict(loaded.skipped)},
        "n": loaded.n,
        "dim": sel.dim,
        "n_clusters": labels.n_clusters,
        "n_noise": labels.n_noise,
        "backend": backend.NAME,
        "device": device.kind,
        "device_name": device.name,
        "device_choice": device.why,
        "backend_details": labels.details,
        "versions": library_versions(),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def check_explicit_params(backend: ModuleType, requested: P.RequestedParams) -> None:
    """Refuse, before any work, an explicit value the backend can never accept."""
    check = getattr(backend, "check_requested", None)
    if check is not None:
        check(requested)


def plan_database(
    db: str, *, downsample: int = 1, models: tuple[str, ...] = (), device: str = "auto",
    algorithm: str | None = None, requested: P.RequestedParams | None = None,
    memory_budget: int | None = None, gpu_memory: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[Device, list[ModelPlan]]:
    """Plan every (or each requested) model of ``db``; reads counts only, writes nothing.

    ``device='gpu'`` with ``gpu_memory`` plans for a GPU of that size even on a machine
    without one.
    """
    P.validate(downsample=downsample, lock_timeout=lock_timeout)
    requested = requested or P.RequestedParams()
    engine = open_database(db, write=False, lock_timeout_s=lock_timeout)
    try:
        if device == "gpu" and gpu_memory:
            dev = Device("gpu", f"planning for a GPU with {gpu_memory / 2**30:.1f} GiB", "planned")
        else:
            dev = resolve_device(device)
        backend = load_backend(dev.kind, algorithm)
        check_explicit_params(backend, requested)
        available = available_memory(dev, RunOptions(memory_budget=memory_budget,
                                                     gpu_memory=gpu_memory))
        with database_errors("surveying the embeddings"), engine.connect() as conn:
            surveys = survey_embeddings(conn, list(models) or None)
        plans = [plan_model(s, downsample, requested, backend, available) for s in surveys.values()]
        return dev, [replace(p, skip_reason=mostly_unusable_reason(p.selection) or p.skip_reason)
                     for p in plans]
    finally:
        engine.dispose()
