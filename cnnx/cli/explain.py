"""``cnnx explain``: the figures of :mod:`cnnx.explain` for a run, written with an index.html."""

from __future__ import annotations

from pathlib import Path

import click

from cnnx.fileio import echo

from .options import device_option, import_option, load_classifier, model_file, picture_size


@click.command(short_help="Figures of what a trained model looks at: filters, maps, saliency, Grad-CAM.")
@click.argument("run", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("pictures", metavar="[IMAGES]...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Where to write the figures and index.html (default: RUN/explain, or MODEL-explain "
              "beside a model file).")  # fmt: skip
@click.option("--map", "method", type=click.Choice(["pca", "tsne"]), default="pca", show_default=True,
              help="How the feature map places the penultimate features in 2-D.")  # fmt: skip
@click.option("--map-items", type=click.IntRange(min=10), default=2000, show_default=True, metavar="N",
              help="Test items on the feature map.")  # fmt: skip
@device_option()
@import_option()
def explain(run, pictures, out, method, map_items, device):
    """Explain a trained model: the first convolution's filters, the activation maps of each
    convolutional block, saliency (|d score / d pixel|, through the model's own backward), Grad-CAM on
    the last convolutional block, the test items it got most confidently wrong, and a 2-D map of its
    penultimate features on the test set, coloured by class.

    RUN is a run directory (its best.npz when it kept one, else its model.npz) or a model file. IMAGES
    (pictures, folders of them, IDX or CSV files) are prepared as cnnx predict prepares them and are
    the ones explained; without them, the first test items are. A figure a model cannot have (Grad-CAM
    without a convolution) is named in index.html with the reason."""
    from cnnx.data import image_files, prepare_image, read_image_file
    from cnnx.explain.report import explain_run

    from .evaluate import _test_data

    path = model_file(run)
    model = load_classifier(path, device)
    data = _test_data(model, path, None, None, None)
    prepared = None
    if pictures:
        size = picture_size(model, path)
        files = image_files(pictures)
        prepared = [prepare_image(image, size)[0] for file in files for image in read_image_file(file)]
    if out is None:
        out = Path(run) / "explain" if Path(run).is_dir() else path.with_name(path.stem + "-explain")
    done = explain_run(model, data.test_images, data.test_labels, out, pictures=prepared, method=method,
                       map_items=map_items)  # fmt: skip
    for title, file, _ in done["figures"]:
        echo(f"{title}: {out / file}")
    for title, reason in done["skipped"]:
        echo(f"{title}: not drawn ({reason})")
    echo(f"all of them: {done['index']}")
