"""Optimizers, updating parameters in place on their device: SGD, Momentum and Adam."""

from .optimizers import OPTIMIZERS, SGD, Adam, Momentum, Optimizer, make_optimizer

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Momentum", "Optimizer", "make_optimizer"]
