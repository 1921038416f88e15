"""Domain exceptions.

The library raises these; the CLI renders each as one line and a non-zero exit.
Anything else reaching the CLI is a bug and keeps its traceback.
"""


class GpuClusterError(Exception):
    """Base class for every expected failure of gpu_cluster."""

    exit_code = 1


class DatabaseError(GpuClusterError):
    """The database cannot be opened, read or written."""

    exit_code = 2


class DatabaseLocked(DatabaseError):
    """Another process held the lock we needed for longer than the lock timeout."""

    def __init__(self, waited_s: float, context: str = ""):
        where = f" {context}" if context else ""
        super().__init__(f"the database stayed locked by another process for {waited_s:g} s"
                         f"{where}; rerun later or raise --lock-timeout")
        self.waited_s = waited_s


class SchemaError(DatabaseError):
    """The database lacks panic-tda's tables or columns."""


class ParameterError(GpuClusterError):
    """A user-supplied option is out of its allowed range."""

    exit_code = 3


class NoGpuError(GpuClusterError):
    """A GPU was asked for but cannot be used here."""

    exit_code = 4


class ScaleOutError(GpuClusterError):
    """Dask is missing, or its scheduler cannot be reached."""

    exit_code = 6


class EnvironmentProblem(GpuClusterError):
    """The installed libraries are a combination known to fail."""

    exit_code = 5


class ModelSkipped(GpuClusterError):
    """One model cannot be clustered; the run goes on with the next one.

    ``reason`` is a short human sentence that is logged and counted.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnknownName(ParameterError):
    """A model or result named on the command line is not in the database."""


class ResultKept(DatabaseError):
    """A computed result could not be stored; it is kept in the file ``path``."""

    def __init__(self, message: str, path):
        super().__init__(message)
        self.path = path
