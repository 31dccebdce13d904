"""Training: RunConfig and run_training (what every way of training goes through), the epoch loop
(:func:`fit`), one step and evaluation, run directories and records, checkpoints' resume rules, the
divergence guard, interruption, progress, metrics and plots."""

from .config import RunConfig
from .fit import DIVERGENCE_MODES, fit, shuffle_rng, train_run
from .interrupt import StopFlag, TrainingInterrupted
from .resume import resume_config
from .run import run_training
from .step import evaluate, train_step

__all__ = [
    "DIVERGENCE_MODES",
    "RunConfig",
    "StopFlag",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "resume_config",
    "run_training",
    "shuffle_rng",
    "train_run",
    "train_step",
]
