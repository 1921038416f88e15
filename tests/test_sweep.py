"""The benchmark harness (benchmarks/): outputs of a tiny sweep, the budget projection,
and the user's database left untouched without --write."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a directory of the repo, not an installed package

from benchmarks.measure import warm_up  # noqa: E402
from benchmarks.projection import Projector, budget_verdict, fit_power_law  # noqa: E402
from benchmarks.report import CSV_COLUMNS, csv_rows, write_outputs  # noqa: E402
from benchmarks.runner import SweepConfig, run_sweep  # noqa: E402
from benchmarks.synthetic import synthetic_embeddings  # noqa: E402
from gpu_cluster.backends import MODULES  # noqa: E402
from gpu_cluster.labels import Labels  # noqa: E402
from gpu_cluster.budget import plan_linear  # noqa: E402
from helpers import make_copyable_demo  # noqa: E402
from gpu_cluster.demo import DemoSpec  # noqa: E402
from gpu_cluster.device import Device  # noqa: E402

pytestmark = pytest.mark.slow  # benchmark sweeps

# 2,000 TEXT invocations in runs of 20: factor 100 -> 100 rows per model, factor 10 -> 200.
SPEC = DemoSpec(text_invocations=2000, dim=64, seed=0, max_length=40)
REAL_MODELS = ("Nomic", "STSBMpnet", "STSBRoberta")
N_AT = {100: 100, 10: 200}
STAGES_RUN = {"select", "read", "normalise", "cluster", "medoids", "write"}


@pytest.fixture(scope="module")
def bench_template(tmp_path_factory):
    return make_copyable_demo(tmp_path_factory.mktemp("bench") / "template.sqlite", SPEC)


@pytest.fixture
def bench_db(bench_template, tmp_path):
    path = tmp_path / "user.sqlite"
    shutil.copy(bench_template, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_rows(path: Path) -> tuple[int, int]:
    """(clusteringresult rows, embeddingcluster rows), read with raw sqlite3 (WAL included)."""
    with sqlite3.connect(path) as conn:
        results = conn.execute("SELECT count(*) FROM clusteringresult").fetchone()[0]
        members = conn.execute("SELECT count(*) FROM embeddingcluster").fetchone()[0]
    return results, members


def main_steps(sweep_dict: dict, status: str = "ok") -> list[dict]:
    return [s for s in sweep_dict["steps"] if s["role"] == "main" and s["status"] == status]


# --- the command: a tiny sweep produces JSON, CSV and PNGs with the expected keys ----------

def test_tiny_sweep_command_writes_json_csv_and_plots(bench_db, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), str(bench_db), "--factors",
         "100,10", "--device", "cpu", "--baseline", "--budget-s", "120", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "seconds per stage" in proc.stdout and "ok" in proc.stdout
    assert "INFO" in proc.stderr and "cluster: started" in proc.stderr  # progress lines

    data = json.loads((out / "results.json").read_text())
    assert data["status"] == "complete"
    assert {"config", "machine", "device", "backends", "steps", "read_path", "fits",
            "database_check", "warmup_s"} <= data.keys()
    machine = data["machine"]
    assert {"cpu_model", "cpu_count", "ram_total_bytes", "gpu", "versions", "blas"} <= machine.keys()
    assert {"numpy", "scipy", "scikit-learn", "sqlalchemy"} <= machine["versions"].keys()
    assert data["config"]["factors_run_order"] == [100, 10]

    ok = main_steps(data)
    assert sorted((s["factor"], s["model"]) for s in ok) == sorted(
        (f, m) for f in (100, 10) for m in REAL_MODELS)
    for step in ok:
        assert step["n"] == N_AT[step["factor"]] and step["dim"] == SPEC.dim
        assert set(step["seconds"]) == STAGES_RUN and all(v >= 0 for v in step["seconds"].values())
        assert set(step["projected"]) == STAGES_RUN
        assert step["read_rate"]["rows_per_s"] > 0 and step["read_rate"]["mb_per_s"] > 0
        assert step["peak_rss_bytes"] > 0 and step["memory"]["cluster"]["peak_gpu_bytes"] is None
        assert step["n_clusters"] >= 0 and 0.0 <= step["noise_fraction"] <= 1.0
        assert step["params"]["min_cluster_size"] == 2 and step["backend"] == data["backends"]["main"]
        assert step["write"]["mode"] == "rolled back"
    dummy = [s for s in data["steps"] if s["model"] == "Dummy"]
    assert dummy and all(s["status"].startswith("skipped: only") for s in dummy)

    baseline = [s for s in data["steps"] if s["role"] == "baseline"]
    if data["backends"]["main"] == "reference":
        assert not baseline and "reference" in data["backends"]["baseline_note"]
    else:  # reference baseline beside the main backend, on the same rows
        assert len(baseline) == len(ok) and all(s["status"] == "ok" for s in baseline)
        for step in ok + baseline:
            assert -1.0 <= step["comparison"]["ari"] <= 1.0
            assert step["comparison"]["speed_ratio"] > 0

    rp = data["read_path"]
    assert rp["status"] == "ok" and rp["n"] == SPEC.text_invocations
    assert rp["raw"]["rows_per_s"] > 0 and rp["library"]["rows_per_s"] > 0 and rp["ratio"] > 0

    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    cluster_rows = [r for r in rows if r["stage"] == "cluster" and r["role"] == "main"]
    assert len(cluster_rows) == len(ok) and all(float(r["seconds"]) >= 0 for r in cluster_rows)
    assert len(rows) == sum(len(s["seconds"]) or 1 for s in data["steps"])

    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"stages-{m}.png" for m in REAL_MODELS} | {"total-seconds.png"}
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the budget projection --------------------------------------------------------------

def test_power_law_fit_recovers_the_exponent_and_clamps_flat_fits():
    ns = [100, 1_000, 10_000]
    law = fit_power_law(ns, [2e-6 * n**2 for n in ns], prior_exponent=2.0)
    assert law.exponent == pytest.approx(2.0)
    assert law.seconds(100_000) == pytest.approx(2e-6 * 1e10, rel=1e-6)
    # fixed costs flatten small-n fits: a slope of 0.3 is clamped to linear
    flat = fit_power_law(ns, [0.01 * n**0.3 for n in ns], prior_exponent=2.0)
    assert flat.exponent == 1.0 and "raised" in flat.basis
    # only the two largest n count: a 5-row model measured last does not flatten the slope
    local = fit_power_law([5, *ns], [1e-3, *(2e-6 * n**2 for n in ns)], prior_exponent=1.0)
    assert local.exponent == pytest.approx(2.0)
    # one point: the stage's usual exponent
    one = fit_power_law([1_000], [2.0], prior_exponent=2.0)
    assert one.seconds(10_000) == pytest.approx(200.0)


def test_budget_projection_skips_a_step_it_should_skip():
    proj = Projector()
    key = ("cluster", "knn", 768)
    assert proj.project(key, 10_000, prior_s=3.0).seconds == 3.0  # no data: the prior
    proj.record(key, 1_000, 2.0)
    far, near = proj.project(key, 10_000, prior_s=3.0), proj.project(key, 2_000, prior_s=3.0)
    assert far.seconds == pytest.approx(200.0) and near.seconds == pytest.approx(8.0)
    assert budget_verdict(far.seconds, 60) == "skipped: projected 200.0 s > budget 60 s"
    assert budget_verdict(near.seconds, 60) is None
    assert budget_verdict(far.seconds, None) is None
    # a backend whose own estimate grows as n^2.1 raises a flatter measured slope
    proj.record(key, 2_000, 2.0 * 2**1.2)
    assert proj.project(key, 20_000, 0.0).seconds == pytest.approx(2.0 * 2**1.2 * 10**1.2)
    raised = proj.project(key, 20_000, 0.0, min_exponent=2.1)
    assert raised.seconds == pytest.approx(2.0 * 2**1.2 * 10**2.1) and "raised" in raised.basis


class CallLog:
    """Sizes the fake backend was fitted on, kept in a file: fits run in child processes."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, n: int) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"{n}\n")

    def __eq__(self, other) -> bool:
        return self.sizes() == other

    def sizes(self) -> list[int]:
        return [int(v) for v in self.path.read_text().split()] if self.path.exists() else []

    def __repr__(self) -> str:
        return repr(self.sizes())


def slow_fake_backend(calls: CallLog) -> types.ModuleType:
    """A backend whose fit takes 0.2 s per 100 rows, squared: deterministic projections."""
    mod = types.ModuleType("fake_slow_backend")
    mod.NAME, mod.DEVICE = "slowfake", "cpu"

    def fit(x, params):
        calls.append(x.shape[0])
        time.sleep(0.2 * (x.shape[0] / 100) ** 2)
        n = x.shape[0]
        return Labels(np.zeros(n, np.int64), np.ones(n), {"library": "fake"})

    mod.fit = fit
    mod.estimate = lambda n, dim, params: (0.2 * (n / 100) ** 2, 0)
    mod.plan_params = lambda params, n, dim, *, available, explicit: plan_linear(
        params.min_samples, explicit=explicit, n=n, dim=dim, fixed=0, per_k=1,
        available=available, what="nothing")
    return mod


def test_sweep_records_a_step_projected_past_the_budget_instead_of_running_it(
        bench_db, monkeypatch, tmp_path):
    calls = CallLog(tmp_path / "calls")
    monkeypatch.setitem(sys.modules, "fake_slow_backend", slow_fake_backend(calls))
    monkeypatch.setitem(MODULES, ("cpu", "slowfake"), "fake_slow_backend")
    cfg = SweepConfig(db=str(bench_db), factors=(10, 100), device="cpu", algorithm="slowfake",
                      models=("Nomic", "STSBMpnet"), budget_s=0.5, read_path=False)
    sweep = run_sweep(cfg)
    by_factor = {f: [s for s in sweep.as_dict()["steps"] if s["factor"] == f] for f in (100, 10)}
    assert [s["status"] for s in by_factor[100]] == ["ok", "ok"]  # 0.2 s each: within budget
    for small, step in zip(by_factor[100], by_factor[10]):
        # n=200: its n=100 step's ~0.2 s * (200/100)^2 = ~0.8 s projected > 0.5 s (from the
        # measured seconds, which a loaded machine stretches past the fake's 0.2 s sleep)
        assert step["status"].startswith("skipped: projected ")
        assert step["status"].endswith(" s > budget 0.5 s")
        assert small["model"] == step["model"]
        assert step["projected"]["cluster"]["seconds"] == pytest.approx(
            4 * small["seconds"]["cluster"], rel=0.2)
        assert step["seconds"] == {}
    assert calls == [256, 256, 100, 100]  # the warm-up (twice), then never the skipped n=200
    rows = [r for r in csv_rows(sweep) if r["factor"] == 10]  # one row per projected stage
    assert len(rows) == 2 * 6 and all(r["status"].startswith("skipped: projected") for r in rows)
    assert all(r["seconds"] is None and r["projected_s"] > 0 for r in rows if r["stage"] == "cluster")


# --- the user's database ----------------------------------------------------------------

def test_sweep_without_write_leaves_the_database_unchanged(bench_db):
    before = sha256(bench_db)
    sweep = run_sweep(SweepConfig(db=str(bench_db), factors=(100, 10), device="cpu",
                                  read_path=False))
    ok = main_steps(sweep.as_dict())
    assert len(ok) == 6
    for step in ok:  # the write stage did run, in full, and was rolled back
        assert step["seconds"]["write"] > 0 and step["write"] == {"mode": "rolled back",
                                                                   "result_id": None}
    assert sha256(bench_db) == before
    assert stored_rows(bench_db) == (0, 0)
    assert sweep.database_check == {"write": "rolled back", "results_before": 0, "results_after": 0}
    assert not Path(f"{bench_db}-wal").exists() or Path(f"{bench_db}-wal").stat().st_size == 0


def test_sweep_with_write_stores_one_result_per_measured_step(bench_db, tmp_path):
    sweep = run_sweep(SweepConfig(db=str(bench_db), factors=(100, 10), device="cpu",
                                  write=True, read_path=False))
    ok = main_steps(sweep.as_dict())
    assert len(ok) == 6
    assert stored_rows(bench_db) == (6, sum(s["n"] for s in ok))
    with sqlite3.connect(bench_db) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM clusteringresult")}
        params = [json.loads(r[0]) for r in conn.execute("SELECT parameters FROM clusteringresult")]
    assert ids == {s["write"]["result_id"] for s in ok}
    assert all(p["benchmark"]["write"] == "committed" for p in params)
    assert sorted(p["downsample"] for p in params) == [10, 10, 10, 100, 100, 100]
    paths = write_outputs(sweep, tmp_path / "out", plots=False)
    assert [p.name for p in paths] == ["results.json", "results.csv"]


# --- synthetic mode ---------------------------------------------------------------------

def test_synthetic_data_is_embedding_shaped_and_nested_across_factors():
    x = synthetic_embeddings(20_000, 32, seed=3)
    assert x.dtype == np.float32 and x.shape == (20_000, 32)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    distinct = np.unique(x, axis=0).shape[0]
    assert 0.2 < 1 - distinct / x.shape[0] < 0.35  # ~30% of rows copy a canonical vector
    assert np.array_equal(synthetic_embeddings(1_000, 32, seed=3), x[:1_000])


def test_synthetic_sweep_needs_no_database():
    sweep = run_sweep(SweepConfig(db=None, synthetic=(2_000, 16), factors=(10, 1), device="cpu"))
    steps = sweep.as_dict()["steps"]
    assert [(s["n"], s["status"]) for s in steps] == [(200, "ok"), (2_000, "ok")]
    assert all({"generate", "normalise", "cluster", "medoids"} == set(s["seconds"]) for s in steps)
    assert sweep.read_path["status"].startswith("skipped: synthetic")


def test_warm_up_fits_before_anything_is_timed_here_and_in_a_child(tmp_path):
    """Once in this process (its imports outlive the fit, so the first timed step's
    forked child inherits them, like every later one's) and once isolated, as timed
    steps fit."""
    calls, pids = CallLog(tmp_path / "calls"), CallLog(tmp_path / "pids")
    backend = slow_fake_backend(calls)
    real_fit = backend.fit
    backend.fit = lambda x, params: pids.append(os.getpid()) or real_fit(x, params)
    seconds = warm_up(backend, Device("cpu", "test"))
    assert calls == [256, 256] and seconds >= 2 * 0.2 * 2.56**2
    assert pids.sizes()[0] == os.getpid() and pids.sizes()[1] != os.getpid()
