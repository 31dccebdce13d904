"""``cnnx evaluate``: a saved model's test-set loss, accuracy, confusion matrix and per-class report."""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_dir_option, device_option, load_image_model, model_file


@click.command(short_help="Evaluate a saved model on the test set.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@data_dir_option()
@device_option()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Evaluate N test images: a fixed, class-balanced subset of the test set (all of it by default). "
    "Unlike train --limit, N counts test images.",
)
def evaluate(model_path, data_dir, device, limit):
    """Test-set loss, accuracy, confusion matrix and per-class report of a saved model: MODEL is a model file,
    or a run directory (its best.npz when it kept one, else its model.npz)."""
    from cnnx.data import CLASS_NAMES, load_fashion_mnist
    from cnnx.training import evaluate as evaluate_model
    from cnnx.training.metrics import (
        confusion_matrix,
        format_confusion_matrix,
        format_report,
        per_class_report,
    )

    model_path = model_file(model_path)
    model = load_image_model(model_path, device)
    dataset = load_fashion_mnist(data_dir, test_limit=limit)
    labels = dataset.test_labels.astype("int64")
    loss, accuracy, predictions = evaluate_model(model, dataset.test_images, labels)
    click.echo(f"{model_path}: {model.name} on {len(labels):,} test images from {dataset.source}")
    click.echo(f"accuracy {accuracy:.4f}  loss {loss:.4f}\n")
    click.echo("confusion matrix (rows: true class, columns: predicted)")
    click.echo(format_confusion_matrix(confusion_matrix(labels, predictions, len(CLASS_NAMES)), CLASS_NAMES))
    click.echo("")
    click.echo(format_report(per_class_report(labels, predictions, CLASS_NAMES)))
