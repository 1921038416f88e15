"""Time one model at one downsample factor, stage by stage, with the pipeline's own stages.

A step runs the stage functions a run runs (``gpu_cluster.pipeline``), each through this
module's timing hook (:class:`StepTimer`: wall seconds, peak memory, a device
synchronisation on a GPU):

    select    survey_embeddings(conn, [model])  (the grouped count query)
    plan      pipeline.plan_stage               (untimed: counts only; the run's own plan,
                                                 with the device's memory: free GPU memory
                                                 on a GPU, the host budget on the CPU)
    read      pipeline.read_stage               (SQL -> one array; on a GPU through the
                                                 production DeviceSink, straight to the device)
    generate  synthetic_embeddings(n, d)        (instead of select + read, --synthetic)
    transfer  staging.open_sink(...).put        (--synthetic on a GPU: host -> device through
                                                 the DeviceSink a run reads through)
    normalise, cluster, medoids                 pipeline.COMPUTE_STAGES
    write     pipeline.write_stage              (committed with --write, else rolled back)

A step whose plan refuses the fit (nothing fits in memory) is recorded as failed with the
plan's reason; it never runs with other parameters than a run would.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from types import ModuleType

import numpy as np
import sqlalchemy as sa

from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster import pipeline
from gpu_cluster.budget import MemoryBudgetError
from gpu_cluster.database import Snapshot
from gpu_cluster.device import Device, to_host
from gpu_cluster.errors import ModelSkipped
from gpu_cluster.labels import Labels
from gpu_cluster.loading import LoadedVectors, normalise_rows
from gpu_cluster.medoids import medoid_indices
from gpu_cluster.planner import ModelPlan, available_memory, plan_rows
from gpu_cluster.progress import Reporter
from gpu_cluster.selection import survey_embeddings
from gpu_cluster.staging import open_sink

from .memory import PeakSampler
from .projection import Projection
from .synthetic import synthetic_embeddings

STAGES = ("select", "generate", "read", "transfer", "normalise", "cluster", "medoids", "write")
RATE_STAGES = ("read", "generate")  # stages whose rows/s and MB/s are reported
OK = "ok"


@dataclass
class StepRecord:
    """One backend on one model at one factor: what ran, how long, how much memory.

    seconds: stage -> wall seconds (only stages that ran). projected: stage -> the
    projection made before the step ({'seconds', 'basis'}). memory: stage ->
    {'peak_rss_bytes', 'rss_delta_bytes', 'peak_gpu_bytes'} (bytes; GPU None without one).
    status: 'ok', 'skipped: <why>' or 'failed: <error>'.
    """

    factor: int
    model: str
    role: str  # "main" or "baseline"
    backend: str
    device: str
    n: int = 0
    dim: int = 0
    status: str = "pending"
    seconds: dict = field(default_factory=dict)
    projected: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    n_clusters: int | None = None
    noise_fraction: float | None = None
    params: dict = field(default_factory=dict)
    backend_details: dict = field(default_factory=dict)
    read_rate: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    write: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.model} f={self.factor} {self.backend}"

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def projected_total_s(self) -> float:
        return sum(p["seconds"] for p in self.projected.values())

    def peak(self, key: str) -> int | None:
        """Largest ``memory[stage][key]`` over the stages that ran (None if none)."""
        values = [m[key] for m in self.memory.values() if m.get(key) is not None]
        return max(values) if values else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(total_s=self.total_s, projected_total_s=self.projected_total_s,
                   peak_rss_bytes=self.peak("peak_rss_bytes"),
                   rss_delta_bytes=self.peak("rss_delta_bytes"),
                   peak_gpu_bytes=self.peak("peak_gpu_bytes"))
        return out


def synchronize(device: Device) -> None:
    """Wait for every queued GPU kernel (no-op on the CPU)."""
    if device.kind == "gpu":
        import cupy

        cupy.cuda.Device().synchronize()


class StepTimer:
    """The pipeline's timing hook for one step: seconds and peak memory per stage into
    its record (the stages report progress themselves, through ``reporter``)."""

    def __init__(self, record: StepRecord, reporter: Reporter, device: Device):
        self.record, self.reporter, self.device = record, reporter, device
        self.stage = "select"

    def run(self, name: str, work):
        """``work()``, timed as stage ``name`` (to the end of the device's queued work)."""
        self.stage = name
        with PeakSampler(gpu=self.device.kind == "gpu") as mem:
            start = time.perf_counter()
            result = work()
            synchronize(self.device)
            elapsed = time.perf_counter() - start
        self.record.seconds[name] = elapsed
        self.record.memory[name] = mem.as_dict()
        return result


@dataclass
class DbTarget:
    """Where a database step reads and writes.

    write_mode: 'committed' (--write), 'rolled back' (the default: the write runs in full
    and its transaction is rolled back), or 'skipped: <why>'.
    """

    read_engine: sa.Engine
    write_engine: sa.Engine | None
    write_mode: str
    batch_size: int = P.DEFAULT_BATCH_SIZE


def record_rate(record: StepRecord, stage: str, rows: int, dim: int) -> None:
    """Rows/s and MB/s (10^6 bytes of float32 vectors) of a read or generate stage."""
    seconds = max(record.seconds[stage], 1e-9)
    record.read_rate = {"stage": stage, "rows": rows, "rows_per_s": rows / seconds,
                        "mb_per_s": rows * dim * 4 / seconds / 1e6}


def record_labels(record: StepRecord, labels: Labels, params: P.HdbscanParams) -> None:
    n = int(labels.labels.shape[0])
    record.n_clusters = labels.n_clusters
    record.noise_fraction = labels.n_noise / n if n else 0.0
    record.params = params.as_dict()
    record.backend_details = dict(labels.details)


def step_env(timer: StepTimer, engine: sa.Engine, backend: ModuleType,
             requested: P.RequestedParams, factor: int, batch_size: int,
             snapshot: Snapshot | None = None) -> pipeline.RunEnv:
    """The pipeline's environment for one step: the run's options, the device's memory."""
    options = pipeline.RunOptions(downsample=factor, device=timer.device.kind,
                                  algorithm=backend.NAME, requested=requested,
                                  batch_size=batch_size)
    return pipeline.RunEnv(engine, snapshot or Snapshot(engine), options, timer.device, backend,
                           timer.reporter, available_memory(backend))


def refused(record: StepRecord, plan: ModelPlan) -> bool:
    """Record why the plan refuses the fit (too few rows, nothing fits); True if it does."""
    try:
        pipeline.check_plan(plan)
    except ModelSkipped as skip:
        record.status = f"skipped: {skip.reason}"
    except MemoryBudgetError as exc:
        record.status = f"failed: {exc}"
    return record.status != "pending"


def compute_stages(timer: StepTimer, work: pipeline.ModelWork,
                   env: pipeline.RunEnv) -> pipeline.ModelWork:
    """normalise -> cluster -> medoids, the pipeline's own stages, each timed; returns
    ``work`` with the normalised rows, labels and medoids (for a baseline)."""
    for name, stage in pipeline.COMPUTE_STAGES:
        timer.run(name, lambda: stage(work, env))
    record_labels(timer.record, work.labels, work.plan.params)
    return work


def select_stage(timer: StepTimer, target: DbTarget, model: str, factor: int):
    with timer.reporter.stage(f"{timer.record.label}: select", unit="queries"):
        survey = timer.run("select", lambda: survey_in(target.read_engine, model))
    sel = survey.selection(factor)
    timer.record.selection = {"rule": sel.rule, "embeddings_total": survey.total,
                              "selected": sel.expected_rows, "wrong_length": sel.wrong_length,
                              "null_vectors": sel.null_vectors, "orphans": survey.orphans,
                              "plain_scan": not sel.needs_join}
    timer.record.n, timer.record.dim = sel.expected_rows, sel.dim
    return survey


def survey_in(engine: sa.Engine, model: str):
    with engine.connect() as conn:
        return survey_embeddings(conn, [model])[model]


def write_stage(timer: StepTimer, target: DbTarget, work: pipeline.ModelWork,
                env: pipeline.RunEnv) -> None:
    """Write the result as ``gpu-cluster cluster`` would (committed or rolled back)."""
    record = timer.record
    if target.write_engine is None:
        record.write = {"mode": target.write_mode, "result_id": None}
        return
    computed = pipeline.result_of(work, env, pipeline.result_key(work, env), dict(record.seconds))
    computed.parameters["benchmark"] = {"tool": "benchmarks/sweep.py", "write": target.write_mode}
    result_id = timer.run("write", lambda: pipeline.write_stage(computed, env))
    committed = target.write_mode == "committed"
    record.write = {"mode": target.write_mode, "result_id": result_id if committed else None}


def measure_db_step(timer: StepTimer, target: DbTarget, backend: ModuleType,
                    requested: P.RequestedParams) -> pipeline.ModelWork | None:
    """select -> plan -> read -> compute -> write for ``timer.record``'s model and factor.

    Returns the clustered data (for a baseline), or None when the plan refuses the fit
    (then the record's status says why).
    """
    record = timer.record
    survey = select_stage(timer, target, record.model, record.factor)
    write_engine = target.write_engine or target.read_engine
    env = step_env(timer, write_engine, backend, requested, record.factor, target.batch_size,
                   Snapshot(target.read_engine))
    try:
        work = pipeline.plan_stage(survey, env)
        if refused(record, work.plan):
            return None
        try:  # the read may drop rows: then the plan is made again for those read
            timer.run("read", lambda: pipeline.read_stage(work, env))
        except ModelSkipped as skip:
            record.status = f"skipped: {skip.reason}"
            return None
        except MemoryBudgetError as exc:
            record.status = f"failed: {exc}"
            return None
        record_rate(record, "read", survey.selection(record.factor).expected_rows, survey.dim)
        record.selection["skipped_while_reading"] = dict(work.loaded.skipped)
        record.n = work.loaded.n
        clustered = compute_stages(timer, work, env)
        write_stage(timer, target, work, env)
    finally:
        env.snapshot.close()
    record.status = OK
    return clustered


def measure_synthetic_step(timer: StepTimer, dim: int, seed: int, backend: ModuleType,
                           requested: P.RequestedParams) -> pipeline.ModelWork | None:
    """generate -> (transfer) -> compute for ``timer.record.n`` synthetic rows (nothing is
    written), with the parameters a run would plan for them."""
    record = timer.record
    plan = plan_rows("synthetic", record.n, dim, requested, backend, available_memory(backend))
    if refused(record, plan):
        return None
    with timer.reporter.stage(f"{record.label}: generate", total=record.n) as st:
        host_x = timer.run("generate", lambda: synthetic_embeddings(record.n, dim, seed=seed,
                                                                     stage=st))
    record_rate(record, "generate", record.n, dim)
    x = host_x
    if timer.device.kind == "gpu":  # through the DeviceSink a run reads through
        x = timer.run("transfer", lambda: to_device(host_x, P.DEFAULT_BATCH_SIZE))
    loaded = LoadedVectors("synthetic", x, np.zeros(record.n, "S32"))
    env = pipeline.RunEnv(None, None, None, timer.device, backend, timer.reporter,
                          plan.memory.available_bytes)
    clustered = compute_stages(timer, pipeline.ModelWork(None, plan, loaded), env)
    record.write = {"mode": "none (synthetic data)", "result_id": None}
    record.status = OK
    return clustered


def to_device(host_x: np.ndarray, batch_rows: int):
    """Copy (n, d) float32 host rows to the device through the production DeviceSink."""
    sink = open_sink("gpu", host_x.shape[0], host_x.shape[1], batch_rows)
    for s in range(0, host_x.shape[0], batch_rows):
        sink.put(host_x[s:s + batch_rows])
    return sink.finish()


def measure_baseline(timer: StepTimer, main: StepRecord, clustered: pipeline.ModelWork,
                     baseline: ModuleType) -> None:
    """Fit ``baseline`` on the main step's normalised rows; ARI and speed ratio on both."""
    from sklearn.metrics import adjusted_rand_score

    record, params = timer.record, clustered.plan.params
    record.n, record.dim = main.n, main.dim
    host_x = to_host(clustered.loaded.vectors)
    with timer.reporter.stage(f"{record.label}: cluster", unit="fit"):
        labels = timer.run("cluster", lambda: isolation.fit(baseline, host_x, params))
    record_labels(record, labels, params)
    ari = float(adjusted_rand_score(to_host(labels.labels), to_host(clustered.labels.labels)))
    ratio = record.seconds["cluster"] / max(main.seconds["cluster"], 1e-9)
    comparison = {"against": baseline.NAME, "ari": ari, "speed_ratio": ratio,
                  "baseline_cluster_s": record.seconds["cluster"],
                  "main_cluster_s": main.seconds["cluster"]}
    record.comparison = main.comparison = comparison
    record.status = OK


WARMUP_ROWS, WARMUP_DIM = 256, 16


def warm_up(backend: ModuleType, device: Device) -> float:
    """Fit and find medoids once on a few synthetic rows; returns the seconds it took.

    The first fit pays for imports (scikit-learn's HDBSCAN: ~1 s) and JIT compilation
    (numba-based backends: many seconds); a sweep must not charge that to its first step
    and then project it onto every larger n. A CPU fit runs in a forked child, whose
    imports die with it, so the warm-up fits once in this process too: every later
    child then inherits the loaded modules, the first timed step as much as the last
    (without it the first step carried ~1.2 s more than the next ones, measured).
    """
    start = time.perf_counter()
    x = device.xp.asarray(synthetic_embeddings(WARMUP_ROWS, WARMUP_DIM, seed=1))
    normalise_rows(x)
    params = P.resolve(P.RequestedParams(), WARMUP_ROWS)
    if getattr(backend, "DEVICE", "cpu") != "gpu":
        backend.fit(x, params)  # in this process: the imports outlive it
    labels = isolation.fit(backend, x, params)
    medoid_indices(x, to_host(labels.labels).astype(np.int64), to_host(labels.probabilities))
    synchronize(device)
    return time.perf_counter() - start


def projections_dict(projected: dict[str, Projection]) -> dict[str, dict]:
    return {stage: p.as_dict() for stage, p in projected.items()}


def planned_params(requested: P.RequestedParams, n: int, dim: int,
                   backend) -> P.HdbscanParams | None:
    """The parameters a run would fit n rows with (min_samples within the device's
    memory), or None when its plan refuses them (too few rows, nothing fits)."""
    plan = plan_rows("projection", max(n, 2), dim, requested, backend, available_memory(backend))
    return plan.params if plan.memory is not None else None
