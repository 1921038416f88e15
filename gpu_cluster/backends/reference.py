"""Reference CPU backend: scikit-learn's HDBSCAN on the dense vectors.

Exact and slow (O(n^2)); the yardstick every other backend is compared with.
"""

from __future__ import annotations

import numpy as np

from ..budget import default_host_budget, plan_linear
from ..errors import EnvironmentProblem
from ..params import HdbscanParams, RequestedParams
from ..labels import Labels

NAME = "reference"
DEVICE = "cpu"


def check_numpy_compatible(params: HdbscanParams) -> None:
    """Refuse the scikit-learn + NumPy >= 2.4 combination that crashes with epsilon > 0.

    scikit-learn issue #33219 (every release up to 1.9.1): ``HDBSCAN.fit`` raises "only
    0-dimensional arrays can be converted to Python scalars" when distances tie
    (duplicate vectors) and ``cluster_selection_epsilon > 0``. Only this backend needs
    ``numpy<2.4``; the package itself no longer pins it.
    """
    refuse_numpy_24(params.cluster_selection_epsilon)


def check_requested(requested: RequestedParams) -> None:
    """The library checks, before any work (``pipeline.open_backend``): a scikit-learn
    with the public HDBSCAN (>= 1.3), and not NumPy >= 2.4 with epsilon > 0."""
    refuse_old_scikit_learn()
    refuse_numpy_24(requested.epsilon)


def refuse_old_scikit_learn() -> None:
    from importlib import metadata

    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        version = None
    parts = tuple(int(p) for p in (version or "0.0").split(".")[:2] if p.isdigit())
    if version is None or parts < (1, 3):
        found = f"scikit-learn {version}" if version else "no scikit-learn"
        raise EnvironmentProblem(
            f"the reference backend needs scikit-learn >= 1.3 (its HDBSCAN); found {found}: "
            "pip install 'scikit-learn>=1.3', or use --algorithm knn")


def refuse_numpy_24(epsilon: float) -> None:
    major, minor = (int(p) for p in np.__version__.split(".")[:2])
    if (major, minor) >= (2, 4) and epsilon > 0:
        raise EnvironmentProblem(
            f"the reference backend (scikit-learn's HDBSCAN) fails with NumPy {np.__version__} "
            "when epsilon > 0 (scikit-learn issue #33219): install 'numpy<2.4', or use "
            "--algorithm knn or --epsilon 0"
        )


def fit(x: np.ndarray, params: HdbscanParams) -> Labels:
    """Cluster the rows of ``x`` ((n, d) float32, normalised) with scikit-learn."""
    import sklearn
    from sklearn.cluster import HDBSCAN

    check_numpy_compatible(params)
    model = HDBSCAN(
        min_cluster_size=params.min_cluster_size,
        min_samples=params.min_samples,
        cluster_selection_epsilon=params.cluster_selection_epsilon,
        allow_single_cluster=params.allow_single_cluster,
        metric=params.metric,
        copy=True,
    )
    model.fit(x)
    return Labels(
        labels=model.labels_.astype(np.int64),
        probabilities=model.probabilities_.astype(np.float64),
        details={"library": f"scikit-learn {sklearn.__version__}"},
    )


# Measured on this project's 2-core machine: ~11 s at n = 5,000 (768-d), growing as
# n^2.1 (cpu_facts); real sentence vectors run up to ~2x slower than this.
_SECONDS_AT_5K = 11.0
_EXPONENT = 2.1


def memory_model(n: int, dim: int) -> tuple[int, int]:
    """(fixed, per-min_samples) peak host bytes of a fit, including the float32 input.

    The input, scikit-learn's float64 copy, and per point a tree query of min_samples
    (index + distance) and the spanning tree.
    """
    return 4 * n * dim + 8 * n * dim + 64 * n, 16 * n


def peak_bytes(n: int, dim: int, min_samples: int) -> int:
    """Planned peak host bytes of one fit."""
    fixed, per_k = memory_model(n, dim)
    return fixed + per_k * min_samples


def estimate(n: int, dim: int, params: HdbscanParams) -> tuple[float, int]:
    """Rough (seconds, peak host bytes) of one fit of n x dim vectors."""
    seconds = _SECONDS_AT_5K * (n / 5000) ** _EXPONENT * (dim / 768)
    return seconds, peak_bytes(n, dim, params.min_samples)


def free_memory() -> int:
    """Bytes a fit may plan with by default: the host budget (45% of the RAM)."""
    return default_host_budget()


def plan_params(params: HdbscanParams, n: int, dim: int, *, available: int, explicit: bool):
    """min_samples within the host memory budget (see gpu_cluster.budget)."""
    fixed, per_k = memory_model(n, dim)
    return plan_linear(params.min_samples, explicit=explicit, n=n, dim=dim, fixed=fixed,
                       per_k=per_k, available=available, what="scikit-learn's dense fit")
