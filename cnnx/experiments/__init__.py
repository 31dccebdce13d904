"""Experiments: a study as TOML files (:mod:`.spec`), a grid runner that runs them as processes of their
own, on this machine or a Dask cluster (:mod:`.grid`, :mod:`.worker`), and the generated report
(:mod:`.report`). ``cnnx experiment list | run | report`` is the command line over them."""

from .grid import plan, run_grid
from .report import write_report
from .spec import Experiment, RunSpec, find_experiments, load_experiment, select

__all__ = [
    "Experiment",
    "RunSpec",
    "find_experiments",
    "load_experiment",
    "plan",
    "run_grid",
    "select",
    "write_report",
]
