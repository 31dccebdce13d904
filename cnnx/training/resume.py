"""The rules for resuming a run: its RunConfig comes from its checkpoint; the fields that identify the
run (:data:`~cnnx.training.config.IDENTITY`) may not be given otherwise, the others may change."""

from __future__ import annotations

from pathlib import Path

from cnnx.checks import plural, short_repr
from cnnx.errors import CheckpointError, ConfigError
from cnnx.io.checkpoint import load_checkpoint

from .config import CHANGEABLE, IDENTITY, RunConfig, upgrade_settings
from .rundir import CHECKPOINT


def option_name(field: str) -> str:
    """How a RunConfig field is spelled on the command line: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


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
    completed its epochs needs more of them.
    """
    run_dir, given = Path(run_dir), dict(given or {})
    if "out" in given:
        raise ConfigError(f"--out cannot be combined with --resume (the run directory is {run_dir})")
    if not (run_dir / CHECKPOINT).is_file():
        raise ConfigError(f"{run_dir} holds no checkpoint ({CHECKPOINT}) to resume from")
    path = run_dir / CHECKPOINT
    meta = load_checkpoint(path).meta
    recorded = recorded_config(path, meta)
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
    done, batch = meta["epoch"], meta["batch"]
    if config.max_steps is not None and meta["step"] >= config.max_steps and batch == 0:
        raise ConfigError(
            f"the run in {run_dir} already took its {plural(meta['step'], 'step')}: "
            f"pass --max-steps N with N > {meta['step']} to train further"
        )
    if done >= config.epochs and batch == 0:
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
