"""Facts about the machine a sweep ran on: CPU, cores, RAM, GPU, library versions, BLAS."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import psutil

from gpu_cluster.device import gpu_status

# distribution name -> key in the report
DISTRIBUTIONS = {
    "gpu_cluster": "gpu_cluster", "numpy": "numpy", "scipy": "scipy",
    "scikit-learn": "scikit-learn", "SQLAlchemy": "sqlalchemy", "rich": "rich",
    "matplotlib": "matplotlib", "psutil": "psutil", "threadpoolctl": "threadpoolctl",
    "cupy-cuda12x": "cupy", "cuml-cu12": "cuml",
}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def library_versions() -> dict[str, str]:
    """Installed version of each library that matters to the timings (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for dist, key in DISTRIBUTIONS.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded (empty if unavailable)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)
    import scipy.linalg  # noqa: F401

    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def gpu_facts() -> dict:
    """{'usable', 'why', 'name', 'memory_bytes'} of CUDA device 0 (name None without one)."""
    usable, why = gpu_status()
    facts = {"usable": usable, "why": why, "name": None, "memory_bytes": None}
    if usable:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"cuda:0")
        facts["name"] = name.decode() if isinstance(name, bytes) else str(name)
        facts["memory_bytes"] = int(props.get("totalGlobalMem", 0)) or None
    return facts


def machine_facts() -> dict:
    """Everything a reader needs to compare this sweep with one from another machine."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "ram_total_bytes": psutil.virtual_memory().total,
        "ram_available_bytes": psutil.virtual_memory().available,
        "gpu": gpu_facts(),
        "versions": library_versions(),
        "blas": blas_info(),
    }
