"""Click options that several commands share, declared once: ``--device``, ``--model`` and
``--data-dir``."""

from __future__ import annotations

from pathlib import Path

import click

from cnnx.backends import DEVICES
from cnnx.errors import CheckpointError
from cnnx.nn.presets import PRESETS

DEVICE_HELP = (
    "cpu (NumPy), gpu (CuPy; fails with the reason when no CUDA device is usable) or auto (gpu if usable)."
)
MODEL_HELP = (
    "Architecture preset: " + "; ".join(f"{name}, {text}" for name, (_, text) in PRESETS.items()) + "."
)
DATA_DIR_HELP = (
    "Directory with the four Fashion-MNIST IDX files or the Kaggle CSVs (default: search, then download)."
)


def device_option(default: str | None = "cpu"):
    """``--device cpu|gpu|auto``."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default=default,
        show_default=default is not None,
        help=DEVICE_HELP,
    )


def model_option(default: str | None = "seed"):
    """``--model <preset>``, passed to the command as ``model_name``."""
    return click.option(
        "--model",
        "model_name",
        type=click.Choice(list(PRESETS)),
        default=default,
        show_default=default is not None,
        help=MODEL_HELP,
    )


def data_dir_option(help_text: str = DATA_DIR_HELP):
    """``--data-dir DIR``."""
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=help_text
    )


def model_file(path: Path) -> Path:
    """The model file a command was given: the file itself, or for a run directory its best-on-validation
    weights (best.npz) when the run kept them, else its last checkpoint (model.npz)."""
    if not path.is_dir():
        return path
    for name in ("best.npz", "model.npz"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} is a directory, but not a run directory: it holds neither best.npz nor model.npz"
    )


def load_image_model(model_path: Path, device: str):
    """Load a model file (or a run directory's, see :func:`model_file`) for the commands that feed it
    Fashion-MNIST images (1x28x28)."""
    from cnnx.io import load_model  # the model-file reader: imported when a command needs it

    model = load_model(model_path, device=device)
    if model.input_shape != (1, 28, 28):
        raise CheckpointError(
            f"{model_path}: the model takes inputs of shape {model.input_shape}, "
            "Fashion-MNIST images are (1, 28, 28)"
        )
    return model
