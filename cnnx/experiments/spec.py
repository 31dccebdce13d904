"""Experiment files: a TOML description of one experiment of a study, its runs under each protocol, and
the original report's figure it is compared with.

```toml
title = "Model 4: Adam, lr 1e-3, longer"
compare = ["optimizers"]            # the report's figures this experiment is drawn in (optional)

[report]                            # what the original report says (shown in the generated report)
setup = "CNN, Adam, lr 1e-3, 500 and 2,000 \"epochs\""
result = "88.27 % at 500, 88.01 % at 2,000, loss 0.12"

[config]                            # RunConfig fields every run shares
model = "seed"
optimizer = "adam"
lr = 1e-3

[[runs.report]]                     # one table per run; its keys are RunConfig fields too
max_steps = 500
eval_every = 25
reported = 0.8827                   # the report's test accuracy for this run, where it gives one

[[runs.modern]]
epochs = 3
```

A run's settings are ``[config]`` updated with its own table; a relative ``data_dir`` is relative to
the file, as in a ``cnnx train --config`` file. A wrong key or value is a one-line ConfigError naming the
file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from pathlib import Path

from cnnx.checks import short_repr
from cnnx.errors import ConfigError
from cnnx.fileio import open_regular
from cnnx.training import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport (a dependency there)
    import tomli as tomllib

PROTOCOLS = ("modern", "report")
COMPARISONS = ("optimizers", "learning-rates")
TOP_KEYS = ("name", "title", "compare", "report", "config", "runs")
REPORT_KEYS = ("setup", "result")
RUN_KEYS = ("reported",)  # what a run table may hold besides RunConfig fields
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # whole names only: always fullmatch, never match
TRIALS = "trials"  # the results' folder of runs on a subset (see store.run_dir): no experiment's name
MAX_NESTING = 32  # tables and arrays inside each other; the deepest preset's description takes 8


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: which one, under which protocol, its config and the report's figure."""

    experiment: str
    protocol: str
    label: str  # unique within the experiment and protocol: "500-steps", "5-epochs"
    config: RunConfig
    reported: float | None = None

    @property
    def key(self) -> str:
        """The run's name in a grid and its directory under the results: experiment/protocol-label."""
        return f"{self.experiment}/{self.protocol}-{self.label}"


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    path: Path
    setup: str
    result: str
    compare: tuple[str, ...]
    runs: tuple[RunSpec, ...]

    def protocol_runs(self, protocol: str) -> list[RunSpec]:
        return [run for run in self.runs if run.protocol == protocol]


def _fail(path: Path, message: str):
    raise ConfigError(f"{path}: {message}")


def _text(path: Path, key: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, f"{key} must be a non-empty string, got {short_repr(value)}")
    return value


def _label(config: RunConfig) -> str:
    if config.max_steps is not None:
        return f"{config.max_steps}-steps"
    return f"{config.epochs}-epoch{'s' * (config.epochs != 1)}"


def _check_settings(path: Path, where: str, values: dict, extra: tuple[str, ...]) -> None:
    """Unknown keys, then bad values, of a table of run settings, named as ``where.key``."""
    for key in values:
        if key not in RunConfig.fields() and key not in extra:
            _fail(path, f"unknown key '{where}.{key}' (a run setting: {', '.join(RunConfig.fields())})")
    _config(path, where, values)


def _config(path: Path, where: str, values: dict) -> RunConfig:
    try:
        return RunConfig.from_dict(values)
    except ConfigError as exc:
        _fail(path, f"{where}.{exc}")  # RunConfig's messages start with the field's name


def _nesting(value, depth: int = 0) -> int:
    """How deep tables and arrays nest in ``value``, counted up to just beyond MAX_NESTING."""
    if depth > MAX_NESTING or not isinstance(value, (dict, list)):
        return depth
    children = value.values() if isinstance(value, dict) else value
    return max((_nesting(child, depth + 1) for child in children), default=depth + 1)


def _read_toml(path: Path) -> dict:
    """The file's tables, read only from a regular file (a FIFO would block for ever) and bounded in depth
    (tomllib recurses, and so would everything that walks the values after it)."""
    what = "TOML experiment file"
    try:
        with open_regular(path, "r", error=ConfigError, what=what, encoding="utf-8") as handle:
            data = tomllib.loads(handle.read())
    except OSError as exc:
        _fail(path, f"cannot read the experiment ({exc.strerror or exc})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        _fail(path, f"not valid TOML ({' '.join(str(exc).split())})")
    except RecursionError:
        data = None
    if data is None or _nesting(data) > MAX_NESTING:
        _fail(path, f"tables and arrays nested more than {MAX_NESTING} deep")
    return data


def _relative_to(path: Path, table: dict) -> dict:
    """``table`` with a relative ``data_dir`` made absolute from the file's folder (the runs may start in
    another working directory, or on another machine)."""
    data_dir = table.get("data_dir")
    if isinstance(data_dir, str) and data_dir and not Path(data_dir).expanduser().is_absolute():
        return {**table, "data_dir": os.path.abspath(path.parent / data_dir)}
    return table


def load_experiment(path) -> Experiment:
    """Read and check one experiment file."""
    path = Path(path)
    data = _read_toml(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        _fail(path, f"unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        _fail(
            path, f"name must be lower-case letters, digits, '-' or '_' (at most 64), got {short_repr(name)}"
        )
    if name == TRIALS:
        _fail(path, f"the name {TRIALS!r} is kept for the results' folder of trial runs: choose another")
    title = _text(path, "title", data.get("title", name))
    report = data.get("report", {})
    if not isinstance(report, dict):
        _fail(path, f"report must be a table, got {short_repr(report)}")
    unknown = sorted(set(report) - set(REPORT_KEYS))
    if unknown:
        _fail(path, f"unknown key 'report.{unknown[0]}' (known: {', '.join(REPORT_KEYS)})")
    setup = _text(path, "report.setup", report.get("setup", "-"))
    result = _text(path, "report.result", report.get("result", "-"))
    compare = data.get("compare", [])
    if not isinstance(compare, list) or any(c not in COMPARISONS for c in compare):
        _fail(path, f"compare must be a list of {', '.join(COMPARISONS)}, got {short_repr(compare)}")
    base = data.get("config", {})
    if not isinstance(base, dict):
        _fail(path, f"config must be a table of run settings, got {short_repr(base)}")
    _check_settings(path, "config", base, ())
    base = _relative_to(path, base)
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        _fail(path, f"runs must be a table of protocols ({', '.join(PROTOCOLS)}), each a list of run tables")
    specs = []
    for protocol, tables in runs.items():
        if protocol not in PROTOCOLS:
            _fail(path, f"unknown protocol 'runs.{protocol}' (known: {', '.join(PROTOCOLS)})")
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            _fail(path, f"runs.{protocol} must be a list of run tables ([[runs.{protocol}]])")
        labels = set()
        for i, table in enumerate(tables):
            where = f"runs.{protocol}[{i}]"
            reported = table.get("reported")
            ok = reported is None or (
                isinstance(reported, (int, float)) and not isinstance(reported, bool)
                and math.isfinite(reported) and 0 <= reported <= 1
            )  # fmt: skip
            if not ok:
                _fail(path, f"{where}.reported must be an accuracy from 0 to 1, got {short_repr(reported)}")
            own = {k: v for k, v in table.items() if k not in RUN_KEYS}
            _check_settings(path, where, own, RUN_KEYS)
            own = _relative_to(path, own)
            config = _config(path, where, {**base, **own})
            label = _label(config)
            if label in labels:
                _fail(path, f"{where} repeats the budget {label} of another run of runs.{protocol}")
            labels.add(label)
            specs.append(RunSpec(name, protocol, label, config, reported))
    return Experiment(name, title, path, setup, result, tuple(compare), tuple(specs))


def find_experiments(directory) -> list[Experiment]:
    """Every ``*.toml`` experiment in ``directory``, by name; two with one name are an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such directory of experiment files")
    experiments, seen = [], {}
    for path in sorted(directory.glob("*.toml")):
        experiment = load_experiment(path)
        if experiment.name in seen:
            raise ConfigError(
                f"{path}: experiment name {experiment.name!r} is also used by {seen[experiment.name]}"
            )
        seen[experiment.name] = path
        experiments.append(experiment)
    if not experiments:
        raise ConfigError(f"{directory}: no experiment files (*.toml) here")
    return experiments


def select(experiments: list[Experiment], names: list[str], protocols: tuple[str, ...]) -> list[RunSpec]:
    """The runs of the named experiments (all of them when ``names`` is empty) under ``protocols``."""
    by_name = {e.name: e for e in experiments}
    for name in names:
        if name not in by_name:
            raise ConfigError(f"unknown experiment {name!r}: choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in dict.fromkeys(names)] if names else experiments
    return [run for e in chosen for run in e.runs if run.protocol in protocols]


def with_settings(spec: RunSpec, **changes) -> RunSpec:
    """``spec`` with some of its run settings changed, as the command line's ``--limit``, ``--device`` and
    ``--data-dir`` change every run's; its label and key stay."""
    return dataclasses.replace(spec, config=spec.config.replace(**changes)) if changes else spec
