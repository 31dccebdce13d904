"""Click options that several commands share, declared once (``--device``, ``--model``, ``--data-dir``,
``--dataset``), and loading the model file a command was given."""

from __future__ import annotations

from pathlib import Path

import click

from cnnx.backends import DEVICES
from cnnx.data.catalog import DATASETS
from cnnx.errors import CheckpointError, ConfigError
from cnnx.nn.presets import PRESETS
from cnnx.training.config import RunConfig
from cnnx.training.settings import doc_of, option_name


def _doc(field: str) -> str:
    """The doc of a run setting, as the command line says it: one text for every command's option."""
    return doc_of(next(f for f in RunConfig.declared() if f.name == field), option_name)


DEVICE_HELP = _doc("device")
MODEL_HELP = _doc("model")
DATA_DIR_HELP = _doc("data_dir")
DATASET_HELP = _doc("dataset")


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


def check_output_file(path: Path) -> Path:
    """Check, before any work, that a file can be written at ``path``: its folder exists and takes files,
    and ``path`` is not a folder. A one-line ConfigError otherwise, naming the path the user gave."""
    import os

    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; name a file to write")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {folder} is not writable")
    return path


def dataset_option(help_text: str = DATASET_HELP):
    """``--dataset NAME``, one of the data sets a run can name (default: None, the command's own)."""
    return click.option("--dataset", type=click.Choice(DATASETS), default=None, help=help_text)


def load_classifier(model_path: Path, device: str):
    """Load a model file for a command that classifies with it: its ``data_info`` names the classes
    (a file of format 2 or older is read as a Fashion-MNIST model). A model whose output is not one
    score per class is a one-line error."""
    from cnnx.io import load_model  # the model-file reader: imported when a command needs it

    model = load_model(model_path, device=device)
    if model.data_info is None:
        raise CheckpointError(
            f"{model_path}: the model outputs an array of {'x'.join(map(str, model.output_shapes()[-1]))} "
            "per input, not one score per class: it is not a classifier"
        )
    return model


def picture_size(model, model_path: Path) -> int:
    """The side of the square grey pictures ``model`` takes (28 for Fashion-MNIST's), or a one-line error
    for a model that does not take pictures (features, colour or non-square images)."""
    info = model.data_info
    if not info.takes_pictures or info.image_shape[0] != 1 or info.image_shape[1] != info.image_shape[2]:
        shape = f"inputs of shape {model.input_shape}"
        what = "numbers used as they are" if info.scaling == "none" else shape
        raise CheckpointError(
            f"{model_path}: the model takes {what}, not square grey pictures; classify its data from Python "
            "(model.predict_proba)"
        )
    return info.image_shape[1]


def import_option():
    """``--import FILE_OR_MODULE`` (repeatable): the user's modules that register layers, imported before
    anything else is read, after the ``cnnx.layers`` entry points and ``$CNNX_IMPORT`` (see
    :mod:`cnnx.plugins`)."""

    def load(ctx, param, values):
        from cnnx.plugins import load_user_layers

        load_user_layers(values)  # a failure is a ConfigError: one line, as every user error
        return values

    return click.option(
        "--import",
        "imports",
        multiple=True,
        metavar="FILE_OR_MODULE",
        is_eager=True,
        expose_value=False,
        callback=load,
        help="Import a .py file or module that registers layers of your own (repeatable; also "
        "$CNNX_IMPORT and the cnnx.layers entry points). It runs that code.",
    )
