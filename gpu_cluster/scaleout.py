"""Scale-out on Dask: one model per worker (one per GPU with dask-cuda); the driver writes.

``gpu-cluster cluster DB --workers N`` starts a local Dask cluster for the run
(``distributed.LocalCluster`` of N worker processes on the CPU, each with its share of the
cores and of the host memory budget; ``dask_cuda.LocalCUDACluster``, one worker per GPU,
on GPUs); ``--scheduler ADDRESS`` uses a cluster the user runs. Each model is one task,
:func:`model_task`: the worker reads its model's rows from the database itself (never
through the scheduler), normalises, clusters and computes medoids with the same stage
functions as an in-process run (``pipeline.compute_from_database``) and returns the
compact result (ids, labels, probabilities, medoid rows, parameters, timings). The driver
writes each result in its own short transaction as it arrives; it is the only writer, so
a run's atomicity and lock behaviour are those of an in-process run. GPU tasks claim one
``GPU`` resource, so two models never share a card.

Progress: a worker publishes its stages and log lines on a Dask event topic
(``Worker.log_event``); the driver subscribes (``Client.subscribe_topic``), logs the lines
with the worker's name, and its own heartbeat says, for each running model, which worker
has it, its stage and the elapsed time against the estimate.

Faults: a worker that dies during a task (killed, crashed, out of memory) gets its model
retried once on another worker by the scheduler (``allowed-failures`` = 1 on a local
cluster), then the model fails with one line while the others go on. SIGINT/SIGTERM at
the driver cancels the tasks and closes the local cluster; nothing partial is written.

Dask is imported here only, and this module only when a run asks for it: without
``--workers``/``--scheduler`` a run never imports Dask.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType

from . import pending
from .budget import DEFAULT_HOST_FRACTION, default_host_budget, format_bytes, physical_memory
from .database import Snapshot, open_database, parse_target
from .device import Device
from .errors import DatabaseError, NoGpuError, ParameterError, ScaleOutError
from .pending import PendingResult
from . import pipeline
from .pipeline import (ModelOutcome, RunOptions, RunSummary, log_outcome,
                       log_stop, store_kept, stored_outcome, survey_models, write_model)
from .progress import DEFAULT_HEARTBEAT_S, Reporter, format_seconds
from .selection import ModelSurvey

log = logging.getLogger("gpu_cluster")

DASK_INSTALL_HINT = "install the distributed extra with: pip install 'gpu_cluster[distributed]'"
ALLOWED_FAILURES = 1  # a model whose worker dies is run once more, on another worker
POLL_S = 0.2
CONNECT_TIMEOUT_S = 10.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ScaleOut:
    """Where a run's tasks go: a local cluster of ``workers`` (None on GPUs: one per GPU),
    or the Dask scheduler at ``scheduler``."""

    workers: int | None = None
    scheduler: str | None = None
    local_gpu: bool = False  # --workers gpus: a local cluster of one worker per visible GPU
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def __post_init__(self):
        check_workers(self.workers)
        if self.workers is not None and self.scheduler:
            raise ParameterError("--workers starts a local Dask cluster and --scheduler uses "
                                 "another one: give one of them")
        if self.workers is None and not self.scheduler and not self.local_gpu:
            raise ParameterError("a scale-out run needs --workers N, --workers gpus or "
                                 "--scheduler ADDRESS")


def check_workers(workers: int | None) -> None:
    """ParameterError for a worker count below 1 (None: one per GPU, or no local cluster)."""
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers must be at least 1 (got {workers})")


@dataclass(frozen=True)
class WorkerShare:
    """One local CPU worker's part of the machine.

    threads: cores its fit may use; memory_budget: host bytes its planner plans with;
    memory_limit: bytes at which Dask's nanny restarts it (its share of the RAM).
    """

    workers: int
    threads: int
    memory_budget: int
    memory_limit: int


def worker_share(workers: int, memory_budget: int | None = None, cores: int | None = None,
                 ram: int | None = None) -> WorkerShare:
    """Split the cores and the host budget (default 45% of the RAM) evenly over ``workers``."""
    cores = cores or os.cpu_count() or 1
    ram = ram or physical_memory()
    budget = memory_budget or default_host_budget()
    return WorkerShare(workers, max(1, cores // workers), budget // workers, ram // workers)


@dataclass(frozen=True)
class PlanSplit:
    """How ``plan --workers`` splits the machine: ``workers`` at once, each with
    ``memory_budget`` host bytes (None on GPUs: each worker has a GPU of its own)."""

    workers: int
    where: str
    memory_budget: int | None

    def lines(self, models: list[str]) -> list[str]:
        """What runs at once: the first ``workers`` models, then one per freed worker."""
        first, rest = models[:self.workers], models[self.workers:]
        lines = [f"dask: {self.where}", f"  at once: {', '.join(first) or 'nothing'}"]
        if rest:
            lines.append(f"  then, as workers free up: {', '.join(rest)}")
        return lines


def plan_split(workers: int | None, device: str, memory_budget: int | None,
               gpu_memory: int | None) -> PlanSplit:
    """The split a ``--workers`` run would make on this machine (or, with ``--device gpu``,
    on GPUs: one worker each, ``workers`` of them; default all visible)."""
    check_workers(workers)
    if device == "gpu" or (device == "auto" and gpu_count()):
        n = workers or gpu_count()
        if not n:
            raise ParameterError("--workers gpus: no GPU visible here; give a number of workers")
        size = f"{format_bytes(gpu_memory)} " if gpu_memory else ""
        return PlanSplit(n, f"{n} worker(s), one per GPU, each planning with its own {size}GPU",
                         None)
    if workers is None:
        raise ParameterError("--workers gpus: no GPU visible here; give a number of workers")
    share = worker_share(workers, memory_budget)
    return PlanSplit(workers, f"{workers} worker process(es), each {share.threads} core(s) and a "
                     f"host memory budget of {format_bytes(share.memory_budget)} (of "
                     f"{format_bytes(share.memory_budget * workers)})", share.memory_budget)


def require_dask() -> ModuleType:
    """``distributed``, or a clear error naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise ScaleOutError(f"--workers and --scheduler need Dask; {DASK_INSTALL_HINT}") from None
    return distributed


def check_scale_out(scale: ScaleOut) -> str:
    """What ``cluster --check`` says about ``--workers``/``--scheduler``: Dask imports, and
    the scheduler answers (with how many workers). Raises ScaleOutError otherwise."""
    distributed = require_dask()
    if not scale.scheduler:
        return f"Dask {distributed.__version__} would start a local cluster"
    with connected(distributed, scale) as client:
        workers = len(client.scheduler_info().get("workers", {}))
    return f"the Dask scheduler at {scale.scheduler} answers, with {workers} worker(s)"


@contextmanager
def connected(distributed: ModuleType, scale: ScaleOut):
    """A Client of ``scale.scheduler``, or ScaleOutError in one line."""
    try:
        client = distributed.Client(scale.scheduler, timeout=scale.connect_timeout_s)
    except (OSError, TimeoutError) as exc:
        raise ScaleOutError(
            f"cannot reach the Dask scheduler at {scale.scheduler} within "
            f"{scale.connect_timeout_s:.0f}s ({type(exc).__name__}); is `dask "
            f"scheduler` running there, and the address right?") from None
    except ValueError as exc:  # Dask's parse of the address (a missing port, say)
        raise ScaleOutError(f"--scheduler {scale.scheduler!r} is not a Dask scheduler address "
                            f"({exc}); give it as tcp://HOST:PORT") from None
    try:
        yield client
    finally:
        client.close()


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device: CUDA raises its own types
        return 0


def shareable_db(db: str) -> str:
    """``db`` as a worker must see it: a SQLite path made absolute (a worker's working
    directory is not the driver's); a URL unchanged."""
    target = parse_target(db)
    return str(target.sqlite_path.resolve()) if target.sqlite_path is not None else db


# ------------------------------------------------------------------ the worker's side


class Events:
    """Publishes one model's progress on the run's Dask event topic, from any thread."""

    def __init__(self, worker, topic: str, model: str):
        self.worker, self.topic, self.model = worker, topic, model

    def send(self, kind: str, **fields) -> None:
        self.worker.log_event(self.topic, {"model": self.model, "kind": kind,
                                           "worker": self.worker.address, **fields})


class EventReporter(Reporter):
    """The worker's reporter: logs each stage's start and end as usual (forwarded to the
    driver), and publishes the stage's progress at its start and every heartbeat for the
    driver's own heartbeat line."""

    def __init__(self, events: Events, heartbeat_s: float):
        super().__init__(heartbeat_s)
        self.events = events

    def _open(self, st) -> None:
        self._heartbeat(st)

    def _heartbeat(self, st) -> None:  # the driver's heartbeat logs it
        self.events.send("stage", stage=st.name, elapsed=st.elapsed, estimate_s=st.estimate_s,
                         done=st.done, total=st.total, unit=st.unit)

    def _close(self, st) -> None:
        self.events.send("stage", stage=None, finished=st.name, elapsed=st.elapsed)


class ForwardLog(logging.Handler):
    """Sends the package's log records of the task's thread to the driver (as 'log'
    events); never a line the driver itself logs for a worker (a worker thread in the
    driver's process would send it back)."""

    def __init__(self, events: Events):
        super().__init__(logging.INFO)
        self.events, self.thread = events, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread or getattr(record, "from_worker", False):
            return
        try:
            self.events.send("log", level=record.levelno, line=record.getMessage())
        except Exception:  # a closing worker: the line stays in its own log
            self.handleError(record)


@contextmanager
def forwarded_log(events: Events):
    """The package's INFO lines go to the driver while the task runs."""
    logger = logging.getLogger("gpu_cluster")
    handler, level = ForwardLog(events), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def worker_options(options, worker):
    """The options a task runs with on ``worker``: with a host budget for its CPU fit when
    the run gave none (45% of the worker's memory limit, or of the RAM, over its threads:
    each thread may run a model at once)."""
    if options.memory_budget is not None or options.device == "gpu":
        return options
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    budget = int(DEFAULT_HOST_FRACTION * limit) if limit else default_host_budget()
    nthreads = max(1, getattr(worker.state, "nthreads", 1))
    return replace(options, memory_budget=budget // nthreads)


def model_task(db: str, model: str, options, topic: str, heartbeat_s: float,
               survey: ModelSurvey | None = None):
    """One Dask task: every stage but the write for ``model`` of ``db``, on this worker.

    Returns a PendingResult (ids (n,) S32, labels (n,) int64, probabilities (n,) float64,
    medoid rows (k,) int64, parameters with the stage seconds and this worker's address) or
    the ModelOutcome of a skip or a failed fit. A database the worker cannot read raises
    (DatabaseError), which the driver reports as the model's failure. ``survey``: the
    driver's (counts only, no vectors), so the worker does not survey again.
    """
    from distributed import get_worker

    worker = get_worker()
    events = Events(worker, topic, model)
    options = worker_options(options, worker)
    with forwarded_log(events):
        result = pipeline.compute_from_database(db, model, options,
                                                EventReporter(events, heartbeat_s), survey)
    if isinstance(result, PendingResult):
        result.parameters["dask_worker"] = worker.address
    return result


# ------------------------------------------------------------------ the driver's side


@dataclass
class ModelState:
    """What the driver knows about one model's task: its worker, and the worker's last
    report of its stage (a stage's event fields, received at ``reported``)."""

    worker: str | None = None
    report: dict = field(default_factory=dict)
    reported: float = field(default_factory=time.monotonic)
    done: bool = False


class Board:
    """Every model's state, filled by the workers' events (in Dask's event thread) and read
    by the driver's heartbeat. ``report_s``: how often a worker reports a running stage."""

    def __init__(self, models, report_s: float):
        self.lock = threading.Lock()
        self.models = {m: ModelState() for m in models}
        self.report_s = report_s

    def on_event(self, event) -> None:
        """``Client.subscribe_topic`` handler: event is (timestamp, message dict)."""
        _, msg = event
        if not isinstance(msg, dict) or msg.get("model") not in self.models:
            return
        worker = short_worker(msg.get("worker", "?"))
        if msg["kind"] == "log":
            log.log(msg.get("level", logging.INFO), "[%s] %s", worker, msg["line"],
                    extra={"from_worker": True})
            return
        with self.lock:
            state = self.models[msg["model"]]
            moved, state.worker = state.worker not in (None, worker), worker
            state.report, state.reported = msg, time.monotonic()
        if moved:
            log.warning("%s: now on worker %s: the scheduler retries it (its worker died)",
                        msg["model"], worker)

    def finish(self, model: str) -> None:
        with self.lock:
            self.models[model].done = True

    def summary(self) -> str:
        """Each running model's worker, stage and elapsed time (against the estimate, or
        rows done); how many wait for a worker."""
        now, parts, queued = time.monotonic(), [], 0
        with self.lock:
            for model, s in self.models.items():
                if s.done:
                    continue
                if s.worker is None:
                    queued += 1
                    continue
                text = stage_text(model, s.report, now - s.reported, self.report_s)
                parts.append(f"{model} on {s.worker}: {text}")
        if queued:
            parts.append(f"{queued} model(s) waiting for a free worker")
        return "; ".join(parts) or "writing"


def stage_text(model: str, r: dict, age: float, report_s: float) -> str:
    """'cluster: elapsed 12.0s of ~30.0s estimated' from a worker's last stage report,
    ``age`` seconds old; says so when the worker has been silent past two reports."""
    if r.get("stage") is None:
        name = (r.get("finished") or "").removeprefix(f"{model}: ")
        return f"{name} finished, next stage starting" if name else "starting"
    name = r["stage"].removeprefix(f"{model}: ")  # stage names carry the model
    elapsed = r.get("elapsed", 0.0)
    if age > 2 * report_s + 1:
        silent = f" (no report from the worker for {format_seconds(age)})"
    else:
        elapsed, silent = elapsed + age, ""
    if r.get("total"):
        done = f"{r['done']:,}/{r['total']:,} {r['unit']}, "
        return f"{name}: {done}elapsed {format_seconds(elapsed)}{silent}"
    estimate = f" of ~{format_seconds(r['estimate_s'])} estimated" if r.get("estimate_s") else ""
    return f"{name}: elapsed {format_seconds(elapsed)}{estimate}{silent}"


def short_worker(address: str) -> str:
    """'tcp://127.0.0.1:40123' -> '127.0.0.1:40123'."""
    return address.split("://", 1)[-1]


@contextmanager
def dask_client(scale: ScaleOut, device: Device | None, options: RunOptions):
    """A Client of a local cluster started for this run, or of ``scale.scheduler``; the
    local cluster is closed (its workers killed) on the way out."""
    distributed = require_dask()
    import dask

    with ExitStack() as stack:
        if scale.scheduler:
            client = stack.enter_context(connected(distributed, scale))
            log.info("dask: connected to the scheduler at %s (%d worker(s))", scale.scheduler,
                     len(client.scheduler_info().get("workers", {})))
        else:
            stack.enter_context(dask.config.set({
                "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                # a worker must be able to fork its fit's child process (isolation.py)
                "distributed.worker.daemon": False,
                "distributed.logging.distributed": "error",
            }))
            cluster = start_local_cluster(distributed, scale, device, options)
            stack.callback(cluster.close)
            client = distributed.Client(cluster)
            stack.callback(client.close)
        yield client


def start_local_cluster(distributed: ModuleType, scale: ScaleOut, device: Device, options):
    """dask_cuda.LocalCUDACluster (one worker per GPU, each offering one GPU resource) or
    distributed.LocalCluster (``scale.workers`` processes with their share of the cores
    and of the host memory budget)."""
    if device.kind == "gpu":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise NoGpuError("--workers on GPUs needs dask-cuda; install the GPU extra with: "
                             "pip install 'gpu_cluster[gpu,distributed]'") from None
        n, visible = scale.workers or gpu_count(), gpu_count()
        if n > visible:
            raise ParameterError(f"--workers {n}: only {visible} GPU(s) visible; a GPU worker "
                                 "needs a GPU of its own")
        log.info("dask: starting a LocalCUDACluster of %d worker(s), one per GPU", n)
        return LocalCUDACluster(n_workers=n, threads_per_worker=1, resources={"GPU": 1},
                                dashboard_address=":0")
    if scale.workers is None:
        raise ParameterError("--workers gpus: no GPU is usable here; give a number of workers")
    share = worker_share(scale.workers, options.memory_budget)
    log.info("dask: starting a LocalCluster of %d worker process(es), each %d core(s), "
             "a host memory budget of %s and a limit of %s", share.workers, share.threads,
             format_bytes(share.memory_budget), format_bytes(share.memory_limit))
    return distributed.LocalCluster(
        n_workers=share.workers, threads_per_worker=1, processes=True,
        memory_limit=share.memory_limit, dashboard_address=":0",
        env={v: str(share.threads) for v in THREAD_VARIABLES})


def task_device(client, scale: ScaleOut, device: Device | None, requested: str) -> str:
    """'gpu' or 'cpu' for the tasks. A local cluster: the driver's device. A scheduler:
    'gpu' when asked for (and some worker offers a GPU resource) or, with 'auto', when
    every worker offers one; else 'cpu'."""
    if not scale.scheduler:
        return device.kind
    workers = client.scheduler_info().get("workers", {}).values()
    with_gpu = [w for w in workers if w.get("resources", {}).get("GPU", 0) >= 1]
    if requested == "gpu" and not with_gpu:
        raise NoGpuError(f"--device gpu: no worker of the scheduler at {scale.scheduler} offers "
                         "a GPU resource; start one per GPU with `dask worker ADDRESS "
                         "--nthreads 1 --resources GPU=1` (or `dask cuda worker ADDRESS "
                         "--resources GPU=1`)")
    if requested == "auto" and workers and len(with_gpu) == len(workers):
        return "gpu"
    return "gpu" if requested == "gpu" else "cpu"


def task_options(options, scale: ScaleOut, kind: str):
    """The options every task gets: its device, and on a local CPU cluster the worker's
    share of the host memory budget."""
    options = replace(options, device=kind)
    if kind == "cpu" and scale.workers and not scale.scheduler:
        options = replace(options, memory_budget=worker_share(scale.workers,
                                                              options.memory_budget).memory_budget)
    return options


def cluster_database_on_dask(db: str, options: RunOptions, scale: ScaleOut,
                             reporter: Reporter | None = None) -> RunSummary:
    """``cluster_database`` with one Dask task per model; the driver (here) writes.

    A result kept beside the database by an earlier run, for this run's downsample and
    rows, is stored first without a task (as ``store-pending`` does). Raises what
    ``cluster_database`` raises; ScaleOutError when Dask is missing or the scheduler
    cannot be reached; KeyboardInterrupt after cancelling the tasks.
    """
    reporter = reporter or Reporter()
    require_dask()
    db = shareable_db(db)
    engine = open_database(db, write=True, lock_timeout_s=options.lock_timeout,
                           lock_heartbeat_s=max(reporter.heartbeat_s, 1.0))
    target = parse_target(db)
    kept_dir = pending.pending_dir(target.label, target.sqlite_path)
    outcomes: dict[str, ModelOutcome] = {}
    where = ["startup"]  # where the run is, for the line saying where it stopped
    try:
        snapshot = Snapshot(engine)
        try:
            surveys = survey_models(snapshot, options.models, reporter)
            outcomes.update(store_kept_first(engine, snapshot, surveys, options, reporter,
                                             kept_dir))
        finally:
            snapshot.close()  # each worker reads in a snapshot of its own
        models = [m for m in surveys if m not in outcomes]
        if models:
            device = None if scale.scheduler else pipeline.resolve_device(options.device)
            with dask_client(scale, device, options) as client:
                run_tasks(client, db, {m: surveys[m] for m in models}, scale, device, options,
                          reporter, outcomes,
                          lambda result: write_model(engine, result, options, reporter,
                                                     kept_dir), where)
    except (KeyboardInterrupt, DatabaseError) as exc:
        log_stop(exc, where[0], list(outcomes.values()))
        raise
    finally:
        engine.dispose()
    return RunSummary([outcomes[m] for m in surveys])


def store_kept_first(engine, snapshot: Snapshot, surveys: dict, options: RunOptions,
                     reporter: Reporter, kept_dir: Path | None) -> dict[str, ModelOutcome]:
    """Store each kept result of this run's models and downsample whose rows are unchanged
    (no fit); those models need no task. Returns their outcomes."""
    done = {}
    if kept_dir is None:
        return done
    for kept in pending.kept_results(kept_dir):
        if kept.model not in surveys or kept.key.get("downsample") != options.downsample:
            continue
        if kept.model in done or not requested_params_agree(kept, options):
            continue
        outcome = store_kept(engine, snapshot, kept, surveys[kept.model], options, reporter,
                             kept_dir)
        log.info("%s: the result kept in %s: %s, %s", kept.model, kept.path, outcome.status,
                 outcome.detail)
        if outcome.status == "stored":  # under the id it was computed with
            done[kept.model] = stored_outcome(kept, kept.result_id, {})
    return done


def requested_params_agree(kept: PendingResult, options: RunOptions) -> bool:
    """The kept result's parameters are those this run asks for explicitly."""
    asked = {"min_cluster_size": options.requested.min_cluster_size,
             "min_samples": options.requested.min_samples,
             "cluster_selection_epsilon": options.requested.epsilon}
    params = kept.key.get("params", {})
    return all(v is None or params.get(k) == v for k, v in asked.items())


def run_tasks(client, db: str, models: dict[str, ModelSurvey], scale: ScaleOut,
              device: Device | None, options: RunOptions, reporter: Reporter, outcomes: dict,
              write, where: list) -> None:
    """Submit one task per model (with its survey), then write each result as it arrives (``write``) and
    record every model's outcome in ``outcomes``. Cancels the tasks left on the way out."""
    kind = task_device(client, scale, device, options.device)
    topic = f"gpu-cluster-{os.getpid()}-{time.time_ns()}"
    beat = max(1.0, min(reporter.heartbeat_s, DEFAULT_HEARTBEAT_S))
    board = Board(models, beat)
    client.subscribe_topic(topic, board.on_event)
    submitted = {client.submit(model_task, db, model, task_options(options, scale, kind), topic,
                               beat, survey, key=f"{topic}-{model}", pure=False,
                               resources={"GPU": 1} if kind == "gpu" else None): model
                 for model, survey in models.items()}
    try:
        where[0] = "waiting for the workers"
        with reporter.stage(f"dask: {len(models)} model(s)", total=len(models),
                            unit="models") as st:
            st.detail = board.summary
            while submitted:
                done = [f for f in submitted if f.done()]
                if not done:
                    time.sleep(POLL_S)
                for future in done:
                    model = submitted.pop(future)
                    where[0] = f"{model}: write"
                    outcomes[model] = collect(future, model, write)
                    board.finish(model)
                    st.advance()
                    log_outcome(outcomes[model])
                    where[0] = "waiting for the workers"
    finally:
        if submitted:
            client.cancel(list(submitted), force=True)
        client.unsubscribe_topic(topic)


def collect(future, model: str, write) -> ModelOutcome:
    """A finished task's outcome: its result written by ``write`` (one transaction), or
    the reason it failed (its worker died on every try, a database it could not read)."""
    from distributed import KilledWorker

    try:
        result = future.result()
    except KilledWorker as exc:
        last = getattr(getattr(exc, "last_worker", None), "address", "a worker")
        reason = (f"its worker died while running it, on every try the scheduler allows "
                  f"(killed, crashed or out of memory; last on {short_worker(last)})")
        log.error("%s: clustering failed: %s", model, reason)
        return ModelOutcome(model, "failed", reason)
    except Exception as exc:  # a worker's error fails its model, never the run
        first = str(exc).splitlines()[0] if str(exc) else ""
        log.error("%s: failed on the worker: %s: %s", model, type(exc).__name__, first)
        return ModelOutcome(model, "failed", f"{type(exc).__name__}: {first}")
    if isinstance(result, ModelOutcome):
        return result
    seconds = dict(result.parameters.get("seconds", {}))
    start = time.perf_counter()
    result_id = write(result)
    seconds["write"] = time.perf_counter() - start
    return stored_outcome(result, result_id, seconds)
