"""Find what this machine can do: one downsample factor after another, within a budget.

    python benchmarks/sweep.py DB --factors 10000,1000,100,10,1 [--device cpu|gpu|auto]
        [--model M]... [--budget-s S] [--baseline] [--write] [--out DIR]
    python benchmarks/sweep.py --synthetic 1000000,768 --factors 1000,100,10,1

A thin command line over ``benchmarks.runner.run_sweep``: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` from the repo root
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gpu_cluster import params as P  # noqa: E402
from gpu_cluster.errors import GpuClusterError, ParameterError  # noqa: E402
from gpu_cluster.progress import DEFAULT_HEARTBEAT_S  # noqa: E402

DEFAULT_FACTORS = "10000,1000,100,10,1"
DEFAULT_BUDGET_S = 600.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the sweep stops cleanly and saves what it has."""

    signum = signal.SIGTERM


def on_sigterm(signum, frame):
    raise Terminated


def parse_factors(text: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(f) for f in text.split(","))
    except ValueError:
        raise ParameterError(f"--factors {text!r}: expected integers separated by commas") from None
    return factors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/sweep.py", description=__doc__.split("\n")[0],
        epilog="Factors run from the largest (smallest n) to the smallest. Without --write "
               "nothing is left in the database: the write stage is rolled back.")
    p.add_argument("db", nargs="?", help="SQLite file or SQLAlchemy URL (omit with --synthetic)")
    p.add_argument("--factors", default=DEFAULT_FACTORS, help=f"default {DEFAULT_FACTORS}")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--model", "-m", dest="models", action="append", default=[],
                   help="model to sweep (repeatable; default: all)")
    p.add_argument("--algorithm", default=None, help="main backend (default: the device's default)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"skip a step projected to take longer (default {DEFAULT_BUDGET_S:g})")
    p.add_argument("--baseline", action="store_true",
                   help="also run scikit-learn's reference backend where it fits the budget")
    p.add_argument("--write", action="store_true", help="commit results to the database")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default out/sweep-<UTC timestamp>)")
    p.add_argument("--synthetic", metavar="N,D", default=None,
                   help="no database: N generated D-dim vectors; factor f uses N // f rows")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic data")
    p.add_argument("--batch-size", type=int, default=P.DEFAULT_BATCH_SIZE)
    p.add_argument("--epsilon", type=float, default=P.DEFAULT_EPSILON)
    p.add_argument("--min-cluster-size", type=int, default=None)
    p.add_argument("--min-samples", type=int, default=None)
    p.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_S,
                   help="seconds between progress lines when output is not a terminal")
    p.add_argument("--no-read-path", action="store_true", help="skip the read-path comparison")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def config_from(args):
    from benchmarks.runner import SweepConfig
    from benchmarks.synthetic import parse_shape

    try:
        synthetic = parse_shape(args.synthetic) if args.synthetic else None
    except ValueError as exc:
        raise ParameterError(str(exc)) from None
    return SweepConfig(
        db=args.db, factors=parse_factors(args.factors), device=args.device,
        models=tuple(args.models), algorithm=args.algorithm, budget_s=args.budget_s,
        baseline=args.baseline, write=args.write, synthetic=synthetic,
        batch_size=args.batch_size, seed=args.seed, read_path=not args.no_read_path,
        requested=P.RequestedParams(epsilon=args.epsilon, min_cluster_size=args.min_cluster_size,
                                    min_samples=args.min_samples),
    )


def print_summary(sweep, paths: list[Path]) -> None:
    from rich.console import Console

    from benchmarks.report import results_table, summary_lines, timings_table

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(timings_table(sweep))
    console.print(results_table(sweep))
    for line in summary_lines(sweep):  # free text (error messages, "[gpu]"): no markup
        console.print(line, highlight=False, markup=False)
    console.print(f"outputs: {', '.join(str(p) for p in paths)}", highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from benchmarks.report import write_outputs
        from benchmarks.runner import run_sweep
        from gpu_cluster.cli import setup_output

        cfg = config_from(args)
        out = args.out or Path("out") / f"sweep-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
        reporter = setup_output(args.heartbeat)
        signal.signal(signal.SIGTERM, on_sigterm)
        sweep = run_sweep(cfg, reporter, on_step=lambda s: write_outputs(s, out, plots=False))
    except GpuClusterError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    paths = write_outputs(sweep, out, plots=not args.no_plots)
    print_summary(sweep, paths)
    if sweep.status.startswith("interrupted"):
        return 143 if "SIGTERM" in sweep.status else 130
    return 1 if any(s.status.startswith("failed") for s in sweep.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
