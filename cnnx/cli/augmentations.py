"""``cnnx augmentations show``: what an augmentation spec does to real images, as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import click

from .options import check_output_file, data_dir_option, dataset_option


@click.group()
def augmentations() -> None:
    """Data augmentation: see what a spec of --augment does before training with it."""


@augmentations.command("show")
@click.option("--augment", "spec", required=True, metavar="SPEC",
              help="The transforms, as for cnnx train --augment (e.g. rotate=10,shift=2,flip).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("augmentations.png"),
              show_default=True, help="The PNG to write.")  # fmt: skip
@click.option(
    "--count", type=click.IntRange(1, 32), default=6, show_default=True, help="Test images, one a row."
)
@click.option("--draws", type=click.IntRange(1, 16), default=5, show_default=True,
              help="Augmented versions of each image, side by side.")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds the draws.")
@dataset_option()
@data_dir_option()
def show(spec: str, out: Path, count: int, draws: int, seed: int, dataset, data_dir) -> None:
    """Write a grid of test images beside augmented versions of them (at most as many as the test set
    holds)."""
    import numpy as np  # host

    from cnnx.data import Augmenter, load_dataset, model_inputs, parse_augment
    from cnnx.nn.random import derive_rng
    from cnnx.training.plots import plot_augmentations

    transforms = parse_augment(spec)
    if not transforms:
        raise click.UsageError("--augment names no transform")
    check_output_file(out)
    data = load_dataset(dataset or "fashion-mnist", data_dir)
    count = min(count, len(data.test_images))
    picks = derive_rng(seed, "show").choice(len(data.test_images), count, replace=False)
    side = data.test_images.shape[-2:]
    originals = model_inputs(data.test_images[picks], "float32", (1, *side))
    augmenter = Augmenter(transforms, derive_rng(seed, "augment"))
    variants = np.stack([augmenter(originals)[:, 0] for _ in range(draws)], axis=1)
    plot_augmentations(originals[:, 0], variants, out, f"--augment {spec}")
    images = "1 test image" if count == 1 else f"{count} test images"
    click.echo(f"wrote {out}: {images}, each beside {draws} draws of {spec}")
