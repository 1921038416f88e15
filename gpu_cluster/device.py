"""Device choice and the array namespace (NumPy on the CPU, CuPy on a GPU).

CuPy is imported lazily and only here; everything else asks :func:`array_module`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .errors import NoGpuError

log = logging.getLogger("gpu_cluster")

GPU_INSTALL_HINT = "install the GPU extra with: pip install 'gpu_cluster[gpu]'"


@dataclass(frozen=True)
class Device:
    """The resolved device: ``kind`` is 'cpu' or 'gpu'; ``why`` says how it was chosen."""

    kind: str
    why: str
    name: str = "cpu"

    @property
    def xp(self) -> ModuleType:
        if self.kind == "gpu":
            import cupy

            return cupy
        return np


def gpu_status() -> tuple[bool, str]:
    """(usable, explanation) for the first CUDA device, without raising."""
    try:
        import cupy
    except ImportError:
        return False, f"CuPy is not installed; {GPU_INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device: CUDA raises its own types
        return False, f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "no CUDA device found"
    return True, "CUDA device 0"


def resolve_device(requested: str) -> Device:
    """Turn 'auto' | 'cpu' | 'gpu' into a Device; 'gpu' without one raises NoGpuError."""
    if requested == "cpu":
        return Device("cpu", "requested with --device cpu")
    usable, why = gpu_status()
    if requested == "gpu":
        if not usable:
            raise NoGpuError(f"--device gpu: {why}")
        return Device("gpu", "requested with --device gpu", _gpu_name())
    if usable:
        return Device("gpu", f"--device auto found {why}", _gpu_name())
    return Device("cpu", f"--device auto fell back to the CPU: {why}")


def _gpu_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props.get("name", b"cuda:0")
    return name.decode() if isinstance(name, bytes) else str(name)


def array_module(array) -> ModuleType:
    """NumPy or CuPy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(array) -> np.ndarray:
    """A NumPy copy (or the same array) of a NumPy/CuPy array."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)
