"""``run_training(config)``: everything ``cnnx train`` does, for any caller (the CLI, a TOML file, the
experiment grid, the scikit-learn estimator): build the model and optimizer, check the run directory,
load the data, train, and write the run's files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnx.backends import get_backend
from cnnx.checks import plural
from cnnx.data import class_count, class_names
from cnnx.nn.datainfo import DataInfo
from cnnx.nn.presets import build_model, preset_architecture, with_dropout
from cnnx.nn.registry import check_architecture
from cnnx.optim import OPTIMIZERS, make_optimizer

from .config import RunConfig, load_run_data
from .fit import train_as_configured
from .loop import Run
from .ranks import describe, writes
from .rundir import check_run_dir, default_run_dir, estimate_run_bytes, planned_run_bytes
from .shapes import check_classifier

# The first words of what a run says it does, by how it was taken up (Run.begun).
BEGINNINGS = {
    "new": "training",
    "restarted": "starting {out} again from scratch (its run died before its first checkpoint):",
    "resumed": "resuming {out}:",
    "finishing": "finishing {out} (its training had ended; evaluating it and drawing its figures):",
}


def run_training(
    config: RunConfig,
    out_dir=None,
    *,
    runs_root=None,
    resume: bool = False,
    dataset=None,
    stop=None,
    progress: str = "auto",
    echo: Callable[[str], None] | None = None,
    on_start: Callable[[Run], None] | None = None,
    model=None,
    optimizer=None,
) -> Run:
    """Train as ``config`` says; returns the finished :class:`~cnnx.training.loop.Run` (its ``history``,
    ``model``, ``optimizer`` and ``out``, the run directory or None).

    Files go to ``out_dir`` (new, empty or a dead run's claim; with ``resume=True``, the run to continue,
    or to finish when its training had ended, whose checkpoint must match ``config``: see
    :func:`cnnx.training.resume.resume_config`), or, with ``runs_root`` and
    no ``out_dir``, to a new ``<runs_root>/<timestamp>-<model>-<optimizer>`` that no other run shares;
    with neither, nothing is written. ``dataset`` (a :class:`cnnx.data.Dataset`) replaces loading
    Fashion-MNIST from ``config.data_dir``. ``stop``, ``progress``: as for :func:`cnnx.training.fit`.
    ``echo`` receives a few lines saying what is about to be trained, on what, and where;
    ``on_start(run)`` is called when the run directory is claimed, before the first step. ``model`` and
    ``optimizer``, when given, are trained on instead of fresh ones built from ``config`` (a warm start:
    the scikit-learn estimator's ``warm_start`` and ``partial_fit``); ``config`` still sets everything else.

    The model is built once: a description list before the data is loaded, a preset (which adapts to
    the data's number of classes) after it.
    """
    backend = get_backend(config.device)  # "gpu" without a usable GPU stops here with the reason
    if model is None and not isinstance(config.model, str):
        model = _build(config, backend)
    if model is not None:
        check_classifier(model)  # before the run directory and the data: the model must score classes
    out, unique = (Path(out_dir), False) if out_dir is not None else (None, False)
    if out is None and runs_root is not None:
        model_name = model.name if model is not None else config.model  # a preset's, or "custom"
        optimizer_name = optimizer.name if optimizer is not None else config.optimizer
        out, unique = default_run_dir(model_name, optimizer_name, root=runs_root), True
    if out is not None and not unique and writes():  # (an MPI rank but the first writes nothing)
        # Before the minutes of loading and training: writable, enough space, new or resumable.
        check_run_dir(out, need_bytes=_planned_bytes(config, model, optimizer), resume=resume)
    if dataset is None:
        dataset = load_run_data(config, quiet=progress == "none")
    if model is None:  # a preset, for the data's number of classes
        model = _build(config, backend, class_count(dataset))
    if optimizer is None:
        optimizer = make_optimizer(
            config.optimizer, model, config.lr, weight_decay=config.weight_decay, **config.optimizer_options
        )
    model.data_info = describe_data(config, dataset, model)  # what the files written will say
    recorded = {**config.to_dict(), "lr": optimizer.lr, "backend": model.backend.name}
    echo = echo if writes() else None  # under mpiexec rank 0 speaks for every rank
    return train_as_configured(model, optimizer, dataset, config, out, recorded=recorded, unique_dir=unique,
                               progress=progress, stop=stop, resume=resume,
                               on_start=_announcing(config, dataset, echo, on_start))  # fmt: skip


def _build(config: RunConfig, backend, classes: int | None = None):
    """The model ``config`` describes (a preset for ``classes`` classes, when given), on ``backend``."""
    name = config.model if isinstance(config.model, str) else None
    return build_model(_description(config, classes), name=name, backend=backend, dtype=config.dtype,
                       seed=config.seed, input_shape=config.input_shape)  # fmt: skip


def _planned_bytes(config: RunConfig, model, optimizer) -> int:
    """The disk space the run will need (see :func:`~cnnx.training.rundir.estimate_run_bytes`), before
    the model is built when it is a preset: its parameters counted from its description for Fashion-MNIST's
    ten classes."""
    if model is not None:
        return estimate_run_bytes(model, optimizer or OPTIMIZERS[config.optimizer])
    parameters = check_architecture(preset_architecture(config.model, config.input_shape))
    return planned_run_bytes(parameters, config.dtype, OPTIMIZERS[config.optimizer])


def _announcing(config: RunConfig, dataset, echo, on_start):
    """What the run calls when it starts: the lines ``echo`` receives, then ``on_start``."""

    def started(run: Run) -> None:
        if echo is not None:
            model, optimizer = run.model, run.optimizer
            verb = BEGINNINGS[run.begun].format(out=run.out)
            echo(f"{verb} {model.name} ({plural(model.parameter_count(), 'parameter')}, {config.dtype}) with "
                 f"{optimizer.name} lr {optimizer.lr:g} on {model.backend.describe()}")  # fmt: skip
            where = f"writing {run.out}" if run.out is not None else "writing no files"
            held = "" if run.val_images is None else f" / {len(run.val_images):,} validation"
            echo(f"data: {len(run.images):,} train{held} / {len(run.test_images):,} test images "
                 f"from {dataset.source}; {where}")  # fmt: skip
            if describe() is not None:
                echo(f"{describe()}; each runs its shards of every batch")
        if on_start is not None:
            on_start(run)

    return started


def _description(config: RunConfig, classes: int | None = None):
    """What :func:`build_model` builds for ``config``: its model, a preset adapted to ``classes`` when
    given, with every Dropout layer at ``config.dropout`` when that is set."""
    model = config.model
    if isinstance(model, str) and (classes not in (None, 10) or config.dropout is not None):
        model = preset_architecture(model, config.input_shape, 10 if classes is None else classes)
    return model if config.dropout is None else with_dropout(model, config.dropout)


def describe_data(config: RunConfig, dataset, model) -> DataInfo:
    """What ``model``'s inputs and outputs mean after training on ``dataset``: the data set's name, its
    class names, the shape of one image (None for rows of features) and the scaling of its numbers."""
    images = dataset.train_images
    scaling = "pixels/255" if images.dtype == "uint8" else "none"  # as model_inputs makes the batches
    if images.ndim == 3:
        image_shape = (1, *images.shape[1:])
    elif images.ndim == 4:
        image_shape = images.shape[1:]
    else:
        image_shape = tuple(config.input_shape) if len(config.input_shape) == 3 else None
    names = class_names(dataset, model.output_shapes()[-1][0])
    return DataInfo(config.dataset, tuple(names), image_shape, scaling, config.data_dir)
