"""Clustering backends behind one signature.

Each backend module defines ``NAME``, ``DEVICE`` ('cpu' or 'gpu') and

    fit(x, params: HdbscanParams) -> labels.Labels
    peak_bytes(n, dim, min_samples) -> planned peak bytes of a fit (what the fit uses)
    plan_params(params, n, dim, *, available, explicit) -> budget.MemoryPlan
        (min_samples within that peak and the backend's limits; planner.py asks it)
    estimate(n, dim, params) -> (seconds, peak bytes)
    free_memory() -> bytes a fit may plan with by default (optional: the host budget)

and optionally ``check_requested(requested)`` (refuse, before any work, a value it can
never accept). The helpers a backend alone uses sit beside it here (``knn_search``, ``cuml_memory``, ...).
``x`` is an ``(n, d)`` float32 array with L2-normalised rows (NumPy for a CPU backend,
CuPy for a GPU one). Modules are imported lazily, so a CPU install never touches cuML.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ParameterError


# algorithm name -> module, per device.
MODULES = {
    ("cpu", "knn"): "gpu_cluster.backends.knn_graph",
    ("cpu", "reference"): "gpu_cluster.backends.reference",
    ("gpu", "cuml"): "gpu_cluster.backends.cuml_gpu",
}
DEFAULT_ALGORITHM = {"cpu": "knn", "gpu": "cuml"}


def load_backend(device: str, algorithm: str | None = None) -> ModuleType:
    """Import the backend module for ``device`` and ``algorithm`` (None: the default)."""
    name = algorithm or DEFAULT_ALGORITHM.get(device)
    key = (device, name)
    if key not in MODULES:
        known = ", ".join(sorted(a for d, a in MODULES if d == device)) or "none"
        raise ParameterError(f"no algorithm {name!r} on the {device}; available: {known}")
    return importlib.import_module(MODULES[key])
