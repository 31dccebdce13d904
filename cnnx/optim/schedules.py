"""Learning-rate schedules, stepped per batch: the rate of a step is a function of the step's number and the
run's length alone, so a resumed run follows the path it would have followed."""

from __future__ import annotations

import math

from cnnx.errors import ConfigError

SCHEDULES = ("constant", "step", "cosine", "onecycle")
ONECYCLE_RISE = 0.3  # the share of the run over which one-cycle climbs to the peak rate
ONECYCLE_START = 25.0  # one-cycle starts at lr / 25 ...
ONECYCLE_END = 1e4  # ... and ends at lr / (25 * 1e4), as PyTorch's OneCycleLR does by default


def learning_rate(
    schedule: str,
    lr: float,
    step: int,
    total: int,
    *,
    warmup: int = 0,
    step_every: int | None = None,
    gamma: float = 0.1,
) -> float:
    """The learning rate of step ``step`` (0-based) of a run of ``total`` steps whose base rate is ``lr``.

    - ``warmup``: the first ``warmup`` steps climb linearly from lr / warmup to lr; the schedule below
      then runs over the remaining steps.
    - ``constant``: lr.
    - ``step``: lr * gamma ** k after k drops, a drop every ``step_every`` steps (a third of the run
      after warm-up by default).
    - ``cosine``: from lr down to 0 along half a cosine.
    - ``onecycle``: from lr / 25 up to lr over the first 30 % of the run, then down to lr / 250,000, both
      along half a cosine (Smith and Topin, 2019).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"unknown learning-rate schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}"
        )
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    step, total = step - warmup, max(1, total - warmup)
    if schedule == "constant":
        return lr
    if schedule == "step":
        every = step_every or max(1, math.ceil(total / 3))
        return lr * gamma ** (step // every)
    progress = min(step / total, 1.0)
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    start, end = lr / ONECYCLE_START, lr / (ONECYCLE_START * ONECYCLE_END)
    if progress < ONECYCLE_RISE:
        return _cosine(start, lr, progress / ONECYCLE_RISE)
    return _cosine(lr, end, (progress - ONECYCLE_RISE) / (1 - ONECYCLE_RISE))


def _cosine(first: float, last: float, fraction: float) -> float:
    """From ``first`` at fraction 0 to ``last`` at fraction 1 along half a cosine."""
    return last + (first - last) * 0.5 * (1 + math.cos(math.pi * fraction))
