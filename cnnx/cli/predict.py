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

from .options import device_option, load_image_model, model_file

FORMATS = ("human", "json", "csv")
PROGRESS_FROM = 10  # files: from this many on, a progress bar on stderr (where it is a terminal)


@click.command(short_help="Classify images with a saved model.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("files", metavar="FILE_OR_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--top",
    "top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many classes to list per image, most probable first.",
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
def predict(model_path, files, top, output_format, invert, preview, device):
    """Classify images: pictures (PNG, JPEG, WebP, BMP, GIF; any size), directories of them, IDX image
    files (.gz or raw) and Kaggle-style CSVs.

    Each picture is prepared the way Fashion-MNIST's images were made from product photos: grey (transparent
    parts over white), background trimmed, longest edge resized to 28 pixels, centred on black, negated
    when its background is light. A 28x28 picture on black, like the data set's own, passes unchanged.
    MODEL is a model file, or a run directory (its best.npz when it kept one, else its model.npz).
    """
    from cnnx.data import CLASS_NAMES, image_files, prepare_image, read_image_file

    model_path = model_file(model_path)
    model = load_image_model(model_path, device)
    size = model.input_shape[-1]
    names = CLASS_NAMES if model.output_shapes()[-1][0] == len(CLASS_NAMES) else None
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
                best = row.argsort()[::-1][:top]
                record = {
                    "path": str(path),
                    "index": i if len(images) > 1 else None,
                    "top": [
                        {"class": names[k] if names else str(k), "probability": round(float(row[k]), 6)}
                        for k in best
                    ],  # fmt: skip
                    "preprocessing": steps,
                }
                records.append(record)
                if preview is not None and len(shown) < PREVIEW_ROWS:  # the preview draws no more
                    shown.append((images[i], image, record))
                if output_format == "human":
                    where = str(path) if record["index"] is None else f"{path}[{i}]"
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
