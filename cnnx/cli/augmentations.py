"""``cnnx augmentations show``: what an augmentation spec does to real images, as a PNG grid."""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_dir_option


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
@data_dir_option()
def show(spec: str, out: Path, count: int, draws: int, seed: int, data_dir) -> None:
    """Write a grid of test images beside augmented versions of them."""
    import numpy as np  # host

    from cnnx.data import Augmenter, load_fashion_mnist, model_inputs, parse_augment
    from cnnx.nn.random import derive_rng
    from cnnx.training.plots import plot_augmentations

    transforms = parse_augment(spec)
    if not transforms:
        raise click.UsageError("--augment names no transform")
    dataset = load_fashion_mnist(data_dir)
    picks = derive_rng(seed, "show").choice(len(dataset.test_images), count, replace=False)
    originals = model_inputs(dataset.test_images[picks], "float32", (1, 28, 28))
    augmenter = Augmenter(transforms, derive_rng(seed, "augment"))
    variants = np.stack([augmenter(originals)[:, 0] for _ in range(draws)], axis=1)
    plot_augmentations(originals[:, 0], variants, out, f"--augment {spec}")
    click.echo(f"wrote {out}: {count} test images, each beside {draws} draws of {spec}")
