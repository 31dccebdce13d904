"""Errors a user can fix. The CLI prints their one-line message and exits non-zero; anything else is a bug."""

import sys


class CnnxError(Exception):
    """Base class for problems the user can fix (bad input, missing data, no GPU, a bad option)."""


class DataError(CnnxError):
    """A dataset file is missing, unreadable or malformed."""


class CheckpointError(CnnxError):
    """A model or checkpoint file is unreadable, tampered with or of an unknown format."""


class ConfigError(CnnxError):
    """An option or a model description does not make sense."""


class DivergenceError(CnnxError):
    """The loss or a gradient stopped being finite."""


class ResourceError(CnnxError):
    """The machine ran short: no room on the disk, an unwritable directory, or not enough memory."""


class RunLockedError(ConfigError):
    """Another process is writing the run directory (training or resuming it): one writer at a time."""


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """What running out of memory raises: MemoryError, and CuPy's OutOfMemoryError when CuPy is loaded
    (when it is not, nothing raised that). For ``except`` clauses that turn it into a ResourceError."""
    cupy = sys.modules.get("cupy")
    oom = getattr(getattr(getattr(cupy, "cuda", None), "memory", None), "OutOfMemoryError", None)
    return (MemoryError, oom) if isinstance(oom, type) else (MemoryError,)
