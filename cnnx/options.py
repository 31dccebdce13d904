"""Click options that several commands share, declared once: ``--device`` and ``--model``."""

from __future__ import annotations

import click

from .model import PRESETS

DEVICES = ("cpu", "gpu", "auto")
DEVICE_HELP = (
    "cpu (NumPy), gpu (CuPy; fails with the reason when no CUDA device is usable) or auto (gpu if usable)."
)
MODEL_HELP = (
    "Architecture preset: " + "; ".join(f"{name}, {text}" for name, (_, text) in PRESETS.items()) + "."
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
