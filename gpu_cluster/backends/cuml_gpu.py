"""GPU backend: cuML's HDBSCAN on a CuPy array, kept thin.

Everything cuML-specific is in :func:`cuml_kwargs` (parameter translation, done once and
tested) and :func:`fit` (call, convert the results to host arrays, give failures a clear
message). CuPy and cuML are imported inside the functions, so a CPU-only install can
import this module, and ``import cuml`` (which switches CuPy's allocator to RMM) happens
only when a GPU fit runs.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from . import cuml_memory
from .cuml_memory import check_min_samples, peak_bytes, plan_min_samples
from ..params import HdbscanParams
from ..budget import format_bytes
from ..labels import Labels

NAME = "cuml"
DEVICE = "gpu"

# Up to this many rows the kNN graph is built by brute force: exact, so the labels
# match the CPU reference (the parity test), and the build cuml_memory's formula was
# measured for, which covers this project's largest model (~1.1M rows). Its cost is
# 2*n^2*d flops: ~1.9e15 at n = 1.1M, d = 768, minutes at ~10 TFLOP/s sustained
# (estimated, not measured here), but quadratic: 4x that at 2.2M and growing. Past the
# threshold nn_descent: approximate (labels may differ slightly), roughly linear in n.
BRUTE_FORCE_MAX_ROWS = 2_000_000
# nn_descent's graph must hold the neighbours a core distance needs: cuML 26.10 requires
# nnd_graph_degree >= min_samples + 1 and nnd_intermediate_graph_degree >= that (it
# warns and raises them otherwise). 64 is cuML's default degree; cuVS recommends an
# intermediate degree >= 1.5x the final one (cuML's default is 2x, 128).
NND_MIN_GRAPH_DEGREE = 64
NND_INTERMEDIATE_FACTOR = 2


def cuml_min_samples(min_samples: int) -> int:
    """cuML's min_samples for scikit-learn's ``min_samples`` (which counts the point itself).

    scikit-learn k <-> cuML k - 1, which cuML requires in 1..1023.
    """
    check_min_samples(min_samples)
    return min_samples - 1


def build_algo_for(n: int) -> str:
    """'brute_force' (exact) up to BRUTE_FORCE_MAX_ROWS rows, 'nn_descent' beyond."""
    return "brute_force" if n <= BRUTE_FORCE_MAX_ROWS else "nn_descent"


def nn_descent_kwds(min_samples_cuml: int) -> dict:
    """``build_kwds`` for nn_descent: a graph wide enough for min_samples neighbours."""
    degree = max(NND_MIN_GRAPH_DEGREE, min_samples_cuml + 1)
    return {"nnd_graph_degree": degree,
            "nnd_intermediate_graph_degree": NND_INTERMEDIATE_FACTOR * degree}


def cuml_kwargs(params: HdbscanParams, n: int) -> dict:
    """Keyword arguments of ``cuml.cluster.hdbscan.HDBSCAN`` for ``params`` at n rows.

    The one place where this tool's parameters become cuML's. min_samples is always
    passed: cuML's ``None`` means min_cluster_size, which would bypass its 1023 cap.
    """
    if params.metric != "euclidean":
        raise ParameterError(f"metric {params.metric!r}: cuML's HDBSCAN supports only 'euclidean'")
    min_samples = cuml_min_samples(params.min_samples)
    algo = build_algo_for(n)
    kwargs = {
        "min_cluster_size": int(params.min_cluster_size),
        "min_samples": min_samples,
        "cluster_selection_epsilon": float(params.cluster_selection_epsilon),
        "allow_single_cluster": bool(params.allow_single_cluster),
        "metric": "euclidean",
        "cluster_selection_method": "eom",
        "build_algo": algo,
        "output_type": "cupy",
    }
    if algo == "nn_descent":
        kwargs["build_kwds"] = nn_descent_kwds(min_samples)
    return kwargs


def device_name() -> str:
    """Name of the current CUDA device, e.g. 'NVIDIA A100-SXM4-80GB'."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props.get("name", b"cuda")
    return name.decode() if isinstance(name, bytes) else str(name)


def failure_context(n: int, dim: int, params: HdbscanParams) -> str:
    """'n=..., dim=..., min_samples=k (cuML k-1), planned ~X GiB ...' for error messages."""
    planned = peak_bytes(n, dim, params.min_samples)
    return (f"n={n:,}, dim={dim}, min_samples={params.min_samples} (cuML "
            f"{params.min_samples - 1}), planned ~{format_bytes(planned)} of GPU memory")


def fit(x, params: HdbscanParams) -> Labels:
    """Cluster the rows of ``x`` with cuML.

    Args:
        x: (n, d) CuPy float32 array, C-contiguous, L2-normalised rows.
        params: scikit-learn-convention parameters (translated by :func:`cuml_kwargs`).
    Returns:
        Labels with host (n,) int64 labels and (n,) float64 probabilities.
    Raises:
        MemoryError: out of GPU memory (CuPy's OutOfMemoryError or RMM's MemoryError).
        RuntimeError: any other CUDA failure. Both name n, min_samples and the plan.
    """
    import cupy
    import cuml
    from cuml.cluster.hdbscan import HDBSCAN

    n, dim = x.shape
    kwargs = cuml_kwargs(params, n)
    try:
        model = HDBSCAN(**kwargs).fit(x)
        labels = cupy.asnumpy(model.labels_).astype(np.int64, copy=False)
        probabilities = cupy.asnumpy(model.probabilities_).astype(np.float64)
    except MemoryError as exc:
        raise MemoryError(f"cuML HDBSCAN ran out of GPU memory at "
                          f"{failure_context(n, dim, params)}: {exc}") from exc
    except RuntimeError as exc:  # CUDARuntimeError, RAFT/cuML logic errors
        raise RuntimeError(f"cuML HDBSCAN failed on the GPU at "
                           f"{failure_context(n, dim, params)}: "
                           f"{type(exc).__name__}: {exc}") from exc
    details = {
        "library": f"cuML {cuml.__version__}", "cuml": cuml.__version__,
        "cupy": cupy.__version__, "device_name": device_name(),
        "build_algo": kwargs["build_algo"], "min_samples_cuml": kwargs["min_samples"],
        "build_kwds": kwargs.get("build_kwds"),
    }
    return Labels(labels=labels, probabilities=probabilities, details=details)


# Not measured on this project (no GPU anywhere). Brute-force kNN dominates: 2*n^2*d
# flops at an assumed 10 TFLOP/s sustained fp32, plus a per-neighbour-slot term for the
# mutual-reachability graph, MST and condensing. Treat as order of magnitude only.
_FLOPS_PER_S = 10e12
_SECONDS_PER_NEIGHBOUR_SLOT = 2e-8
_NND_SECONDS_PER_ROW = 1e-4  # nn_descent: ~linear in n at d = 768


def estimate(n: int, dim: int, params: HdbscanParams) -> tuple[float, int]:
    """Rough (seconds, peak device bytes) of one cuML fit of n x dim float32 rows."""
    if build_algo_for(n) == "brute_force":
        knn_s = 2.0 * n * n * dim / _FLOPS_PER_S
    else:
        knn_s = _NND_SECONDS_PER_ROW * n * (dim / 768)
    seconds = 1.0 + knn_s + _SECONDS_PER_NEIGHBOUR_SLOT * n * params.min_samples
    return seconds, peak_bytes(n, dim, params.min_samples)


def free_memory() -> int:
    """Bytes a fit may plan with by default: the device's free memory."""
    return cuml_memory.free_device_memory()


def plan_params(params: HdbscanParams, n: int, dim: int, *, available: int, explicit: bool):
    """min_samples within free GPU memory and cuML's limits (see backends/cuml_memory.py)."""
    return plan_min_samples(n, dim, params.min_samples, available, explicit=explicit)
