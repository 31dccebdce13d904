"""The rules for resuming a run: its RunConfig comes from its checkpoint; the fields that identify the
run (:data:`~cnnx.training.config.IDENTITY`) may not be given otherwise, the others may change."""

from __future__ import annotations

from pathlib import Path

import numpy as np  # host: the batch order's generator

from cnnx.checks import plural, short_repr
from cnnx.errors import CheckpointError, ConfigError
from cnnx.io.checkpoint import load_checkpoint

from .config import CHANGEABLE, IDENTITY, RunConfig, upgrade_settings
from .records import read_record
from .rundir import CHECKPOINT, METRICS, is_dead_claim
from .settings import option_name


def recorded_config(path, meta: dict) -> RunConfig:
    """The RunConfig a checkpoint's ``meta`` recorded (cnnx 0.1 checkpoints, which recorded the optimizer
    as one table, are read too). CheckpointError when it is not a usable config."""
    settings = dict(meta["settings"])
    optimizer = settings.get("optimizer")
    if isinstance(optimizer, dict):  # cnnx 0.1: {"name": ..., "lr": ..., "beta1": ...}
        settings["optimizer"] = optimizer.get("name")
        settings["optimizer_options"] = {k: v for k, v in optimizer.items() if k not in ("name", "lr")}
        settings["device"] = settings.get("requested_device", settings.get("device"))
    values = upgrade_settings({key: settings[key] for key in RunConfig.fields() if key in settings})
    try:
        return RunConfig.from_dict(values)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the recorded run settings are unusable ({exc})") from None


def resume_config(run_dir, given: dict | None = None) -> RunConfig:
    """The RunConfig to continue the run in ``run_dir`` with.

    ``given`` holds fields the user asked for. Those that identify the run must agree with the
    checkpoint (ConfigError naming the option otherwise); ``epochs`` may extend the run; the learning
    rate, device, data directory, checkpoint interval and divergence mode may change. A run that
    completed its epochs needs more of them; one whose checkpoint is at its end but whose record is not
    completed (killed during its final evaluation or figures) is given its config to be finished. A
    dead run's claim (no checkpoint, see :func:`cnnx.training.rundir.is_dead_claim`) gives the config
    its record holds, to start it again from scratch.
    """
    run_dir, given = Path(run_dir), dict(given or {})
    if "out" in given:
        raise ConfigError(f"--out cannot be combined with --resume (the run directory is {run_dir})")
    path, record = run_dir / CHECKPOINT, read_record(run_dir / METRICS)
    if path.is_file():
        meta = load_checkpoint(path).meta
        recorded = recorded_config(path, meta)
    elif is_dead_claim(run_dir):  # died before its first checkpoint: it starts again, from scratch
        meta = None
        recorded = recorded_config(run_dir / METRICS, {"settings": record["config"]})
    else:
        raise ConfigError(f"{run_dir} holds no checkpoint ({CHECKPOINT}) to resume from")
    for key in IDENTITY:
        if key in given and given[key] != getattr(recorded, key):
            flag = option_name(key)
            raise ConfigError(
                f"{flag} {short_repr(given[key])} contradicts the run in {run_dir}, which was started with "
                f"{flag} {short_repr(getattr(recorded, key))}: leave {flag} out when resuming"
            )
    unknown = sorted(set(given) - set(IDENTITY) - set(CHANGEABLE))
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of a run")
    config = recorded.replace(**{key: value for key, value in given.items() if key in CHANGEABLE})
    if meta is None:
        return config
    # A run killed after its last checkpoint (its record is not completed) is finished, not refused.
    unfinished = record is None or record.get("status") != "completed"
    done, batch = meta["epoch"], meta["batch"]
    if config.max_steps is not None and meta["step"] >= config.max_steps and batch == 0 and not unfinished:
        raise ConfigError(
            f"the run in {run_dir} already took its {plural(meta['step'], 'step')}: "
            f"pass --max-steps N with N > {meta['step']} to train further"
        )
    if done >= config.epochs and batch == 0 and not unfinished:
        raise ConfigError(
            f"the run in {run_dir} already completed its {plural(done, 'epoch')}: "
            f"pass --epochs N with N > {done} to train further"
        )
    if done + (batch > 0) > config.epochs:
        raise ConfigError(
            f"--epochs {config.epochs} is fewer than the {plural(done + 1, 'epoch')} the run in {run_dir} "
            "has begun"
        )
    return config


def check_resumable(run, checkpoint, unfinished: bool = False) -> None:
    """ConfigError unless ``checkpoint`` belongs to a run like ``run`` (a
    :class:`~cnnx.training.loop.Run` built from the recorded settings) and is not at its end, unless the
    run is ``unfinished`` (killed after its last checkpoint: it is to be finished)."""
    meta, settings, path = checkpoint.meta, checkpoint.meta["settings"], checkpoint.path
    epochs, max_steps = run.config.epochs, run.config.max_steps
    mine = {"batch_size": run.config.batch_size, "seed": run.config.seed, "train_size": len(run.images),
            "test_size": len(run.test_images), "dtype": str(run.model.dtype)}  # fmt: skip
    for key, value in mine.items():
        if settings.get(key) != value:
            raise ConfigError(f"cannot resume {path}: its {key} is {settings.get(key)!r}, not {value!r}")
    _check_same_model(run, checkpoint)
    done, batch = meta["epoch"], meta["batch"]
    if batch > run.batches or len(meta["history"]) != done:
        raise ConfigError(
            f"cannot resume {path}: it stands at batch {batch} of epoch {done + 1} with "
            f"{len(meta['history'])} history rows, which does not fit this run"
        )
    if done >= epochs and batch == 0 and not unfinished:
        raise ConfigError(
            f"the run in {path.parent} already completed its {plural(done, 'epoch')}: ask for more than "
            f"{plural(done, 'epoch')} to train further"
        )
    if done + (batch > 0) > epochs:
        raise ConfigError(
            f"{plural(epochs, 'epoch')} is fewer than the {done + 1} the run in {path.parent} has begun"
        )
    step = meta["step"]
    if max_steps is not None and step >= max_steps and batch == 0 and not unfinished:
        raise ConfigError(
            f"the run in {path.parent} already took its {plural(step, 'step')}: ask for more than "
            f"{plural(step, 'step')} to train further"
        )


def _check_same_model(run, checkpoint) -> None:
    """ConfigError unless the checkpoint's optimizer settings (but its learning rate), architecture and
    input shape are the run's."""
    meta, path = checkpoint.meta, checkpoint.path
    # The learning rate may change on resuming (a schedule, or a hand-lowered rate); nothing else may.
    fixed = {key: value for key, value in run.optimizer.config().items() if key != "lr"}
    recorded = {"weight_decay": 0.0, **meta["optimizer"]}  # checkpoints before weight decay had none
    if {key: value for key, value in recorded.items() if key != "lr"} != fixed:
        raise ConfigError(f"cannot resume {path}: its optimizer is {meta['optimizer']}, not "
                          f"{run.optimizer.config()}")  # fmt: skip
    if checkpoint.header["architecture"] != run.model.architecture():
        raise ConfigError(f"cannot resume {path}: the model's architecture differs from the checkpoint's")
    if tuple(checkpoint.header["input_shape"]) != run.model.input_shape:
        raise ConfigError(f"cannot resume {path}: the model's input shape differs from the checkpoint's")


def set_generator_state(rng: np.random.Generator, state: dict, path, what: str) -> np.random.Generator:
    """``rng``, set to a checkpoint's recorded ``state``; CheckpointError when that is unusable."""
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"{path}: {what}'s state is unusable ({exc})") from None
    return rng
