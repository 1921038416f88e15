"""A sweep's outputs: results.json, results.csv, PNG plots, and the terminal tables.

* ``results.json`` — the whole sweep: configuration, machine facts, every step record
  (per-stage seconds, projections, memory, clusters, parameters), the read-path
  comparison, the final power-law fits, and the stored-results check.
* ``results.csv``  — one row per factor x model x backend x stage (skipped steps too,
  with their projected seconds), for spreadsheets.
* ``stages-<model>.png`` — seconds per stage against n, log-log, one line per backend;
  ``total-seconds.png`` — a step's total seconds against n for every model and backend.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

from .measure import STAGES, StepRecord
from .runner import Sweep

CSV_COLUMNS = (
    "factor", "model", "role", "backend", "device", "n", "dim", "stage", "status", "seconds",
    "projected_s", "projection_basis", "rows_per_s", "mb_per_s", "peak_rss_bytes",
    "rss_delta_bytes", "peak_gpu_bytes", "n_clusters", "noise_fraction", "ari_vs_baseline",
    "speed_ratio_vs_baseline", "min_cluster_size", "min_samples", "cluster_selection_epsilon",
    "write_mode",
)
MIN_PLOT_SECONDS = 1e-5  # log axes: a stage too fast to see is drawn at this floor


def write_json(sweep: Sweep, path: Path) -> None:
    """The whole sweep as indented JSON (written to a temporary file, then renamed)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sweep.as_dict(), indent=2, default=str) + "\n")
    tmp.replace(path)


def step_stages(record: StepRecord) -> list[str]:
    """The stages a record ran or projected, in pipeline order ('-' when neither)."""
    present = set(record.seconds) | set(record.projected)
    return [s for s in STAGES if s in present] or ["-"]


def csv_rows(sweep: Sweep) -> list[dict]:
    """One dict per factor x model x backend x stage, keys ``CSV_COLUMNS``."""
    rows = []
    for r in sweep.steps:
        common = {
            "factor": r.factor, "model": r.model, "role": r.role, "backend": r.backend,
            "device": r.device, "n": r.n, "dim": r.dim, "status": r.status,
            "n_clusters": r.n_clusters, "noise_fraction": r.noise_fraction,
            "ari_vs_baseline": r.comparison.get("ari"),
            "speed_ratio_vs_baseline": r.comparison.get("speed_ratio"),
            "min_cluster_size": r.params.get("min_cluster_size"),
            "min_samples": r.params.get("min_samples"),
            "cluster_selection_epsilon": r.params.get("cluster_selection_epsilon"),
            "write_mode": r.write.get("mode"),
        }
        for stage in step_stages(r):
            mem = r.memory.get(stage, {})
            proj = r.projected.get(stage, {})
            rate = r.read_rate if r.read_rate.get("stage") == stage else {}
            rows.append({**common, "stage": stage, "seconds": r.seconds.get(stage),
                         "projected_s": proj.get("seconds"), "projection_basis": proj.get("basis"),
                         "rows_per_s": rate.get("rows_per_s"), "mb_per_s": rate.get("mb_per_s"),
                         "peak_rss_bytes": mem.get("peak_rss_bytes"),
                         "rss_delta_bytes": mem.get("rss_delta_bytes"),
                         "peak_gpu_bytes": mem.get("peak_gpu_bytes")})
    return rows


def write_csv(sweep: Sweep, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(sweep))
    tmp.replace(path)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "model"


def series(steps: list[StepRecord], stage: str | None) -> dict[str, list[tuple[int, float]]]:
    """backend label -> (n, median seconds at that n) of measured steps, by n.

    ``stage`` None: each step's total. Factors that select the same n (short runs) are
    folded into their median rather than drawn as a vertical segment.
    """
    by_n: dict[str, dict[int, list[float]]] = {}
    for r in steps:
        seconds = r.total_s if stage is None else r.seconds.get(stage)
        if r.status != "ok" or seconds is None:
            continue
        label = r.backend if r.role == "main" else f"{r.backend} (baseline)"
        by_n.setdefault(label, {}).setdefault(r.n, []).append(max(seconds, MIN_PLOT_SECONDS))
    return {label: [(n, statistics.median(v)) for n, v in sorted(pts.items())]
            for label, pts in by_n.items()}


def plot_lines(ax, lines: dict[str, list[tuple[int, float]]], title: str) -> None:
    for label, pts in sorted(lines.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("n (rows)")
    ax.set_ylabel("seconds")
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize="small")


def plot_model(steps: list[StepRecord], model: str, path: Path) -> None:
    """One subplot per measured stage of ``model``: seconds vs n, a line per backend."""
    import matplotlib.pyplot as plt

    stages = [s for s in STAGES if series(steps, s)]
    cols = min(4, max(len(stages), 1))
    rows = max(1, -(-len(stages) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, stage in zip(axes.flat, stages):
        plot_lines(ax, series(steps, stage), stage)
    for ax in list(axes.flat)[len(stages):]:
        ax.set_visible(False)
    fig.suptitle(f"{model}: seconds per stage vs n")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_totals(sweep: Sweep, path: Path) -> None:
    """Total seconds of the main backend's steps vs n, a line per model.

    The baseline runs only the cluster stage; it is compared on the cluster panels.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    lines = {}
    main = [r for r in sweep.steps if r.role == "main"]
    for model in dict.fromkeys(r.model for r in main):
        for label, pts in series([r for r in main if r.model == model], None).items():
            lines[f"{model} · {label}"] = pts
    plot_lines(ax, lines, "total seconds per step (all stages) vs n")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(sweep: Sweep, out_dir: Path) -> list[Path]:
    """PNG files of every model with at least one measured step; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = []
    for model in dict.fromkeys(r.model for r in sweep.steps):
        steps = [r for r in sweep.steps if r.model == model]
        if any(r.status == "ok" for r in steps):
            paths.append(out_dir / f"stages-{slug(model)}.png")
            plot_model(steps, model, paths[-1])
    if any(r.status == "ok" for r in sweep.steps):
        paths.append(out_dir / "total-seconds.png")
        plot_totals(sweep, paths[-1])
    return paths


def write_outputs(sweep: Sweep, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """results.json, results.csv and (``plots``) the PNGs in ``out_dir``; returns paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(sweep, out_dir / "results.json")
    write_csv(sweep, out_dir / "results.csv")
    paths = [out_dir / "results.json", out_dir / "results.csv"]
    return paths + (write_plots(sweep, out_dir) if plots else [])




def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:,.1f}"


def fmt_mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def fmt_count(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def timings_table(sweep: Sweep):
    """Seconds per stage of every step; a skipped step shows its status instead."""
    from rich.table import Table
    from rich.text import Text

    stages = [s for s in STAGES if any(s in r.seconds or s in r.projected for r in sweep.steps)]
    table = Table(title="seconds per stage (wall clock)", title_justify="left")
    for name in ("factor", "model", "backend", "n", "dim", *stages, "total"):
        table.add_column(name, justify="left" if name in ("model", "backend") else "right")
    table.add_column("status", overflow="fold")
    for r in sweep.steps:
        backend = r.backend if r.role == "main" else f"{r.backend} (baseline)"
        cells = [fmt_s(r.seconds.get(s)) for s in stages]
        total = fmt_s(r.total_s) if r.seconds else "–"
        table.add_row(str(r.factor), Text(r.model), Text(backend), f"{r.n:,}", str(r.dim),
                      *cells, total, Text(r.status))
    return table


def results_table(sweep: Sweep):
    """Read rate, memory, clusters and the baseline comparison of every measured step."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="rates, memory, clusters", title_justify="left")
    for name in ("factor", "model", "backend", "n", "read/gen rows/s", "MB/s", "peak RSS MiB",
                 "RSS Δ MiB", "peak GPU MiB", "clusters", "noise %", "mcs/ms", "ARI vs ref",
                 "ref/main cluster s"):
        table.add_column(name, justify="left" if name in ("model", "backend") else "right")
    for r in sweep.steps:
        if r.status != "ok":
            continue
        backend = r.backend if r.role == "main" else f"{r.backend} (baseline)"
        mcs = f"{r.params['min_cluster_size']}/{r.params['min_samples']}" if r.params else "–"
        noise = None if r.noise_fraction is None else 100 * r.noise_fraction
        ratio = r.comparison.get("speed_ratio")
        table.add_row(
            str(r.factor), Text(r.model), Text(backend), f"{r.n:,}",
            fmt_count(r.read_rate.get("rows_per_s")), fmt_count(r.read_rate.get("mb_per_s"), 1),
            fmt_mib(r.peak("peak_rss_bytes")), fmt_mib(r.peak("rss_delta_bytes")),
            fmt_mib(r.peak("peak_gpu_bytes")), fmt_count(r.n_clusters), fmt_count(noise, 1), mcs,
            fmt_count(r.comparison.get("ari"), 3), "–" if ratio is None else f"{ratio:.2f}×",
        )
    return table


def summary_lines(sweep: Sweep) -> list[str]:
    """Plain lines under the tables: machine, backends, read path, database check."""
    m, rp, backends = sweep.machine, sweep.read_path, sweep.backends
    gpu = m["gpu"]["name"] or "none"
    lines = [
        f"machine: {m['cpu_model']}, {m['cpu_count']} cores, "
        f"{m['ram_total_bytes'] / 2**30:.1f} GiB RAM, GPU: {gpu}",
        f"device: {sweep.device['kind']} ({sweep.device['why']}); main backend: "
        f"{backends['main']}; baseline: {backends['baseline'] or backends['baseline_note']}",
    ]
    if rp.get("status") == "ok":
        lib, raw = rp["library"], rp["raw"]
        lines.append(
            f"read path ({rp['model']}, n={rp['n']:,}, factor 1): load_vectors "
            f"{lib['rows_per_s']:,.0f} rows/s ({lib['mb_per_s']:,.0f} MB/s), raw sqlite3 "
            f"{raw['rows_per_s']:,.0f} rows/s ({raw['mb_per_s']:,.0f} MB/s): "
            f"ratio {rp['ratio']:.2f}")
    elif rp:
        lines.append(f"read path: {rp['status']}")
    check = sweep.database_check
    if "results_before" in check:
        lines.append(f"database: write {check['write']}; stored results before "
                     f"{check['results_before']}, after {check['results_after']}")
    lines.append(f"sweep {sweep.status}")
    return lines
