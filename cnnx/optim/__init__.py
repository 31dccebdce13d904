"""Optimizers, updating parameters in place on their device: SGD, Momentum and Adam (with weight decay:
L2 for the first two, decoupled for Adam), and the learning-rate schedules."""

from .optimizers import OPTIMIZERS, SGD, Adam, Momentum, Optimizer, make_optimizer
from .schedules import SCHEDULES, Schedule, learning_rate

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Schedule",
    "Adam",
    "Momentum",
    "Optimizer",
    "learning_rate",
    "make_optimizer",
]
