#!/usr/bin/env python3
"""CI check of the ``gpu`` extra on a machine without a GPU.

    python3 scripts/check_gpu_extra.py [--venv DIR] [--keep]

1. creates a separate venv (default: a temporary directory) and installs the project
   with ``pip install -e '.[gpu,distributed]'`` (cuML + CuPy, ~6.4 GB);
2. inside that venv (``--inside``): imports gpu_cluster, cupy, cuml and dask_cuda without
   a GPU; checks LocalCUDACluster's keywords;
   checks every keyword the cuML adapter passes against ``inspect.signature`` of the
   installed ``cuml.cluster.hdbscan.HDBSCAN``, the nn_descent ``build_kwds`` keys against
   the installed cuML, the translated value ranges, and what cuml-cu12/cupy declare
   about NumPy against the installed NumPy;
3. ``gpu-cluster cluster <demo db> --device gpu`` must exit non-zero with one clear
   line about the missing GPU.

Prints one line per check; exits 0 only when every check passed. Needs no GPU.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
failures: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> None:
    """Print one PASS/FAIL line and remember failures."""
    print(f"{'PASS' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(what)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


# ---------------------------------------------------------------- outside: venv + CLI


def create_venv(venv: Path) -> Path:
    """Create ``venv`` and install the project with the gpu extra; returns its python."""
    python = venv / "bin" / "python"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    proc = run([str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[gpu,distributed]"])
    detail = f"{time.monotonic() - start:.0f}s"
    if proc.returncode != 0:
        detail += "\n" + proc.stderr[-3000:]
    check(proc.returncode == 0, "pip install -e '.[gpu,distributed]'", detail)
    return python


def venv_size(venv: Path) -> str:
    proc = run(["du", "-sh", str(venv)])
    return proc.stdout.split()[0] if proc.returncode == 0 else "?"


def check_cli_without_gpu(venv: Path) -> None:
    """``cluster --device gpu`` on a demo db: non-zero exit, one clear stderr line."""
    cli = str(venv / "bin" / "gpu-cluster")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "demo.sqlite")
        made = run([cli, "demo-db", db, "--text-invocations", "200"])
        check(made.returncode == 0, "gpu-cluster demo-db", made.stderr.strip()[-500:])
        proc = run([cli, "cluster", db, "--device", "gpu"])
    lines = proc.stderr.strip().splitlines()
    check(proc.returncode != 0 and len(lines) == 1
          and lines[0].startswith("gpu-cluster: error: --device gpu:")
          and "Traceback" not in proc.stderr,
          "cluster --device gpu without a GPU fails cleanly",
          f"exit {proc.returncode}, stderr {proc.stderr.strip()!r}")


# ---------------------------------------------------------------- inside the gpu venv


def check_imports() -> None:
    """gpu_cluster, cupy and cuml import on a machine without a GPU."""
    import cupy
    import cuml

    import gpu_cluster
    from gpu_cluster.device import gpu_status

    usable, why = gpu_status()
    check(True, "import gpu_cluster, cupy, cuml",
          f"gpu_cluster {gpu_cluster.__version__}, cupy {cupy.__version__}, "
          f"cuml {cuml.__version__}")
    check(not usable, "gpu_status() reports no usable GPU", why)


def adapter_cases() -> list[tuple[str, dict]]:
    """(label, cuml_kwargs) for the adapter's extreme and typical inputs."""
    from gpu_cluster.backends.cuml_gpu import BRUTE_FORCE_MAX_ROWS, cuml_kwargs
    from gpu_cluster.params import HdbscanParams

    def params(min_samples):
        return HdbscanParams(min_cluster_size=5, min_samples=min_samples,
                             cluster_selection_epsilon=0.4, allow_single_cluster=True)

    return [
        ("brute_force, min_samples=2", cuml_kwargs(params(2), 1000)),
        ("brute_force, min_samples=1024", cuml_kwargs(params(1024), BRUTE_FORCE_MAX_ROWS)),
        ("nn_descent, min_samples=500", cuml_kwargs(params(500), BRUTE_FORCE_MAX_ROWS + 1)),
    ]


def check_keywords() -> None:
    """Every keyword (and value) the adapter passes exists in the installed cuML."""
    from cuml.cluster.hdbscan import HDBSCAN

    signature = inspect.signature(HDBSCAN)
    for label, kwargs in adapter_cases():
        unknown = sorted(set(kwargs) - set(signature.parameters))
        check(not unknown, f"HDBSCAN signature accepts every keyword ({label})",
              f"unknown: {unknown}" if unknown else ", ".join(sorted(kwargs)))
        check(1 <= kwargs["min_samples"] <= 1023, f"cuML min_samples in 1..1023 ({label})",
              str(kwargs["min_samples"]))
        check(kwargs["metric"] in ("euclidean", "l2")
              and kwargs["cluster_selection_method"] in ("eom", "leaf")
              and kwargs["build_algo"] in ("brute_force", "nn_descent")
              and kwargs["output_type"] in ("cupy", "numpy", "input", "array"),
              f"documented values for metric/method/build_algo/output_type ({label})")
        try:
            built = HDBSCAN(**kwargs).get_params()
            same = all(built[k] == v for k, v in kwargs.items())
            check(same, f"HDBSCAN(**kwargs) keeps every value without a GPU ({label})")
        except Exception as exc:  # constructing must not need a device
            check(False, f"HDBSCAN(**kwargs) constructs without a GPU ({label})", repr(exc))


def check_build_kwds() -> None:
    """The nn_descent build_kwds keys appear in the installed cuML's HDBSCAN code."""
    import cuml.cluster.hdbscan as pkg

    from gpu_cluster.backends.cuml_gpu import nn_descent_kwds

    blob = b"".join(p.read_bytes() for p in Path(pkg.__file__).parent.rglob("*")
                    if p.is_file() and p.suffix in (".so", ".py", ".pyx"))
    for key in nn_descent_kwds(100):
        check(key.encode() in blob, f"build_kwds key {key!r} is known to the installed cuML")


def check_ranges() -> None:
    """sklearn min_samples 2..1024 translate to cuML 1..1023; outside raises ParameterError."""
    from gpu_cluster.backends.cuml_gpu import cuml_min_samples
    from gpu_cluster.errors import ParameterError

    check(cuml_min_samples(2) == 1 and cuml_min_samples(1024) == 1023,
          "min_samples 2 -> 1 and 1024 -> 1023")
    for bad in (1, 1025):
        try:
            cuml_min_samples(bad)
            check(False, f"min_samples {bad} refused")
        except ParameterError as exc:
            check(True, f"min_samples {bad} refused", str(exc))


def numpy_requirements(dist: str) -> list[str]:
    """``dist``'s declared NumPy requirements (Requires-Dist lines naming numpy)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        return [r for r in requires(dist) or [] if r.lower().startswith("numpy")]
    except PackageNotFoundError:
        return []


def accepts(requirement: str, numpy_version: str) -> bool:
    """Whether one Requires-Dist line admits ``numpy_version`` (inactive markers admit all)."""
    from packaging.requirements import Requirement

    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return True
    return req.specifier.contains(numpy_version, prereleases=True)


def check_numpy_compatibility() -> None:
    """What cuml-cu12 and cupy-cuda12x require of NumPy, against the installed NumPy."""
    from importlib.metadata import version

    numpy_version = version("numpy")  # the core no longer pins numpy<2.4 (only 'reference' needs it)
    for dist in ("cuml-cu12", "cupy-cuda12x"):
        reqs = numpy_requirements(dist)
        check(all(accepts(r, numpy_version) for r in reqs),
              f"{dist} {version(dist)} accepts numpy {numpy_version}",
              "; ".join(reqs) or "declares no numpy requirement")


def check_dask_cuda() -> None:
    """dask_cuda imports without a GPU, and LocalCUDACluster and the worker take what
    scaleout.start_local_cluster passes (n_workers, threads_per_worker, resources)."""
    from dask_cuda import LocalCUDACluster
    from distributed import Worker

    import gpu_cluster.scaleout  # noqa: F401 (imports with the installed Dask)

    params = inspect.signature(LocalCUDACluster).parameters
    named = {"n_workers", "threads_per_worker"} <= set(params)
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    check(named and ("resources" in params or forwards),
          "LocalCUDACluster(n_workers, threads_per_worker, resources)", str(list(params)[:12]))
    check("resources" in inspect.signature(Worker).parameters, "distributed.Worker(resources=)")


def inside() -> int:
    check_imports()
    check_dask_cuda()
    check_keywords()
    check_build_kwds()
    check_ranges()
    check_numpy_compatibility()
    return 1 if failures else 0


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="where to create the venv (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside()
    start = time.monotonic()
    venv = args.venv or Path(tempfile.mkdtemp(prefix="gpu-extra-")) / "venv"
    try:
        python = create_venv(venv)
        if not failures:
            print(f"venv {venv}: {venv_size(venv)}", flush=True)
            proc = subprocess.run([str(python), __file__, "--inside"])
            check(proc.returncode == 0, "checks inside the gpu venv")
            check_cli_without_gpu(venv)
    finally:
        if not args.keep:
            shutil.rmtree(venv, ignore_errors=True)
    print(f"{'FAILED: ' + ', '.join(failures) if failures else 'gpu extra: all checks passed'} "
          f"({time.monotonic() - start:.0f}s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
