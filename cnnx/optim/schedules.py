"""Learning-rate schedules, stepped per batch: the rate of a step is a function of the step's number and the
run's length alone, so a resumed run follows the path it would have followed. :func:`learning_rate` is the
rule; a :class:`Schedule` is one run's choice of it, asked for the rate of each step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnx.errors import ConfigError

SCHEDULES = ("constant", "step", "cosine", "onecycle")
STEP_GAMMA = 0.1  # the step schedule's factor when none is given
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
    gamma: float = STEP_GAMMA,
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


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule: its name, the base rate ``lr`` and the schedule's settings
    (``gamma`` None: :data:`STEP_GAMMA`)."""

    name: str
    lr: float
    warmup: int = 0
    step_every: int | None = None
    gamma: float | None = None

    @classmethod
    def of(cls, name: str, lr: float, warmup: int = 0, step_every=None, gamma=None) -> Schedule | None:
        """The schedule, or None where the rate never moves (constant, without a warm-up)."""
        return None if name == "constant" and not warmup else cls(name, lr, warmup, step_every, gamma)

    def rate(self, step: int, total: int) -> float:
        """The rate of step ``step`` (0-based) of a run of ``total`` steps."""
        gamma = STEP_GAMMA if self.gamma is None else self.gamma
        return learning_rate(self.name, self.lr, step, total, warmup=self.warmup, step_every=self.step_every,
                             gamma=gamma)  # fmt: skip
