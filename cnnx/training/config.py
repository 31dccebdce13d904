"""RunConfig: one typed, validated description of a training run, from Python, a TOML file or the
command line.

Every way of training goes through it: ``cnnx train`` (its options and ``--config run.toml``), the
Python API (:func:`cnnx.training.run_training`), and the experiment grid and estimator built on them.
A run's config is recorded in its ``metrics.json`` and checkpoint, and a resumed run is rebuilt from
it: the fields in :data:`IDENTITY` say which run it is and never change; the others (:data:`CHANGEABLE`)
may be given anew on resuming.

A setting that has no effect in the combination given is refused, like a bad value: ``lr_gamma``
without the step schedule, for one. Those rules that need the run's length in steps, which only the data
gives, are :func:`check_run`'s. Every refusal is a :class:`SettingError`, which names the settings so that
the command line can say them as options (``--validation 0.1``) and a run file as keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
from pathlib import Path

from cnnx.backends import DEVICES
from cnnx.checks import is_whole_number, plural, short_repr
from cnnx.data import IDX_DATASETS, candidate_dirs, load_dataset
from cnnx.data.augment import format_augment, parse_augment
from cnnx.data.catalog import DATASETS
from cnnx.errors import CnnxError, ConfigError, DataError
from cnnx.fileio import open_regular
from cnnx.nn.presets import PRESETS, with_dropout
from cnnx.nn.registry import check_architecture
from cnnx.optim import OPTIMIZERS, SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport (a dependency there)
    import tomli as tomllib

DIVERGENCE_MODES = ("stop", "skip")
DTYPES = ("float32", "float64")
MAX_EPOCHS = 100_000  # far beyond any real run; a tampered count must not mean "train for ever"
# What identifies a run: resuming with another value of any of these is a different run.
IDENTITY = (
    "model", "input_shape", "optimizer", "optimizer_options", "batch_size", "seed", "dtype", "limit",
    "weight_decay", "lr_schedule", "warmup_steps", "lr_step_every", "lr_gamma", "clip_grad_norm", "augment",
    "dataset", "validation", "dropout",
)  # fmt: skip
# What may change when a run is resumed.
CHANGEABLE = (
    "epochs", "max_steps", "lr", "device", "data_dir", "checkpoint_every", "on_divergence", "log_every",
    "eval_every", "early_stopping",
)  # fmt: skip
MAX_STEPS = 100_000_000


_NO_VALUE = object()


@dataclasses.dataclass(frozen=True)
class Setting:
    """A run setting as a message names it: the field alone (``lr_gamma``), with the value it has
    (``data_dir '/x'``), or with a value to suggest (``assign``: ``validation = 0.1``)."""

    field: str
    value: object = _NO_VALUE
    assign: bool = False

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def spelled(self) -> str:
        """As a run file (TOML) or Python spells it."""
        if not self.has_value:
            return self.field
        if self.assign:
            return f"{self.field} = {json.dumps(self.value) if isinstance(self.value, str) else self.value}"
        return f"{self.field} {short_repr(self.value, 300)}"  # room for a path


class SettingError(ConfigError):
    """A bad run setting. The message is built from text and :class:`Setting` parts, so that a caller can
    name each setting the way its user wrote it (:meth:`text`); ``str()`` spells them as a run file does,
    after the ``source`` (the file) when there is one. ``field`` is the first setting's."""

    def __init__(self, *parts, source: str | None = None):
        self.parts, self.source = parts, source
        self.field = next((part.field for part in parts if isinstance(part, Setting)), None)
        super().__init__(self.text() if source is None else f"{source}: {self.text()}")

    def text(self, spell=Setting.spelled) -> str:
        """The message without its source, each setting as ``spell(setting)`` writes it."""
        return "".join(part if isinstance(part, str) else spell(part) for part in self.parts)

    def located(self, source: str | None) -> SettingError:
        """The same error, said of the file ``source``."""
        return SettingError(*self.parts, source=source)


def _about(field: str, action):
    """``action()``; the CnnxError it raises (a bad augment spec, a model without Dropout) becomes a
    SettingError about ``field``."""
    try:
        return action()
    except CnnxError as exc:
        raise SettingError(Setting(field), f": {str(exc).removeprefix(f'{field}: ')}") from None


def _optional(check):
    return lambda value: value is None or check(value)


def _whole(minimum: int, maximum: int | None = None):
    return lambda v: is_whole_number(v) and v >= minimum and (maximum is None or v <= maximum)


def _positive_number(value) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    )


def _model(value) -> bool:
    return (isinstance(value, str) and value in PRESETS) or (isinstance(value, list) and len(value) > 0)


# field -> (check, what it must be)
_CHECKS = {
    "model": (_model, f"a preset ({', '.join(PRESETS)}) or a list of layer descriptions"),
    "input_shape": (
        lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= 3 and all(_whole(1, 1 << 16)(s) for s in v),
        "a list of 1 to 3 whole numbers (channels, height, width)",
    ),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (_optional(_positive_number), "a positive finite number"),
    "optimizer_options": (lambda v: isinstance(v, dict), "a table of the optimizer's settings"),
    "epochs": (_whole(1, MAX_EPOCHS), f"a whole number from 1 to {MAX_EPOCHS:,}"),
    "batch_size": (_whole(1), "a whole number >= 1"),
    "seed": (_whole(0), "a whole number >= 0"),
    "device": (lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"),
    "dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "data_dir": (_optional(lambda v: isinstance(v, str) and v != ""), "a directory path"),
    "limit": (_optional(_whole(1)), "a whole number >= 1"),
    "checkpoint_every": (_optional(_whole(1)), "a whole number >= 1"),
    "on_divergence": (lambda v: v in DIVERGENCE_MODES, f"one of {', '.join(DIVERGENCE_MODES)}"),
    "max_steps": (_optional(_whole(1, MAX_STEPS)), f"a whole number from 1 to {MAX_STEPS:,}"),
    "log_every": (_optional(_whole(1)), "a whole number >= 1"),
    "eval_every": (_optional(_whole(1)), "a whole number >= 1"),
    "weight_decay": (lambda v: v == 0 or _positive_number(v), "a finite number >= 0"),
    "lr_schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "warmup_steps": (_whole(0), "a whole number >= 0"),
    "lr_step_every": (_optional(_whole(1)), "a whole number >= 1"),
    "lr_gamma": (_optional(lambda v: _positive_number(v) and v <= 1), "a number in (0, 1]"),
    "clip_grad_norm": (_optional(_positive_number), "a positive finite number"),
    "augment": (lambda v: v is None or isinstance(v, str), "a transform spec such as 'rotate=10,flip'"),
    "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "validation": (_optional(lambda v: _positive_number(v) and v <= 0.5), "a fraction in (0, 0.5]"),
    "early_stopping": (_optional(_whole(1)), "a whole number of epochs >= 1"),
    "dropout": (
        _optional(lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < 1),
        "a probability in [0, 1)",
    ),
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run. Every field is checked on construction; a bad one is a ConfigError naming it.

    - ``model``: a preset name, or a list of layer descriptions (``{"type": ..., "config": ...}``,
      checked against the layer registry like a model file's), and ``input_shape``, the per-sample
      shape it takes (Fashion-MNIST's 1x28x28 by default);
    - ``optimizer``, ``lr`` (None: the optimizer's default) and ``optimizer_options`` (its other
      settings, e.g. ``{"beta1": 0.9}`` for Adam);
    - ``epochs``, ``batch_size``, ``seed`` (initial weights, random streams and batch order);
    - ``device`` (cpu, gpu or auto) and ``dtype``;
    - ``data_dir`` (None: search, then download) and ``limit`` (a class-balanced subset of N images);
    - ``checkpoint_every`` (steps; None: at epoch ends only) and ``on_divergence`` (stop or skip);
    - ``max_steps``: stop after this many optimizer steps in all, in the middle of an epoch if need be
      (the last history row then covers a partial epoch); ``epochs`` still caps the run. None: whole
      epochs only;
    - step curves: ``log_every`` records the mean training loss of every N steps, ``eval_every`` the
      test loss and accuracy every K steps (``metrics.json`` ``curves``; None: neither);
    - ``weight_decay`` (L2 for SGD and Momentum, decoupled for Adam: AdamW);
    - ``lr_schedule`` (constant, step, cosine or onecycle, stepped per batch; see
      :func:`cnnx.optim.learning_rate`) with ``warmup_steps``, and for ``step`` only its
      ``lr_step_every`` (None: a third of the run) and ``lr_gamma`` (None: 0.1);
    - ``clip_grad_norm``: scale the gradients down, all together, when their global norm exceeds it;
    - ``augment``: random transforms of every training batch, e.g. ``"rotate=10,zoom=0.1,shift=2,flip,
      erase=0.5"`` (see :mod:`cnnx.data.augment`);
    - ``dataset``: fashion-mnist (``data_dir`` or the search order), mnist or kmnist (``data_dir``, the
      user cache or a verified download) or digits (see :mod:`cnnx.data.catalog`);
    - ``validation``: a seeded, stratified fraction of the training set held out and scored every
      epoch (``val_loss``, ``val_accuracy``), whose best epoch's weights are kept in ``best.npz``;
      ``early_stopping``: stop once the validation loss has not improved for that many epochs;
    - ``dropout``: the rate of every Dropout layer of the model (None: the model's own rates).
    """

    model: str | list = "seed"
    input_shape: tuple = (1, 28, 28)
    optimizer: str = "adam"
    lr: float | None = None
    optimizer_options: dict = dataclasses.field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: str | None = None
    limit: int | None = None
    checkpoint_every: int | None = None
    on_divergence: str = "stop"
    max_steps: int | None = None
    log_every: int | None = None
    eval_every: int | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_step_every: int | None = None
    lr_gamma: float | None = None
    clip_grad_norm: float | None = None
    augment: str | None = None
    dataset: str = "fashion-mnist"
    validation: float | None = None
    early_stopping: int | None = None
    dropout: float | None = None

    def __post_init__(self):
        if isinstance(self.input_shape, list):  # from TOML or JSON: the same shape, kept hashable
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            ok, what = _CHECKS[field.name]
            if not ok(value):
                raise SettingError(Setting(field.name), f" must be {what}, got {short_repr(value)}")
        self._check_combination()
        if self.augment is not None:
            spec = _about("augment", lambda: format_augment(parse_augment(self.augment)))
            object.__setattr__(self, "augment", spec or None)
        if self.dropout is not None:  # a model without a Dropout layer is refused here
            _about("dropout", lambda: with_dropout(self.model, self.dropout))
        if isinstance(self.model, list):
            _about("model", lambda: check_architecture(self.model))
        allowed = [p for p in inspect.signature(OPTIMIZERS[self.optimizer].__init__).parameters
                   if p not in ("self", "target", "lr", "weight_decay")]  # fmt: skip
        for key, value in self.optimizer_options.items():
            if key not in allowed:
                raise SettingError(Setting("optimizer_options"), f": {self.optimizer} has no setting {key!r} "
                                   f"(it has {', '.join(allowed) or 'none'})")  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SettingError(
                    Setting("optimizer_options"), f": {key} must be a finite number, got {short_repr(value)}"
                )

    def _check_combination(self) -> None:
        """Refuse a setting that would have no effect beside the others."""
        if self.early_stopping is not None and self.validation is None:
            raise SettingError(Setting("early_stopping"), " needs a validation split (",
                               Setting("validation", 0.1, assign=True), ", say) to watch")  # fmt: skip
        for field in ("lr_step_every", "lr_gamma"):
            if getattr(self, field) is not None and self.lr_schedule != "step":
                raise SettingError(Setting(field), " has no effect without ",
                                   Setting("lr_schedule", "step", assign=True))  # fmt: skip
        if self.data_dir is not None and self.dataset == "digits":
            digits = Setting("dataset", "digits", assign=True)
            raise SettingError(
                Setting("data_dir"), " has no meaning for ", digits, ", which ships with scikit-learn"
            )

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict, source: str | None = None) -> RunConfig:
        """A RunConfig from a mapping of field names (missing ones keep their defaults). A key that is
        not a field, or a bad value, is a ConfigError that names ``source`` (a file) and the key."""
        where = f"{source}: " if source else ""
        unknown = sorted(str(key) for key in values if key not in cls.fields())
        if unknown:
            raise ConfigError(f"{where}unknown key {unknown[0]!r} (known: {', '.join(cls.fields())})")
        try:
            return cls(**values)
        except SettingError as exc:
            raise exc.located(source) from None

    @classmethod
    def from_file(cls, path, overrides: dict | None = None) -> RunConfig:
        """Read a TOML file whose top-level keys are RunConfig fields; ``overrides`` (options given on
        the command line) win over the file. A relative ``data_dir`` is relative to the file."""
        path = Path(path)
        try:
            # A FIFO or a device would block the read, or never end: only a regular file is opened.
            with open_regular(path, "r", error=ConfigError, what="run config file", encoding="utf-8") as file:
                values = tomllib.loads(file.read())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the run config ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({' '.join(str(exc).split())})") from None
        except RecursionError:  # tomllib parses nested arrays and inline tables by recursion
            raise ConfigError(f"{path}: nested too deeply to be a run config") from None
        data_dir = values.get("data_dir")
        if isinstance(data_dir, str) and data_dir and not Path(data_dir).expanduser().is_absolute():
            values["data_dir"] = str(path.parent / data_dir)
        try:
            return cls.from_dict({**values, **(overrides or {})}, source=str(path))
        except RecursionError:  # dotted keys nest without recursion in the parser, not in repr
            raise ConfigError(f"{path}: nested too deeply to be a run config") from None

    def to_dict(self) -> dict:
        """The fields as JSON-friendly values (what run records store)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


def check_run(
    *, epochs: int, batches: int, max_steps, schedule, checkpoint_every, writes_files: bool
) -> None:
    """The combination rules a RunConfig cannot check alone, for a run of ``epochs`` epochs of ``batches``
    steps (known once the data is): ``max_steps`` beyond what the epochs hold, a warm-up (``schedule``, a
    :class:`cnnx.training.schedule.Schedule` or None) as long as the run, a step schedule that would never
    drop, and checkpoints with nowhere to go. Each is a SettingError."""
    room = epochs * batches
    if max_steps is not None and max_steps > room:
        held = f" is more than {plural(epochs, 'epoch')} of {plural(batches, 'step')} hold ({room:,}): raise "
        raise SettingError(
            Setting("max_steps", max_steps), held, Setting("epochs"), f" to {-(-max_steps // batches)}"
        )
    total = room if max_steps is None else max_steps
    warmup = 0 if schedule is None else schedule.warmup
    if warmup >= total:
        raise SettingError(Setting("warmup_steps", warmup), f" is the whole run ({plural(total, 'step')}): "
                           "no step would follow the schedule after it")  # fmt: skip
    every = None if schedule is None else schedule.step_every
    if every is not None and every >= total - warmup:
        after = f" is past the end of the run ({plural(total - warmup, 'step')} after the warm-up): "
        raise SettingError(Setting("lr_step_every", every), after, "the rate would never drop")
    if checkpoint_every is not None and not writes_files:
        raise SettingError(Setting("checkpoint_every"), " needs a run directory to write the checkpoints to")


def load_run_data(config: RunConfig, *, quiet: bool = False):
    """The data set ``config`` names (``quiet``: nothing on stderr, no download or reading progress). A
    ``data_dir`` that holds none is a SettingError about data_dir, which a run file then names as its
    key (cnnx.data says it as the option, ``--data-dir DIR``)."""
    try:
        return load_dataset(config.dataset, config.data_dir, limit=config.limit, quiet=quiet)
    except DataError as exc:
        if config.data_dir is None or config.dataset not in IDX_DATASETS:
            raise
        # cnnx.data begins the message with the place it looked, as candidate_dirs labels it.
        label, directory = candidate_dirs(config.data_dir, config.dataset)[0]
        text = str(exc)
        if not text.startswith(f"{label} {directory} "):
            raise
        raise SettingError(
            Setting("data_dir", str(directory)), text[len(label) + len(str(directory)) + 1 :]
        ) from None


def upgrade_settings(settings: dict) -> dict:
    """A run's recorded settings as today's RunConfig takes them: cnnx 0.3 and earlier recorded lr_gamma
    (0.1, its default then) and lr_step_every for every run, though only the step schedule reads them."""
    if settings.get("lr_schedule", "constant") == "step":
        return settings
    return {key: value for key, value in settings.items() if key not in ("lr_gamma", "lr_step_every")}
