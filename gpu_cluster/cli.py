"""``gpu-cluster``: a thin command line over the library.

Each command parses options, calls one library function and prints. Expected failures
(:class:`GpuClusterError`) become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import signal
import sys

import click

from . import __version__
from . import params as P
from .errors import GpuClusterError
from .budget import format_bytes
from .progress import DEFAULT_HEARTBEAT_S, Reporter, RichReporter, format_seconds

log = logging.getLogger("gpu_cluster")


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Cli(click.Group):
    """Renders domain errors as one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GpuClusterError as exc:
            click.echo(f"gpu-cluster: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            click.echo(f"gpu-cluster: interrupted by {signal.Signals(signum).name}", err=True)
            sys.exit(128 + signum)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so open transactions roll back on the way out."""

    signum = signal.SIGTERM


def interrupt_on_signal(signum, frame):
    """Log the signal, then raise KeyboardInterrupt (Terminated for SIGTERM)."""
    log.error("received %s: stopping; the model in progress is stored whole or not at all",
              signal.Signals(signum).name)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGTERM and SIGINT are logged and raise KeyboardInterrupt, even where SIGINT was
    inherited as ignored (a background job under ``nohup ... &``), so ``kill -INT`` stops
    a run too."""
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    signal.signal(signal.SIGINT, interrupt_on_signal)


def lock_timeout_option(f):
    """``--lock-timeout`` for the short commands: a bounded wait by default."""
    return click.option(
        "--lock-timeout", default=P.DEFAULT_LOCK_TIMEOUT_S, show_default=True, type=float,
        help="Seconds to wait while another process (panic-tda, say) holds the database's "
             "lock, logging while it waits; then stop with an error.")(f)


def unbounded_lock_timeout_option(f):
    """``--lock-timeout`` for commands that store computed results: no limit by default."""
    return click.option(
        "--lock-timeout", default=None, type=float,
        help="Bound, in seconds, on waiting for another process's lock (panic-tda writing, "
             "say). Default: wait as long as it takes, logging what it waits for. When the "
             "bound is hit the computed result is kept in a file beside the database and "
             "stored by the next run, without computing it again.")(f)


def setup_output(heartbeat_s: float) -> Reporter:
    """One live rich display with the log above it on a terminal; timestamped plain
    lines otherwise (nohup). Close the reporter when the run ends."""
    root = logging.getLogger("gpu_cluster")
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(stderr=True)
        root.addHandler(RichHandler(console=console, show_path=False))
        return RichReporter(console)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    return Reporter(heartbeat_s)


def requested_params(epsilon, min_cluster_size, min_samples) -> P.RequestedParams:
    return P.RequestedParams(epsilon=epsilon, min_cluster_size=min_cluster_size, min_samples=min_samples)


def size_option(ctx, param, value):
    """Click callback: '80GiB' -> bytes (None stays None)."""
    if value is None:
        return None
    from .budget import parse_bytes

    try:
        return parse_bytes(value)
    except GpuClusterError as exc:
        raise click.BadParameter(str(exc)) from None


def param_options(f):
    """Options shared by ``cluster`` and ``plan``."""
    opts = [
        click.option("--downsample", "-d", default=1, show_default=True, type=int,
                     help="Keep every N-th embedding-bearing position of each run."),
        click.option("--model", "-m", "models", multiple=True,
                     help="Embedding model to cluster (repeatable; default: all)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
                     show_default=True, help="auto uses a GPU when one is usable."),
        click.option("--algorithm", default=None,
                     help="Backend algorithm (default: the device's default; 'reference' "
                          "is scikit-learn's exact HDBSCAN)."),
        click.option("--epsilon", default=P.DEFAULT_EPSILON, show_default=True, type=float,
                     help="cluster_selection_epsilon (distance on unit vectors)."),
        click.option("--min-cluster-size", default=None, type=int,
                     help="Default: max(2, int(0.001 * n))."),
        click.option("--min-samples", default=None, type=int,
                     help="Counts the point itself, as scikit-learn does. Default: "
                          "min-cluster-size, capped to fit the memory budget."),
        click.option("--memory-budget", default=None, callback=size_option,
                     help="Host memory a CPU fit may plan with, e.g. 12GiB (default: 45% of the RAM)."),
        click.option("--gpu-memory", default=None, callback=size_option,
                     help="GPU memory to plan with, e.g. 80GiB (default: the device's free memory)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def workers_option(f):
    """``--workers``: shared by ``cluster`` and ``plan``."""
    return click.option(
        "--workers", default=None, type=str, metavar="N",
        help="Run one model per worker of a local Dask cluster: N worker processes sharing "
             "the cores and the memory budget on the CPU; one worker per GPU on GPUs ('gpus', "
             "or N for the first N). Needs the 'distributed' extra.")(f)


def scale_out(workers: str | None, scheduler: str | None, timeout_s: float):
    """The ScaleOut of ``--workers``/``--scheduler``, or None for an in-process run (which
    then never imports Dask)."""
    if workers is None and not scheduler:
        return None
    from .scaleout import ScaleOut

    return ScaleOut(workers=workers_count(workers), scheduler=scheduler,
                    local_gpu=workers == "gpus", connect_timeout_s=timeout_s)


def workers_count(workers: str | None) -> int | None:
    """'3' -> 3; 'gpus' or None -> None (one per GPU, or no local cluster)."""
    if workers is None or workers == "gpus":
        return None
    try:
        return int(workers)
    except ValueError:
        raise click.BadParameter(f"{workers!r} is not a number of workers (or 'gpus')",
                                 param_hint="--workers") from None


@click.group(cls=Cli, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="gpu-cluster")
def main():
    """HDBSCAN clusters of panic-tda embeddings, stored back in the same database.

    DB is a SQLite file path or any SQLAlchemy URL.
    """


@main.command("demo-db", short_help="Write a panic-tda-shaped demo database.")
@click.argument("path")
@click.option("--text-invocations", default=30_000, show_default=True, type=int,
              help="TEXT invocations, i.e. vectors per real model (30k take ~15 s).")
@click.option("--dim", default=768, show_default=True, type=int,
              help="Vector dimension of the real models.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Random seed: the same seed writes the same data.")
def demo_db(path, text_invocations, dim, seed):
    """Write a panic-tda-shaped demo database to PATH (which must not exist, in a folder
    that does): runs, invocations and embeddings of three real models and a Dummy."""
    from .demo import DemoSpec, make_demo_db

    counts = make_demo_db(path, DemoSpec(text_invocations=text_invocations, dim=dim, seed=seed))
    click.echo(f"wrote {path}: {counts['runs']} runs, {counts['invocations']} invocations, "
               f"{counts['embeddings']} embeddings")


@main.command(short_help="Cluster each model of DB and store the results.")
@click.argument("db")
@param_options
@click.option("--batch-size", default=P.DEFAULT_BATCH_SIZE, show_default=True, type=int,
              help="Rows per SQL fetch while reading vectors.")
@click.option("--replace", is_flag=True, help="Delete each model's earlier results (same transaction).")
@click.option("--heartbeat", default=DEFAULT_HEARTBEAT_S, show_default=True, type=float,
              help="Seconds between progress lines when output is not a terminal.")
@unbounded_lock_timeout_option
@click.option("--check", is_flag=True,
              help="Only check that the run can start (options, database open for writing, "
                   "models, device), print what it would cluster, and exit.")
@workers_option
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run one model per worker of the Dask cluster whose scheduler is at "
                   "ADDRESS (e.g. tcp://10.0.0.5:8786); this process writes the results. "
                   "Needs the 'distributed' extra.")
@click.option("--scheduler-timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for the --scheduler to answer.")
def cluster(db, downsample, models, device, algorithm, epsilon, min_cluster_size,
            min_samples, memory_budget, gpu_memory, batch_size, replace, heartbeat,
            lock_timeout, check, workers, scheduler, scheduler_timeout):
    """Cluster each embedding model of DB and store one result per model.

    A result that cannot be stored (a lock held past --lock-timeout, a stop while
    waiting, a full disk) is kept beside the database and stored by the next run.
    """
    from .pipeline import RunOptions, check_run, cluster_database, kept_results_of

    options = RunOptions(
        downsample=downsample, models=tuple(models), device=device, algorithm=algorithm,
        requested=requested_params(epsilon, min_cluster_size, min_samples),
        batch_size=batch_size, replace=replace, memory_budget=memory_budget,
        gpu_memory=gpu_memory, lock_timeout=lock_timeout,
    )
    P.validate(heartbeat=heartbeat)
    scale = scale_out(workers, scheduler, scheduler_timeout)
    if check:
        dev, surveys = check_run(db, options)
        names = ", ".join(f"{m} ({s.total:,} embeddings)" for m, s in surveys.items())
        click.echo(f"ok: {db} opens for writing; device {dev.kind}; would cluster {names or 'nothing'}")
        if scale is not None:
            from .scaleout import check_scale_out

            click.echo(f"ok: {check_scale_out(scale)}")
        if kept := kept_results_of(db):
            click.echo(f"{len(kept)} result(s) kept by an earlier run, stored by this run if "
                       f"they match it: {', '.join(str(k.path) for k in kept)}")
        return
    reporter = setup_output(heartbeat)
    stop_on_signals()
    try:
        if scale is None:
            summary = cluster_database(db, options, reporter)
        else:
            from .scaleout import cluster_database_on_dask

            summary = cluster_database_on_dask(db, options, scale, reporter)
    finally:
        reporter.close()
    for o in summary.outcomes:
        if o.status == "clustered":
            click.echo(f"{o.model}: clustered n={o.n} clusters={o.n_clusters} "
                       f"noise={100 * o.n_noise / max(o.n, 1):.1f}% result={o.result_id} "
                       f"in {format_seconds(sum(o.seconds.values()))}")
        else:
            click.echo(f"{o.model}: {o.status}: {o.reason}")
    click.echo(f"done: {summary.count('clustered')} clustered, {summary.count('skipped')} "
               f"skipped, {summary.count('failed')} failed")
    sys.exit(0 if summary.ok else 1)


def open_checked(db: str, lock_timeout: float, *, write: bool = False):
    """Validate --lock-timeout, then open ``db``."""
    from .database import open_database

    P.validate(lock_timeout=lock_timeout)
    return open_database(db, write=write, lock_timeout_s=lock_timeout)


@main.command(short_help="Show what `cluster` would do; writes nothing.")
@click.argument("db")
@param_options
@lock_timeout_option
@workers_option
def plan(db, downsample, models, device, algorithm, epsilon, min_cluster_size, min_samples,
         memory_budget, gpu_memory, lock_timeout, workers):
    """Show what `cluster` would do per model; counts only, writes nothing.

    With --device gpu --gpu-memory SIZE it plans for such a GPU on any machine. With
    --workers N it plans each model with one worker's share and says which run at once.
    """
    from .pipeline import plan_database

    split = None
    if workers is not None:
        from .scaleout import plan_split

        split = plan_split(workers_count(workers), device, memory_budget, gpu_memory)
        memory_budget = split.memory_budget or memory_budget
    dev, plans = plan_database(
        db, downsample=downsample, models=tuple(models), device=device, algorithm=algorithm,
        requested=requested_params(epsilon, min_cluster_size, min_samples),
        memory_budget=memory_budget, gpu_memory=gpu_memory, lock_timeout=lock_timeout)
    click.echo(f"device: {dev.kind} ({dev.why})")
    if split is not None:
        click.echo("\n".join(split.lines([p.model for p in plans if p.ready])))
    for p in plans:
        click.echo(plan_text(p))


def plan_text(p) -> str:
    """The lines ``plan`` prints for one model."""
    s = p.selection
    lines = [f"{p.model}: embeddings={s.survey.total} selected={s.expected_rows} dim={s.dim}",
             f"  rule: {s.rule}"]
    if s.wrong_length or s.null_vectors or s.survey.orphans:
        lines.append(f"  skipped rows: wrong_length={s.wrong_length} null={s.null_vectors} "
                     f"no_invocation={s.survey.orphans}")
    if p.skip_reason or p.failure:
        lines.append(f"  would skip: {p.skip_reason}" if p.skip_reason else f"  would fail: {p.failure}")
        return "\n".join(lines)
    pr = p.params
    lines.append(f"  params: min_cluster_size={pr.min_cluster_size} min_samples={pr.min_samples} "
                 f"epsilon={pr.cluster_selection_epsilon} allow_single_cluster={pr.allow_single_cluster}")
    lines.append(f"  memory: {p.memory.reason}")
    device = f", GPU {format_bytes(p.device_bytes)}" if p.device_bytes else ""
    lines.append(f"  estimate: peak host memory {format_bytes(p.host_bytes)}{device}, read "
                 f"~{format_seconds(p.read_seconds)}, cluster ~{format_seconds(p.fit_seconds)}")
    return "\n".join(lines)


def result_line(r) -> str:
    eps = r.parameters.get("cluster_selection_epsilon")
    mcs = r.parameters.get("min_cluster_size", "?")
    ms = r.parameters.get("min_samples", "?")
    ds = r.parameters.get("downsample", "?")
    return (f"{r.id}  {r.model:<14} {r.created_at:%Y-%m-%d %H:%M:%S}  n={r.n:<8} "
            f"clusters={r.n_clusters:<5} noise={100 * r.noise_fraction:5.1f}%  "
            f"eps={eps} mcs={mcs} ms={ms} downsample={ds} backend={r.parameters.get('backend', '?')}")


@main.command("list", short_help="List every stored clustering result.")
@click.argument("db")
@click.option("--model", "-m", default=None, help="Only this model's results.")
@lock_timeout_option
def list_cmd(db, model, lock_timeout):
    """List every stored clustering result, oldest first."""
    from .results import list_results

    results = list_results(open_checked(db, lock_timeout), model)
    for r in results:
        click.echo(result_line(r))
    click.echo(f"{len(results)} result(s)")


@main.command(short_help="Show the latest stored result of each model.")
@click.argument("db")
@lock_timeout_option
def status(db, lock_timeout):
    """Show the latest stored result of each model."""
    from .results import latest_results

    latest = latest_results(open_checked(db, lock_timeout))
    for r in latest.values():
        click.echo(result_line(r))
    if not latest:
        click.echo("no clustering results stored")


@main.command(short_help="Delete stored results (needs --yes).")
@click.argument("db")
@click.option("--model", "-m", default=None, help="Delete all of this model's results.")
@click.option("--result", "result_id", default=None, help="Delete this one result (id).")
@click.option("--yes", is_flag=True, help="Really delete (required).")
@lock_timeout_option
def delete(db, model, result_id, yes, lock_timeout):
    """Delete stored results (with their embeddingcluster rows)."""
    from .results import delete_results

    if not yes:
        raise click.UsageError("refusing to delete without --yes")
    engine = open_checked(db, lock_timeout, write=True)
    n = delete_results(engine, model=model, result_id=result_id)
    click.echo(f"deleted {n} clustering result(s)")


@main.command("store-pending", short_help="Store results kept by a run that could not write.")
@click.argument("db")
@click.option("--replace", is_flag=True, help="Delete each stored model's earlier results.")
@unbounded_lock_timeout_option
def store_pending(db, replace, lock_timeout):
    """Store the results that `cluster` computed but could not write (kept in DB.pending/
    beside a SQLite file), after checking that each one's rows are unchanged. Nothing is
    computed again. Exit 1 if a kept result no longer matches the database (it is left)."""
    from .pipeline import store_kept_results

    P.validate(lock_timeout=lock_timeout)
    reporter = setup_output(DEFAULT_HEARTBEAT_S)
    stop_on_signals()
    try:
        outcomes = store_kept_results(db, replace=replace, lock_timeout=lock_timeout,
                                      reporter=reporter)
    finally:
        reporter.close()
    for o in outcomes:
        click.echo(f"{o.model}: {o.status}: {o.detail} ({o.path})")
    left = sum(o.status == "left" for o in outcomes)
    click.echo(f"{len(outcomes) - left} stored, {left} left" if outcomes else "no kept results")
    sys.exit(1 if left else 0)


if __name__ == "__main__":
    main()
