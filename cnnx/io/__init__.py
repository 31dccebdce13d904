"""Model files and checkpoints, read as untrusted data: no pickle, every array and the architecture
checked before anything is built (the writer is :mod:`cnnx.nn.saving`)."""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .modelfile import DTYPES, check_header, load_model, read_archive

__all__ = [
    "DTYPES",
    "Checkpoint",
    "check_header",
    "load_checkpoint",
    "load_model",
    "read_archive",
    "save_checkpoint",
]
