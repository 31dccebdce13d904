"""``cnnx predict``: classify image files with a saved model."""

from __future__ import annotations

from pathlib import Path

import click

from .options import device_option, load_image_model


@click.command(short_help="Classify image files with a saved model.")
@click.argument("model_path", metavar="MODEL.npz", type=click.Path(path_type=Path))
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top",
    "top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many classes to list per image, most probable first.",
)
@device_option()
def predict(model_path, files, top, device):
    """Classify images: 28x28 PNGs, IDX image files (.gz or raw) or Kaggle-style CSVs.

    Prints one line per image: its file (with the index inside multi-image files) and the top classes
    with their probabilities.
    """
    from cnnx.data import CLASS_NAMES, read_image_file, scale_pixels

    model = load_image_model(model_path, device)
    names = CLASS_NAMES if model.output_shapes()[-1][0] == len(CLASS_NAMES) else None
    for path in files:
        images = read_image_file(path)
        probabilities = model.predict_proba(scale_pixels(images, model.dtype))
        for i, row in enumerate(probabilities):
            best = row.argsort()[::-1][:top]
            where = str(path) if len(images) == 1 else f"{path}[{i}]"
            ranked = ", ".join(f"{names[k] if names else k} {row[k]:.3f}" for k in best)
            click.echo(f"{where}: {ranked}")
