"""The run: for each embedding model, plan -> read -> normalise -> cluster -> medoids -> write.

Each stage is a small public function of plain data (:class:`ModelWork`, the model's
data so far, and :class:`RunEnv`, what every stage needs), timed through one hook
(``clock.run(name, work)``, :class:`ModelClock` by default). ``cluster_model`` is the
local runner, a loop over them; ``compute_from_database`` runs every stage but the write
for one model from a database URL, a model name and options, as a scale-out worker does
(scaleout.py, where the driver writes); ``benchmarks/`` times the same functions.

``cluster_database`` is what ``gpu-cluster cluster`` calls. Each model is independent:
a model with too few vectors (or mostly unusable rows) is skipped with its reason, a
model whose fit fails is recorded as failed, and the run goes on. Nothing is written for
a model until its clustering and medoids are complete, and then in one short
transaction, which waits for another process's lock as long as it takes unless
``--lock-timeout`` bounds it. A database failure (full disk, a lock held past that
bound) or an interruption stops the run; the log says during which model and stage,
and how many models were already stored. A result computed but not stored is kept
beside the database (pending.py) and stored by the next run instead of a new fit.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import sqlalchemy as sa

from . import __version__
from . import isolation
from . import params as P
from .backends import load_backend
from .labels import Labels
from .budget import MemoryBudgetError
from . import pending
from .database import DEFAULT_LOCK_TIMEOUT_S, Snapshot, database_errors, open_database, parse_target
from .device import Device, array_module, resolve_device, to_host
from .distinct import row_hashes
from .errors import DatabaseError, ModelSkipped, ResultKept, UnknownName
from .ids import new_ids
from .loading import LoadedVectors, load_vectors, mostly_unusable_reason, normalise_rows
from .medoids import medoid_indices
from .planner import ModelPlan, available_memory, plan_for_rows, plan_model
from .pending import PendingResult
from .progress import Reporter, format_seconds
from .results import model_result_parameters, result_exists
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
    lock_timeout: float | None = None  # seconds to wait for another process's lock; None: no limit

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
    """Count every model's embeddings by layout (one grouped query), in ``snapshot``.

    Raises UnknownName, listing the models the database has, for a requested model
    without a single embedding.
    """
    with reporter.stage("survey", unit="queries"), database_errors("surveying the embeddings"):
        with snapshot.reading() as conn:
            return requested_surveys(survey_embeddings(conn, None), models)


def requested_surveys(surveys: dict[str, ModelSurvey], models: tuple[str, ...]) -> dict[str, ModelSurvey]:
    """The surveys of ``models`` (all when empty), or UnknownName for a model not there."""
    unknown = [m for m in dict.fromkeys(models) if m not in surveys]
    if unknown:
        having = ", ".join(f"{m} ({s.total:,} embeddings)" for m, s in surveys.items()) or "none"
        names = ", ".join(repr(m) for m in unknown)
        raise UnknownName(f"no embeddings of model {names} in this database; its models: {having}")
    return {m: surveys[m] for m in dict.fromkeys(models)} if models else surveys


@dataclass
class ModelClock:
    """The stages' timing hook: seconds per stage of one model, and the stage running now
    (for the stop line). Any object with this ``run`` can time the stages instead."""

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


@dataclass
class RunEnv:
    """What every stage of a run needs besides the model's data.

    available: bytes the fit may plan with (host budget, or GPU memory).
    kept_dir: where results that could not be stored are kept (None: nowhere).
    """

    engine: sa.Engine
    snapshot: Snapshot
    options: RunOptions
    device: Device
    backend: ModuleType
    reporter: Reporter
    available: int
    kept_dir: Path | None = None


@dataclass
class ModelWork:
    """One model's data as the stages fill it in: the plan, then the rows read, their
    hashes (identical rows: the fit's estimate and the medoids use them), the labels and
    the medoid rows ((k,) int64 row of each cluster's medoid)."""

    survey: ModelSurvey | None  # None for rows not from a database (benchmarks' synthetic)
    plan: ModelPlan
    loaded: LoadedVectors | None = None
    hashes: np.ndarray | None = None  # (n,) uint64 of the normalised rows; None on a device
    labels: Labels | None = None
    medoid_rows: np.ndarray | None = None

    @property
    def model(self) -> str:
        return self.plan.model


def open_backend(device: Device, options: RunOptions) -> ModuleType:
    """The backend for ``device`` and ``--algorithm``, after its refusal of an explicit
    value it can never accept (``check_requested``, before any work)."""
    backend = load_backend(device.kind, options.algorithm)
    check = getattr(backend, "check_requested", None)
    if check is not None:
        check(options.requested)
    return backend


def run_env(engine: sa.Engine, snapshot: Snapshot, options: RunOptions, device: Device,
            backend: ModuleType, reporter: Reporter, kept_dir: Path | None = None) -> RunEnv:
    return RunEnv(engine, snapshot, options, device, backend, reporter,
                  available_memory(backend, options.memory_budget, options.gpu_memory), kept_dir)


def cluster_database(db: str, options: RunOptions, reporter: Reporter | None = None) -> RunSummary:
    """Cluster every (or each requested) embedding model of ``db`` and store the results.

    Raises DatabaseError (full disk, lock timeout) and lets KeyboardInterrupt through,
    after logging where the run stopped; results stored before that stay.
    """
    reporter = reporter or Reporter()
    engine = open_database(db, write=True, lock_timeout_s=options.lock_timeout,
                           lock_heartbeat_s=max(reporter.heartbeat_s, 1.0))
    target = parse_target(db)
    kept_dir = pending.pending_dir(target.label, target.sqlite_path)
    outcomes: list[ModelOutcome] = []
    place, clock = "startup", None  # where the run is, for the line saying where it stopped
    snapshot = Snapshot(engine)  # the survey and every read see the same rows
    try:
        device = resolve_device(options.device)
        backend = open_backend(device, options)
        log.info("device: %s (%s); backend: %s", device.kind, device.why, backend.NAME)
        env = run_env(engine, snapshot, options, device, backend, reporter, kept_dir)
        place = "survey"
        surveys = survey_models(snapshot, options.models, reporter)
        for i, (model, s) in enumerate(surveys.items(), 1):
            log.info("model %d/%d: %s", i, len(surveys), model)
            place, clock = model, ModelClock()
            outcomes.append(cluster_model(s, env, clock))
            log_outcome(outcomes[-1])
        return RunSummary(outcomes)
    except (KeyboardInterrupt, DatabaseError) as exc:
        log_stop(exc, f"{place}: {clock.stage}" if clock else place, outcomes)
        raise
    finally:
        snapshot.close()
        engine.dispose()


def compute_from_database(db: str, model: str, options: RunOptions,
                          reporter: Reporter | None = None,
                          survey: ModelSurvey | None = None) -> PendingResult | ModelOutcome:
    """Every stage but the write for one model of ``db``, from plain data (a database URL,
    a model name, options), as a scale-out worker runs it (scaleout.py): the result to
    store, or the outcome of a skip or failed fit. Opens the database read-only. ``survey``:
    the driver's survey of the model (on SQLite its rowid bound keeps every worker's read
    to the rows the driver surveyed); None surveys here. Raises DatabaseError and
    UnknownName."""
    reporter = reporter or Reporter()
    engine = open_database(db, write=False, lock_timeout_s=options.lock_timeout,
                           lock_heartbeat_s=max(reporter.heartbeat_s, 1.0))
    snapshot = Snapshot(engine)
    try:
        device = resolve_device(options.device)
        env = run_env(engine, snapshot, options, device, open_backend(device, options), reporter)
        if survey is None:
            survey = survey_models(snapshot, (model,), reporter)[model]
        return compute_model(survey, env, ModelClock())
    finally:
        snapshot.close()
        engine.dispose()


def check_run(db: str, options: RunOptions) -> tuple[Device, dict[str, ModelSurvey]]:
    """Everything a run checks before its first fit, and nothing more: the database
    opens for writing with panic-tda's tables, the device and backend are usable, the
    explicit parameters are possible, and every requested model exists. Writes nothing.
    (``kept_results_of(db)`` lists results kept by earlier runs.)
    """
    engine = open_database(db, write=True, lock_timeout_s=options.lock_timeout)
    try:
        device = resolve_device(options.device)
        open_backend(device, options)
        with database_errors("surveying the embeddings"), engine.connect() as conn:
            return device, requested_surveys(survey_embeddings(conn, None), options.models)
    finally:
        engine.dispose()


def kept_results_of(db: str) -> list[PendingResult]:
    """Results computed by earlier runs of ``db`` and kept because they could not be stored."""
    target = parse_target(db)
    return pending.kept_results(pending.pending_dir(target.label, target.sqlite_path))


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


# ------------------------------------------------------------------ the stages


def plan_stage(survey: ModelSurvey, env: RunEnv) -> ModelWork:
    """Plan the model from its survey (counts only): the parameters it will be fitted
    with, or why it is skipped (mostly unusable rows, too few) or fails (memory)."""
    plan = plan_model(survey.selection(env.options.downsample), env.options.requested,
                      env.backend, env.available, batch_size=env.options.batch_size)
    if reason := mostly_unusable_reason(plan.selection):
        plan = replace(plan, skip_reason=reason)
    return ModelWork(survey, plan)


def check_plan(plan: ModelPlan) -> None:
    """Raise ModelSkipped or MemoryBudgetError when the plan says the fit cannot run."""
    if plan.skip_reason:
        raise ModelSkipped(plan.skip_reason)
    if plan.failure:
        raise MemoryBudgetError(plan.failure)


def read_stage(work: ModelWork, env: RunEnv) -> None:
    """Read the planned rows (into a device array on a GPU); plan again only when the read
    dropped rows. Raises ModelSkipped (mostly unusable, too few) or MemoryBudgetError."""
    work.loaded = read_selection(env.snapshot, work.plan.selection, env.options, env.device,
                                 env.reporter)
    if reason := mostly_unusable_reason(work.plan.selection, work.loaded.skipped):
        raise ModelSkipped(reason)
    work.plan = plan_for_rows(work.plan, work.loaded.n, env.options.requested, env.backend,
                              env.available, env.options.batch_size)
    check_plan(work.plan)
    log.info("%s: %s", work.model, work.plan.memory.reason)


def refined_fit_seconds(backend: ModuleType, x, params: P.HdbscanParams, planned: float,
                        hashes: np.ndarray | None = None) -> float:
    """The fit's estimate once its rows are read (the backend's ``estimate_for_rows``, e.g.
    from the distinct rows; ``hashes`` of the rows if already known), else the plan's
    ``planned`` one."""
    refine = getattr(backend, "estimate_for_rows", None)
    return planned if refine is None else refine(x, params, hashes)


def normalise_stage(work: ModelWork, env: RunEnv) -> None:
    """L2-normalise the rows in place (logged: seconds at 1.1M rows)."""
    x = work.loaded.vectors
    with env.reporter.stage(f"{work.loaded.model}: normalise", total=x.shape[0]):
        normalise_rows(x)


def cluster_stage(work: ModelWork, env: RunEnv) -> None:
    """The backend's fit with the plan's parameters (isolated: see isolation.py), its
    estimate first refined from the rows (hashed once here, for the medoids too)."""
    x = work.loaded.vectors
    with env.reporter.stage(f"{work.loaded.model}: estimate", total=x.shape[0]):
        work.hashes = row_hashes(x) if array_module(x) is np else None
        work.plan = replace(work.plan, fit_seconds=refined_fit_seconds(
            env.backend, x, work.plan.params, work.plan.fit_seconds, work.hashes))
    work.labels = fit(env.backend, work.loaded, work.plan, env.reporter)


def medoids_stage(work: ModelWork, env: RunEnv) -> None:
    """Each cluster's medoid row."""
    work.medoid_rows = find_medoids(work.loaded, work.labels, env.reporter, work.hashes)


COMPUTE_STAGES = (("normalise", normalise_stage), ("cluster", cluster_stage),
                  ("medoids", medoids_stage))


def write_stage(computed: PendingResult, env: RunEnv) -> str:
    """Store ``computed`` in one transaction; keep it beside the database if that fails."""
    return write_model(env.engine, computed, env.options, env.reporter, env.kept_dir)


# ------------------------------------------------------------------ the local runner


def cluster_model(survey: ModelSurvey, env: RunEnv, clock=None) -> ModelOutcome:
    """Run one model through every stage, the write included; never raises for a skip or
    a failed fit.

    ``clock`` (default a fresh :class:`ModelClock`) times each stage and knows the one
    running now. A result computed earlier but not stored (``env.kept_dir``, pending.py)
    for the same rows and parameters is stored instead of fitting again, and this run's
    result is kept there if it cannot be stored.
    """
    clock = clock or ModelClock()
    computed = compute_model(survey, env, clock)
    if isinstance(computed, ModelOutcome):
        return computed
    result_id = clock.run("write", lambda: write_stage(computed, env))
    return stored_outcome(computed, result_id, clock.seconds)


def compute_model(survey: ModelSurvey, env: RunEnv, clock) -> PendingResult | ModelOutcome:
    """Every stage before the write: the result to store, or the model's outcome when it
    is skipped or its fit fails (never raised). Reads the database, never writes it."""
    seconds = clock.seconds
    work = plan_stage(survey, env)
    sel = work.plan.selection
    log.info("%s: %d embeddings, %d selected (%s); skipped at selection: %d wrong length "
             "(blob not 4*%d bytes), %d NULL, %d without invocation", survey.model,
             survey.total, sel.expected_rows, sel.rule, sel.wrong_length, sel.dim,
             sel.null_vectors, survey.orphans)
    try:
        check_plan(work.plan)  # known before reading a single vector
        clock.run("read", lambda: read_stage(work, env))
        key = clock.run("fingerprint", lambda: result_key(work, env))
        note_identical_results(env.engine, key, env.options.replace)
        computed = kept_result(env.engine, env.kept_dir, key)
        if computed is None:
            for name, stage in COMPUTE_STAGES:
                clock.run(name, lambda: stage(work, env))
            computed = result_of(work, env, key, seconds)
        return computed
    except ModelSkipped as skip:
        return ModelOutcome(survey.model, "skipped", skip.reason, seconds=seconds)
    except MemoryBudgetError as exc:
        return ModelOutcome(survey.model, "failed", str(exc), seconds=seconds)
    except (MemoryError, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("%s: clustering failed: %s", survey.model, reason)
        log.debug("%s: the failure in detail", survey.model, exc_info=True)
        return ModelOutcome(survey.model, "failed", reason, seconds=seconds)


def stored_outcome(computed: PendingResult, result_id: str, seconds: dict) -> ModelOutcome:
    """The outcome of a model whose result ``computed`` is stored as ``result_id``."""
    labels = computed.labels
    return ModelOutcome(computed.model, "clustered", "", int(labels.shape[0]),
                        int(computed.medoid_rows.shape[0]), int((labels == -1).sum()),
                        result_id, seconds)


def result_key(work: ModelWork, env: RunEnv) -> dict:
    """What identifies a result: model, selection, the rows' fingerprint, backend, params."""
    sel = work.plan.selection
    loaded = work.loaded
    with env.reporter.stage(f"{work.model}: fingerprint", total=loaded.n):
        fprint = pending.fingerprint(loaded.ids, loaded.vectors)
    return pending.result_key(work.model, sel.factor, sel.rule, fprint, env.backend.NAME,
                              work.plan.params.as_dict())


def result_of(work: ModelWork, env: RunEnv, key: dict, seconds: dict) -> PendingResult:
    """The result to store, with its parameters JSON (the plan's memory_plan included)."""
    parameters = stored_parameters(work.plan, work.loaded, work.labels, env.device,
                                   env.backend, seconds)
    parameters["memory_plan"] = work.plan.memory.as_dict()
    parameters["selection_fingerprint"] = key["fingerprint"]
    return PendingResult(key, work.loaded.ids, to_host(work.labels.labels),
                         to_host(work.labels.probabilities), work.medoid_rows, parameters,
                         new_ids.hex())


def note_identical_results(engine: sa.Engine, key: dict, replace: bool) -> None:
    """Log the stored results of the same rows, backend and parameters as this run's."""
    same = [(rid, created) for rid, created, p in model_result_parameters(engine, key["model"])
            if p.get("selection_fingerprint") == key["fingerprint"]
            and p.get("backend") == key["backend"] and p.get("downsample") == key["downsample"]
            and all(p.get(k) == v for k, v in key["params"].items())]
    if same:
        which = ", ".join(f"{rid} ({created:%Y-%m-%d %H:%M})" for rid, created in same)
        them = "it" if len(same) == 1 else "them"
        then = (f"--replace deletes {them} when this one is stored" if replace else
                "this run stores another identical one; --replace keeps only the newest")
        log.warning("%s: the database already holds %d result(s) of the same rows and "
                    "parameters: %s; %s", key["model"], len(same), which, then)


def kept_result(engine: sa.Engine, kept_dir: Path | None, key: dict) -> PendingResult | None:
    """A kept result computed for exactly ``key`` (same rows and parameters), if any."""
    if kept_dir is None:
        return None
    for kept in pending.kept_results(kept_dir, key["model"]):
        if already_stored(engine, kept):
            continue
        if kept.key == key:
            kept.parameters["kept_result"] = {"computed_at": kept.computed_at, "file": str(kept.path)}
            log.info("%s: storing the result computed at %s and kept in %s (the same rows and "
                     "parameters); no new fit", key["model"], kept.computed_at, kept.path)
            return kept
        differs = ", ".join(k for k in key if kept.key.get(k) != key[k])
        log.warning("%s: the result kept in %s was computed for other %s; it is left there "
                    "(gpu-cluster store-pending says whether it can still be stored)",
                    key["model"], kept.path, differs.replace("fingerprint", "rows"))
    return None


def already_stored(engine: sa.Engine, kept: PendingResult) -> bool:
    """A kept result whose write did commit (a stop right after the COMMIT): its file
    is removed, so it is neither stored twice nor left to block a later run."""
    if not result_exists(engine, kept.result_id):
        return False
    pending.discard(kept)
    log.info("%s: the result kept in %s is already stored as result %s; removed the file",
             kept.model, kept.path, kept.result_id)
    return True


def write_model(engine, computed: PendingResult, options: RunOptions, reporter,
                kept_dir: Path | None) -> str:
    """Store ``computed``; if that fails or is interrupted, keep it in ``kept_dir``."""
    result = ResultToWrite(computed.model, computed.ids, computed.labels,
                           computed.medoid_rows, computed.parameters)
    try:
        with reporter.stage(f"{result.model}: write", total=result.ids.shape[0]) as st:
            result_id = write_result(engine, result, replace=options.replace, stage=st,
                                     result_id=computed.result_id)
    except (DatabaseError, KeyboardInterrupt) as exc:
        path = keep(computed, kept_dir)
        if isinstance(exc, DatabaseError) and path is not None:
            raise ResultKept(f"{exc}; {kept_text(computed.model, path)}", path) from None
        raise
    if replaced := result.parameters.get("replaced_result_ids"):
        log.info("%s: --replace deleted %d earlier result(s): %s", result.model, len(replaced),
                 ", ".join(replaced))
    if computed.path is not None:
        pending.discard(computed)
        log.info("%s: removed %s (stored now)", result.model, computed.path)
    return result_id


def keep(computed: PendingResult, kept_dir: Path | None) -> Path | None:
    """Save a result that could not be stored; log where (or why it could not be)."""
    computed.parameters.pop("replaced_results", None)  # from a transaction rolled back
    computed.parameters.pop("replaced_result_ids", None)
    if computed.path is not None:  # it came from a file, which stays
        path = computed.path
    elif kept_dir is None:
        return None
    else:
        try:
            path = pending.save(kept_dir, computed)
        except OSError as exc:
            log.error("%s: the computed result could not be kept either (%s: %s); it is lost",
                      computed.model, type(exc).__name__, exc)
            return None
    log.error("%s: the computed result is not stored; %s", computed.model,
              kept_text(computed.model, path))
    return path


def kept_text(model: str, path: Path) -> str:
    return (f"the computed result of {model} is kept in {path}: the same `gpu-cluster cluster` "
            f"command, or `gpu-cluster store-pending DB`, stores it without computing it again")


def read_selection(snapshot: Snapshot, sel, options: RunOptions, device: Device,
                   reporter) -> LoadedVectors:
    with reporter.stage(f"{sel.model}: read", total=sel.expected_rows) as st:
        with database_errors(f"reading {sel.model}'s vectors"):
            with snapshot.reading() as conn:  # the survey's rows; released after the read
                return load_vectors(conn, sel, batch_size=options.batch_size,
                                    device=device.kind, stage=st)


def fit(backend, loaded: LoadedVectors, plan: ModelPlan, reporter) -> Labels:
    """The backend's fit, isolated (see isolation.py) so heartbeats and signals go on."""
    with reporter.stage(f"{plan.model}: cluster", unit="fit", estimate_s=plan.fit_seconds):
        return isolation.fit(backend, loaded.vectors, plan.params)


def find_medoids(loaded: LoadedVectors, labels: Labels, reporter, hashes=None):
    with reporter.stage(f"{loaded.model}: medoids", total=labels.n_clusters, unit="clusters") as st:
        return medoid_indices(loaded.vectors, to_host(labels.labels), to_host(labels.probabilities),
                              on_cluster=st.advance, hashes=hashes)


def stored_parameters(plan: ModelPlan, loaded: LoadedVectors, labels: Labels, device: Device,
                      backend: ModuleType, seconds: dict) -> dict:
    """The ``parameters`` JSON: enough to reproduce and judge the run."""
    sel = plan.selection
    return {
        **plan.params.as_dict(),
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
        # the plan's estimates, to check against "seconds" (the time model's accuracy)
        "estimate_s": {"read": round(plan.read_seconds, 3), "cluster": round(plan.fit_seconds, 3)},
    }


def plan_database(
    db: str, *, downsample: int = 1, models: tuple[str, ...] = (), device: str = "auto",
    algorithm: str | None = None, requested: P.RequestedParams | None = None,
    memory_budget: int | None = None, gpu_memory: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[Device, list[ModelPlan]]:
    """Plan every (or each requested) model of ``db``; reads counts only, writes nothing.

    Each plan is the one a run makes (``plan_stage``). ``device='gpu'`` with
    ``gpu_memory`` plans for a GPU of that size even on a machine without one.
    """
    options = RunOptions(downsample=downsample, models=models, device=device,
                         algorithm=algorithm, requested=requested or P.RequestedParams(),
                         memory_budget=memory_budget, gpu_memory=gpu_memory,
                         lock_timeout=lock_timeout)
    engine = open_database(db, write=False, lock_timeout_s=lock_timeout)
    try:
        if device == "gpu" and gpu_memory:
            dev = Device("gpu", f"planning for a GPU with {gpu_memory / 2**30:.1f} GiB", "planned")
        else:
            dev = resolve_device(device)
        env = run_env(engine, Snapshot(engine), options, dev, open_backend(dev, options),
                      Reporter())
        with database_errors("surveying the embeddings"), engine.connect() as conn:
            surveys = requested_surveys(survey_embeddings(conn, None), models)
        return dev, [plan_stage(s, env).plan for s in surveys.values()]
    finally:
        engine.dispose()


@dataclass
class KeptOutcome:
    """What ``store-pending`` did with one kept result: 'stored' or 'left', and why."""

    model: str
    path: Path
    status: str
    detail: str


def store_kept_results(db: str, *, replace: bool = False, lock_timeout: float | None = None,
                       reporter: Reporter | None = None) -> list[KeptOutcome]:
    """Store every result kept beside ``db`` whose selected rows are unchanged.

    Each kept result's rows are selected and read again (no fit) and their fingerprint
    compared with the one the result was computed on; a match is stored (and its file
    removed), anything else is left in place with the reason.
    """
    reporter = reporter or Reporter()
    options = RunOptions(replace=replace, lock_timeout=lock_timeout)
    target = parse_target(db)
    kept_dir = pending.pending_dir(target.label, target.sqlite_path)
    engine = open_database(db, write=True, lock_timeout_s=lock_timeout,
                           lock_heartbeat_s=max(reporter.heartbeat_s, 1.0))
    snapshot = Snapshot(engine)  # the survey and every re-read see the same rows
    try:
        kept = pending.kept_results(kept_dir)
        surveys = survey_models(snapshot, (), reporter) if kept else {}
        return [store_kept(engine, snapshot, k, surveys.get(k.model), options, reporter, kept_dir)
                for k in kept]
    finally:
        snapshot.close()
        engine.dispose()


def store_kept(engine, snapshot: Snapshot, kept: PendingResult, survey: ModelSurvey | None,
               options: RunOptions, reporter: Reporter, kept_dir: Path) -> KeptOutcome:
    """Check one kept result against the database and store it if its rows are unchanged."""
    def left(why: str) -> KeptOutcome:
        return KeptOutcome(kept.model, kept.path, "left", why)

    if already_stored(engine, kept):
        return KeptOutcome(kept.model, kept.path, "stored", f"already, as result {kept.result_id}")
    if survey is None:
        return left("the database has no embeddings of this model any more")
    sel = survey.selection(kept.key["downsample"])
    if sel.rule != kept.key["selection_rule"]:
        return left(f"the selection rule changed (now: {sel.rule})")
    loaded = read_selection(snapshot, sel, options, Device("cpu", "checking a kept result"), reporter)
    if pending.fingerprint(loaded.ids, loaded.vectors) != kept.key["fingerprint"]:
        return left(f"its {kept.ids.shape[0]:,} rows changed since it was computed (now "
                    f"{loaded.n:,} rows with another fingerprint); cluster again")
    kept.parameters["kept_result"] = {"computed_at": kept.computed_at, "file": str(kept.path)}
    result_id = write_model(engine, kept, options, reporter, kept_dir)
    return KeptOutcome(kept.model, kept.path, "stored", f"result {result_id}")
