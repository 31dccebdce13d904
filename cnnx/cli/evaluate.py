"""``cnnx evaluate``: a saved model's test-set loss, accuracy, confusion matrix and per-class report, on
the data set the model was trained on (the model file says which) unless told otherwise."""

from __future__ import annotations

import math
from pathlib import Path

import click

from cnnx.checks import plural
from cnnx.errors import ConfigError

from .options import (
    data_dir_option,
    dataset_option,
    device_option,
    import_option,
    load_classifier,
    model_file,
)


@click.command(short_help="Evaluate a saved model on the test set.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@dataset_option(
    "The data set to evaluate on (default: the one the model was trained on, as its file records; "
    "fashion-mnist for files from before that record)."
)
@data_dir_option(
    "Read the data set from this folder (IDX files, Kaggle-style CSVs or an image folder) instead of the "
    "folder the model was trained from."
)
@device_option()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Evaluate N test images: a fixed, class-balanced subset of the test set (all of it by default). "
    "Unlike train --limit, N counts test images.",
)
@import_option()
def evaluate(model_path, dataset, data_dir, device, limit):
    """Test-set loss, accuracy, confusion matrix and per-class report of a saved model: MODEL is a model file,
    or a run directory (its best.npz when it kept one, else its model.npz). The classes are named as the
    model file names them; a data set whose classes or image size differ from the model's is refused."""
    from cnnx.training import evaluate as evaluate_model
    from cnnx.training.metrics import (
        confusion_matrix,
        format_confusion_matrix,
        format_report,
        per_class_report,
    )

    model_path = model_file(model_path)
    model = load_classifier(model_path, device)
    data = _test_data(model, model_path, dataset, data_dir, limit)
    images, labels = data.test_images, data.test_labels.astype("int64")
    names = list(model.data_info.classes)
    loss, accuracy, predictions = evaluate_model(model, images, labels)
    click.echo(f"{model_path}: {model.name} on {plural(len(labels), 'test image')} from {data.source}")
    click.echo(f"accuracy {accuracy:.4f}  loss {loss:.4f}\n")
    click.echo("confusion matrix (rows: true class, columns: predicted)")
    click.echo(format_confusion_matrix(confusion_matrix(labels, predictions, len(names)), names))
    click.echo("")
    click.echo(format_report(per_class_report(labels, predictions, names)))


def _test_data(model, model_path: Path, dataset: str | None, data_dir: Path | None, limit: int | None):
    """The data set to evaluate ``model`` on: the one its file records, or ``--dataset``/``--data-dir``;
    a ConfigError when its classes or its images do not fit the model."""
    from cnnx.data import class_count, load_dataset

    info = model.data_info
    name = dataset or info.dataset
    if name == "arrays" and data_dir is None:
        raise ConfigError(
            f"{model_path} was trained on arrays given to the estimator, not on a data set cnnx can load: "
            "pass --dataset or --data-dir"
        )
    if data_dir is None and name == info.dataset:
        data_dir = info.data_dir  # the folder the run was trained from, if it named one
    data = load_dataset(name, data_dir, test_limit=limit)
    where = f"{name} ({data.source})"
    classes = class_count(data)
    if classes != len(info.classes):
        raise ConfigError(
            f"{model_path} tells {plural(len(info.classes), 'class', 'classes')} apart, and {where} has "
            f"{classes}: evaluate it on the data set it was trained on (--dataset, --data-dir)"
        )
    if data.class_names is not None and tuple(data.class_names) != info.classes:
        pairs = enumerate(zip(data.class_names, info.classes, strict=True))
        mismatch = next(i for i, (theirs, ours) in pairs if theirs != ours)
        raise ConfigError(
            f"{model_path} calls class {mismatch} {info.classes[mismatch]!r}, and {where} calls it "
            f"{data.class_names[mismatch]!r}: evaluate it on the data set it was trained on"
        )
    image = tuple(data.test_images.shape[1:])
    image = (1, *image) if len(image) == 2 else image  # grey images (N, H, W), as the data sets hold them
    if image != info.image_shape if info.image_shape else math.prod(image) != math.prod(model.input_shape):
        raise ConfigError(
            f"{model_path} takes inputs of shape {model.input_shape}, and the images of {where} are "
            f"{'x'.join(map(str, image))}"
        )
    return data
