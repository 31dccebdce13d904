"""A run's learning-rate schedule: the base rate and the schedule's settings, asked for the rate of each
step (see :func:`cnnx.optim.learning_rate`)."""

from __future__ import annotations

from dataclasses import dataclass

from cnnx.optim import learning_rate


@dataclass(frozen=True)
class Schedule:
    name: str
    lr: float
    warmup: int = 0
    step_every: int | None = None
    gamma: float = 0.1

    @classmethod
    def from_config(cls, config, lr: float) -> Schedule | None:
        """The schedule ``config`` asks for, around the optimizer's base rate ``lr``; None for a constant
        rate without warm-up."""
        if config.lr_schedule == "constant" and not config.warmup_steps:
            return None
        gamma = cls.gamma if config.lr_gamma is None else config.lr_gamma  # None: the step schedule's 0.1
        return cls(config.lr_schedule, lr, config.warmup_steps, config.lr_step_every, gamma)

    def rate(self, step: int, total: int) -> float:
        """The rate of step ``step`` (0-based) of a run of ``total`` steps."""
        return learning_rate(self.name, self.lr, step, total, warmup=self.warmup, step_every=self.step_every,
                             gamma=self.gamma)  # fmt: skip
