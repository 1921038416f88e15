"""Time one model at one downsample factor, stage by stage, with the library's own functions.

The stages are the pipeline's (``gpu_cluster.pipeline.cluster_model``), called one by one
so each is timed on its own:

    select    survey_embeddings(conn, [model])  (the grouped count query) + the rule
    read      load_vectors(..., device='cpu')       (SQL -> one preallocated host array)
    generate  synthetic_embeddings(n, d)        (instead of select + read, --synthetic)
    transfer  xp.asarray(host)                  (host -> GPU; only on a GPU)
    normalise normalise_rows(x)
    cluster   isolation.fit(backend, x, params)  (a child process on the CPU, as in a run)
    medoids   medoid_indices(x, labels, probabilities)
    write     write_result(engine, ...)         (committed with --write, else rolled back)

The pipeline reads straight into a device array; here the read lands on the host and the
copy is timed as ``transfer``, so that read rates compare across devices. On a GPU every
stage ends with a device synchronisation so asynchronous kernels are counted where they
run. Timings exclude the progress reporter's own start/stop.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import ModuleType

import numpy as np
import sqlalchemy as sa

from gpu_cluster import isolation
from gpu_cluster import params as P
from gpu_cluster.labels import Labels
from gpu_cluster.device import Device, to_host
from gpu_cluster.loading import LoadedVectors, load_vectors, normalise_rows
from gpu_cluster.medoids import medoid_indices
from gpu_cluster.budget import MemoryBudgetError, default_host_budget
from gpu_cluster.planner import fit_params, plan_model
from gpu_cluster.progress import Reporter
from gpu_cluster.selection import ModelSurvey, Selection, survey_embeddings
from gpu_cluster.writer import ResultToWrite, write_result

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
    """Times the stages of one step into its record, under the reporter's heartbeat."""

    def __init__(self, record: StepRecord, reporter: Reporter, device: Device):
        self.record, self.reporter, self.device = record, reporter, device

    @contextmanager
    def stage(self, name: str, *, total: int | None = None, unit: str = "rows"):
        projected = self.record.projected.get(name)
        estimate_s = projected["seconds"] if projected and total is None else None
        with self.reporter.stage(f"{self.record.label}: {name}", total=total, unit=unit,
                                 estimate_s=estimate_s) as st:
            with PeakSampler(gpu=self.device.kind == "gpu") as mem:
                start = time.perf_counter()
                yield st
                synchronize(self.device)
                elapsed = time.perf_counter() - start
        self.record.seconds[name] = elapsed
        self.record.memory[name] = mem.as_dict()


@dataclass
class Clustered:
    """The output of the compute stages.

    x: (n, d) float32 normalised rows on the device; labels: the backend's Labels;
    host_labels: (n,) int64; medoids: (k,) int64 row of each cluster's medoid.
    """

    x: object
    labels: Labels
    host_labels: np.ndarray
    medoids: np.ndarray
    params: P.HdbscanParams


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


def compute_stages(timer: StepTimer, host_x: np.ndarray, backend: ModuleType,
                   params: P.HdbscanParams) -> Clustered:
    """transfer -> normalise -> cluster -> medoids on ``host_x`` ((n, d) float32)."""
    device, n = timer.device, host_x.shape[0]
    x = host_x
    if device.kind == "gpu":
        with timer.stage("transfer", total=n):
            x = device.xp.asarray(host_x)
    with timer.stage("normalise"):
        normalise_rows(x)
    with timer.stage("cluster", unit="fit"):
        labels = isolation.fit(backend, x, params)
    host_labels = to_host(labels.labels).astype(np.int64, copy=False)
    with timer.stage("medoids", unit="clusters"):
        medoids = medoid_indices(x, host_labels, to_host(labels.probabilities))
    record_labels(timer.record, labels, params)
    return Clustered(x, labels, host_labels, medoids, params)


def select_stage(timer: StepTimer, target: DbTarget, model: str,
                 factor: int) -> tuple[ModelSurvey, Selection]:
    with timer.stage("select", unit="queries"), target.read_engine.connect() as conn:
        survey = survey_embeddings(conn, [model])[model]
    sel = survey.selection(factor)
    timer.record.selection = {"rule": sel.rule, "embeddings_total": survey.total,
                              "selected": sel.expected_rows, "wrong_length": sel.wrong_length,
                              "null_vectors": sel.null_vectors, "orphans": survey.orphans,
                              "plain_scan": not sel.needs_join}
    timer.record.n, timer.record.dim = sel.expected_rows, sel.dim
    return survey, sel


def read_stage(timer: StepTimer, target: DbTarget, sel: Selection) -> LoadedVectors:
    with timer.stage("read", total=sel.expected_rows) as st:
        with target.read_engine.connect() as conn, conn.begin():
            loaded = load_vectors(conn, sel, batch_size=target.batch_size, device="cpu", stage=st)
    record_rate(timer.record, "read", sel.expected_rows, sel.dim)
    timer.record.selection["skipped_while_reading"] = dict(loaded.skipped)
    timer.record.n = loaded.n
    return loaded


def write_stage(timer: StepTimer, target: DbTarget, survey: ModelSurvey,
                requested: P.RequestedParams, loaded: LoadedVectors, clustered: Clustered,
                backend: ModuleType) -> None:
    """Write the result as ``gpu-cluster cluster`` would (committed or rolled back)."""
    from gpu_cluster.pipeline import stored_parameters

    record = timer.record
    if target.write_engine is None:
        record.write = {"mode": target.write_mode, "result_id": None}
        return
    plan = plan_model(survey, record.factor, requested, backend, default_host_budget())
    parameters = stored_parameters(plan, clustered.params, loaded, clustered.labels,
                                   timer.device, backend, dict(record.seconds))
    parameters["benchmark"] = {"tool": "benchmarks/sweep.py", "write": target.write_mode}
    result = ResultToWrite(loaded.model, loaded.ids, clustered.host_labels, clustered.medoids,
                           parameters)
    with timer.stage("write", total=loaded.n) as st:
        result_id = write_result(target.write_engine, result, stage=st)
    committed = target.write_mode == "committed"
    record.write = {"mode": target.write_mode, "result_id": result_id if committed else None}


def measure_db_step(timer: StepTimer, target: DbTarget, backend: ModuleType,
                    requested: P.RequestedParams) -> Clustered | None:
    """select -> read -> compute -> write for ``timer.record``'s model and factor.

    Returns the clustered data (for a baseline), or None when the model has too few
    usable rows (then the record's status says why).
    """
    record = timer.record
    survey, sel = select_stage(timer, target, record.model, record.factor)
    loaded = read_stage(timer, target, sel)
    params = planned_params(requested, loaded.n, loaded.vectors.shape[1], backend)
    if reason := P.too_few_reason(loaded.n, params):
        record.status = f"skipped: {reason}"
        return None
    clustered = compute_stages(timer, loaded.vectors, backend, params)
    write_stage(timer, target, survey, requested, loaded, clustered, backend)
    record.status = OK
    return clustered


def measure_synthetic_step(timer: StepTimer, dim: int, seed: int, backend: ModuleType,
                           requested: P.RequestedParams) -> Clustered | None:
    """generate -> compute for ``timer.record.n`` synthetic rows (nothing is written)."""
    record = timer.record
    with timer.stage("generate", total=record.n) as st:
        host_x = synthetic_embeddings(record.n, dim, seed=seed, stage=st)
    record_rate(record, "generate", record.n, dim)
    params = planned_params(requested, record.n, host_x.shape[1], backend)
    if reason := P.too_few_reason(record.n, params):
        record.status = f"skipped: {reason}"
        return None
    clustered = compute_stages(timer, host_x, backend, params)
    record.write = {"mode": "none (synthetic data)", "result_id": None}
    record.status = OK
    return clustered


def measure_baseline(timer: StepTimer, main: StepRecord, clustered: Clustered,
                     baseline: ModuleType) -> None:
    """Fit ``baseline`` on the main step's normalised rows; ARI and speed ratio on both."""
    from sklearn.metrics import adjusted_rand_score

    record = timer.record
    record.n, record.dim = main.n, main.dim
    host_x = to_host(clustered.x)
    with timer.stage("cluster", unit="fit"):
        labels = isolation.fit(baseline, host_x, clustered.params)
    record_labels(record, labels, clustered.params)
    ari = float(adjusted_rand_score(to_host(labels.labels), clustered.host_labels))
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


def planned_params(requested: P.RequestedParams, n: int, dim: int, backend) -> P.HdbscanParams:
    """The parameters a real run would use: defaults for n, min_samples capped to the
    host budget (as ``gpu-cluster cluster`` does); unplanned when nothing fits."""
    try:
        return fit_params(requested, max(n, 2), dim, backend, default_host_budget())[0]
    except MemoryBudgetError:
        return P.resolve(requested, max(n, 2))
