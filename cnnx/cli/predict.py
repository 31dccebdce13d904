"""``cnnx predict``: classify pictures (any size and common format), IDX and CSV files with a saved model.

Every picture goes through :func:`cnnx.data.prepare_image`, which follows the data set's own pipeline
(grey, trim, resize, centre, negate a light background). A file that cannot be read is one line on
stderr; the other files are still classified, and the exit status is 1.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import click

from cnnx.errors import CnnxError
from cnnx.training.plots import PREVIEW_ROWS

from .options import (
    check_output_file,
    device_option,
    import_option,
    load_classifier,
    model_file,
    picture_size,
)

FORMATS = ("human", "json", "csv")
PROGRESS_FROM = 10  # files: from this many on, a progress bar on stderr (where it is a terminal)
THUMBNAIL_SIDE = 256  # pixels: what the preview keeps of each original (it draws them a few cm wide)


@click.command(short_help="Classify images with a saved model.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("files", metavar="FILE_OR_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top",
    "top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many classes to list per image, most probable first (at most the model's classes).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="human",
    show_default=True,
    help="human: one line per image; json: a list with one record per image; csv: a header and one row "
    "per image. Records hold the path, the top classes with probabilities and the preprocessing done.",
)
@click.option(
    "--invert/--no-invert",
    default=None,
    help="Negate the image (a dark item on a light background) or not. Default: negate when the border "
    "is light, as a photo's usually is; Fashion-MNIST's items are light on black.",
)
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="OUT.png",
    help="Also draw each input beside what the model saw, with the predicted class.",
)
@device_option()
@import_option()
def predict(model_path, files, top, output_format, invert, preview, device):
    """Classify images: pictures (PNG, JPEG, WebP, BMP, GIF; any size), directories of them, IDX image
    files (.gz or raw) and Kaggle-style CSVs.

    Each picture is prepared the way Fashion-MNIST's images were made from product photos: grey (transparent
    parts over white), background trimmed, longest edge resized to the model's image size (28 pixels for
    Fashion-MNIST), centred on black, negated when its background is light. A 28x28 picture on black,
    like the data set's own, passes unchanged. The classes are named as the model file names them.
    MODEL is a model file, or a run directory (its best.npz when it kept one, else its model.npz).
    """
    from cnnx.data import image_files, prepare_image, read_image_file

    if preview is not None:
        check_output_file(preview)  # before the work, not after it
    model_path = model_file(model_path)
    model = load_classifier(model_path, device)
    size = picture_size(model, model_path)
    names = model.data_info.classes
    top = min(top, len(names))
    paths = image_files(files)
    failed, records, shown = 0, [], []
    stderr = sys.stderr  # the bar goes where errors go, never into JSON or CSV on stdout
    with click.progressbar(paths, label="classifying", file=stderr, hidden=len(paths) < PROGRESS_FROM) as bar:
        for path in bar:
            try:
                images = read_image_file(path)
                prepared = [prepare_image(image, size, invert=invert) for image in images]
            except (CnnxError, OSError) as exc:  # this file is unusable: say so, go on with the others
                failed += 1
                click.echo(f"\ncnnx: error: {_one_line(exc, path)}", err=True)
                continue
            probabilities = model.predict_proba([image for image, _ in prepared])
            for i, ((image, steps), row) in enumerate(zip(prepared, probabilities, strict=True)):
                record = _record(path, i if len(images) > 1 else None, row, names, top, steps)
                records.append(record)
                where = _where(record)
                if steps["low_contrast"]:
                    click.echo(f"cnnx: warning: {where}: the prepared image has almost no contrast ("
                               f"{steps['contrast']} grey levels; blank or uniform?): its classes mean "
                               "little", err=True)  # fmt: skip
                if preview is not None and len(shown) < PREVIEW_ROWS:  # the preview draws no more
                    shown.append((_thumbnail(images[i]), image, record))
                if output_format == "human":
                    ranked = ", ".join(f"{c['class']} {c['probability']:.3f}" for c in record["top"])
                    click.echo(f"{where}: {ranked}")
    if output_format == "json":
        click.echo(json.dumps(records, indent=1))
    elif output_format == "csv":
        click.echo(_csv(records, top), nl=False)
    if preview is not None and shown:
        from cnnx.training.plots import plot_preview

        plot_preview(shown, preview)
        click.echo(f"preview written to {preview}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


def _record(path: Path, index: int | None, row, names, top: int, steps: dict) -> dict:
    """What ``--format json`` prints for one image: its path, index in a multi-image file, the ``top``
    classes with probabilities, and the preparation done."""
    best = row.argsort()[::-1][:top]
    ranked = [{"class": names[k], "probability": round(float(row[k]), 6)} for k in best]
    return {"path": str(path), "index": index, "top": ranked, "preprocessing": steps}


def _where(record: dict) -> str:
    """An image's place for a line of text: its path (a character that is not printable, a newline in a
    file name say, escaped so that it cannot forge a line), and its index inside a multi-image file."""
    path = record["path"]
    if not path.isprintable():
        path = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path)
    return path if record["index"] is None else f"{path}[{record['index']}]"


def _thumbnail(image):
    """The original picture, at most :data:`THUMBNAIL_SIDE` pixels a side: all the preview draws of it."""
    import numpy as np  # host
    from PIL import Image

    if max(image.shape) <= THUMBNAIL_SIDE:
        return image
    small = Image.fromarray(image)
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(small)


def _one_line(exc: BaseException, path: Path) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


def _csv(records: list[dict], top: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "index"]
    for rank in range(1, top + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    writer.writerow([*header, "inverted", "trimmed", "source_size"])
    for record in records:
        ranked = [value for c in record["top"] for value in (c["class"], c["probability"])]
        ranked += [""] * (2 * top - len(ranked))
        steps = record["preprocessing"]
        trimmed = "" if steps["trimmed"] is None else " ".join(map(str, steps["trimmed"]))
        writer.writerow([record["path"], "" if record["index"] is None else record["index"], *ranked,
                         steps["inverted"], trimmed, "x".join(map(str, steps["source_size"]))])  # fmt: skip
    return buffer.getvalue()
