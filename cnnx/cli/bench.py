"""``cnnx bench``: the command over :mod:`cnnx.bench` (training and inference speed, against PyTorch)."""

from __future__ import annotations

import json

import click

from cnnx.bench.benchmark import COMPARE, DTYPES, format_report, parse_batch_sizes, run_benchmark
from cnnx.bench.profile import format_profile, profile_layers

from .options import data_dir_option, device_option, model_option


@click.command("bench")
@device_option()
@model_option()
@click.option(
    "--batch-size",
    "batch_sizes",
    multiple=True,
    default=("128",),
    show_default=True,
    help="Images per step; repeat the option or give a comma list (128,512).",
)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per run.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps before each run.")
@click.option(
    "--repeats",
    type=int,
    default=3,
    show_default=True,
    help="Runs per framework and mode; the report gives medians.",
)
@click.option(
    "--compare",
    type=click.Choice(COMPARE),
    default=None,
    help="Also time the same model in PyTorch (if installed), alternating runs.",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also time each layer's forward and backward and the optimizer, as a training step runs them (best "
    "of --repeats runs); with --compare torch, PyTorch's twin module by module beside them.",
)
@click.option(
    "--epoch",
    is_flag=True,
    help="Time whole epochs of training on the real data set instead (run_training, every batch gathered, "
    "scaled and sent as in cnnx train), with evaluation and the host pipeline reported apart; against a "
    "PyTorch loop doing the same work with --compare torch.",
)
@data_dir_option()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --epoch: a class-balanced subset of N training images (and ceil(N/6) test images).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    device,
    model_name,
    batch_sizes,
    dtype,
    steps,
    warmup,
    repeats,
    compare,
    profile,
    epoch,
    data_dir,
    limit,
    as_json,
) -> None:
    """Training and inference throughput of a model preset, optionally against PyTorch.

    By default on synthetic data, with seconds per epoch extrapolated to 60,000 images from the timed
    steps; with --epoch, whole epochs on the real data set, as a user runs them.
    """
    from cnnx.training.ranks import writes

    sizes = parse_batch_sizes(batch_sizes)
    say = click.echo if writes() else _silent  # under mpiexec every rank runs it; rank 0 reports
    if epoch:
        from cnnx.bench.epoch import format_epoch_report, run_epoch_benchmark
        from cnnx.data import load_fashion_mnist

        dataset = load_fashion_mnist(data_dir, limit=limit)
        results = [
            run_epoch_benchmark(dataset, model=model_name, batch_size=size, device=device, dtype=dtype,
                                repeats=repeats, compare=compare)
            for size in sizes
        ]  # fmt: skip
        if as_json:
            say(json.dumps(results if len(results) > 1 else results[0], indent=2))
        else:
            say("\n\n".join(format_epoch_report(result) for result in results))
        return
    settings = {"device": device, "dtype": dtype, "steps": steps, "warmup": warmup, "repeats": repeats,
                "compare": compare}  # fmt: skip
    result = run_benchmark(model_name, sizes, **settings)
    if profile:
        result["profile"] = [profile_layers(model_name, size, **settings) for size in sizes]
    if as_json:
        say(json.dumps(result, indent=2))
        return
    say(format_report(result))
    for table in result.get("profile", []):
        say("\n" + format_profile(table))


def _silent(*args, **kwargs) -> None:
    pass
