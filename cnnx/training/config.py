"""RunConfig: one typed, validated description of a training run, from Python, a TOML file or the
command line.

Every way of training goes through it: ``cnnx train`` (its options and ``--config run.toml``), the
Python API (:func:`cnnx.training.run_training`), and the experiment grid and estimator built on them.
Each field is declared once, with :func:`~cnnx.training.settings.setting`: its default, the kind of
value it takes, its doc and its rules. RunConfig checks values against those declarations, ``cnnx
train`` makes its options of them, and the resume rules read them. A run's config is recorded in its
``metrics.json`` and checkpoint, and a resumed run is rebuilt from it: the fields in :data:`IDENTITY`
say which run it is and never change; the others (:data:`CHANGEABLE`) may be given anew on resuming.

A setting that has no effect in the combination given is refused, like a bad value: ``lr_gamma``
without the step schedule, for one. Those rules that need the run's length in steps, which only the data
gives, are :func:`check_run`'s. Every refusal is a :class:`SettingError`, which names the settings so that
the command line can say them as options (``--validation 0.1``) and a run file as keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
from pathlib import Path

from cnnx.backends import DEVICES
from cnnx.checks import plural, short_repr
from cnnx.data import IDX_DATASETS, candidate_dirs, load_dataset
from cnnx.data.augment import format_augment, parse_augment
from cnnx.data.catalog import DATASETS
from cnnx.errors import CnnxError, ConfigError, DataError
from cnnx.fileio import open_regular
from cnnx.nn.presets import PRESETS, with_dropout
from cnnx.nn.registry import check_architecture
from cnnx.nn.shards import SHARD_SIZE
from cnnx.optim import OPTIMIZERS, SCHEDULES

from .settings import (
    Custom,
    Directory,
    OneOf,
    Real,
    Setting,
    SettingError,
    Text,
    Whole,
    check_needs,
    check_value,
    setting,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML through the tomli backport (a dependency there)
    import tomli as tomllib

DIVERGENCE_MODES = ("stop", "skip")
DTYPES = ("float32", "float64")
MAX_EPOCHS = 100_000  # far beyond any real run; a tampered count must not mean "train for ever"
MAX_STEPS = 100_000_000


def _about(field: str, action):
    """``action()``; the CnnxError it raises (a bad augment spec, a model without Dropout) becomes a
    SettingError about ``field``."""
    try:
        return action()
    except CnnxError as exc:
        raise SettingError(Setting(field), f": {str(exc).removeprefix(f'{field}: ')}") from None


def _model(value) -> bool:
    return (isinstance(value, str) and value in PRESETS) or (isinstance(value, list) and len(value) > 0)


def _shape(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and 1 <= len(value) <= 3
        and all(Whole(1, 1 << 16).ok(s) for s in value)
    )


_POSITIVE = "a positive finite number"
_DEFAULT_LRS = ", ".join(
    f"{name} {inspect.signature(cls.__init__).parameters['lr'].default:g}" for name, cls in OPTIMIZERS.items()
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run. Every field is checked on construction against its declaration (below: its kind,
    doc and rules; ``cnnx train --help`` shows the docs as its options); a bad one is a SettingError
    naming it. ``model`` is a preset name, or a list of layer descriptions (``{"type": ..., "config":
    ...}``, checked against the layer registry like a model file's) taking samples of ``input_shape``."""

    model: str | list = setting(
        "seed",
        Custom(_model, f"a preset ({', '.join(PRESETS)}) or a list of layer descriptions", tuple(PRESETS)),
        "Architecture preset: " + "; ".join(f"{name}, {text}" for name, (_, text) in PRESETS.items()) + ".",
    )  # fmt: skip
    input_shape: tuple = setting(
        (1, 28, 28), Custom(_shape, "a list of 1 to 3 whole numbers (channels, height, width)"),
        "The per-sample shape the model takes (channels, height, width).", option=False,
    )  # fmt: skip
    optimizer: str = setting(
        "adam", OneOf(tuple(OPTIMIZERS)),
        "Update rule (momentum is the report's moving-average form, see cnnx.optim.Momentum).",
    )  # fmt: skip
    lr: float | None = setting(
        None, Real(_POSITIVE),
        f"Learning rate (may change when resuming; default: the optimizer's own, {_DEFAULT_LRS}).",
        changeable=True, metavar="X",
    )  # fmt: skip
    optimizer_options: dict = setting(
        {}, Custom(lambda v: isinstance(v, dict), "a table of the optimizer's settings"),
        "The optimizer's other settings, e.g. {{\"beta1\": 0.9}} for Adam.", option=False,
    )  # fmt: skip
    epochs: int = setting(
        5, Whole(1, MAX_EPOCHS), "Passes over the training set.", changeable=True, metavar="N"
    )
    batch_size: int = setting(128, Whole(1), "Images per step.", metavar="N")
    seed: int = setting(
        0, Whole(0), "Seeds the initial weights, the layers' random streams and the batch order.", metavar="N"
    )
    device: str = setting(
        "cpu", OneOf(DEVICES),
        "cpu (NumPy), gpu (CuPy; fails with the reason when no CUDA device is usable) or auto (gpu if "
        "usable).",
        changeable=True,
    )  # fmt: skip
    dtype: str = setting("float32", OneOf(DTYPES), "Floating-point type of weights and activations.")
    data_dir: str | None = setting(
        None, Directory(),
        "Directory with the data set's four IDX files or its Kaggle-style CSVs, or an image folder "
        "(train/<class>/*.png and test/<class>/...); default: the data set's search order, then a download.",
        changeable=True, metavar="DIR",
    )  # fmt: skip
    limit: int | None = setting(
        None, Whole(1),
        "Train on a fixed, class-balanced subset of N training images, and evaluate each epoch on "
        "ceil(N/6) test images (the full set's 6:1 ratio).", metavar="N",
    )  # fmt: skip
    checkpoint_every: int | None = setting(
        None, Whole(1), "Also write the checkpoint every N steps (default: at the end of every epoch only).",
        changeable=True, metavar="N",
    )  # fmt: skip
    on_divergence: str = setting(
        "stop", OneOf(DIVERGENCE_MODES),
        "On a NaN or infinite loss or gradient: stop (naming the epoch, batch and layer; the last good "
        "checkpoint stays), or skip that step and count it (costs one device read-back per step).",
        changeable=True,
    )  # fmt: skip
    max_steps: int | None = setting(
        None, Whole(1, MAX_STEPS),
        "Stop after N optimizer steps in all, in the middle of an epoch if need be ({epochs} must hold "
        "them; the last history row then covers a partial epoch).", changeable=True, metavar="N",
    )  # fmt: skip
    log_every: int | None = setting(
        None, Whole(1), "Record the mean training loss of every N steps (metrics.json curves).",
        changeable=True, metavar="N",
    )  # fmt: skip
    eval_every: int | None = setting(
        None, Whole(1),
        "Evaluate on the test set every K steps, into metrics.json curves (each costs one test pass).",
        changeable=True, metavar="K",
    )  # fmt: skip
    weight_decay: float = setting(
        0.0, Real("a finite number >= 0", low_open=False),
        "Weight decay: L2 for sgd and momentum, decoupled for adam (AdamW).", metavar="X",
    )  # fmt: skip
    lr_schedule: str = setting(
        "constant", OneOf(SCHEDULES),
        "How the learning rate moves, per batch: constant, step (times {lr_gamma} every {lr_step_every} "
        "steps), cosine (down to 0) or onecycle (up to {lr} over 30 %, then down).",
    )  # fmt: skip
    warmup_steps: int = setting(
        0, Whole(0),
        "Climb linearly to the learning rate over the first N steps (fewer than the run has), then follow "
        "the schedule.", metavar="N",
    )  # fmt: skip
    lr_step_every: int | None = setting(
        None, Whole(1),
        "For the step schedule only: steps between two drops, fewer than the run has after the warm-up "
        "(default: a third of them).", metavar="N", needs=("lr_schedule", "step"),
    )  # fmt: skip
    lr_gamma: float | None = setting(
        None, Real("a number in (0, 1]", high=1),
        "For the step schedule only: the factor of each drop (default 0.1).", metavar="X",
        needs=("lr_schedule", "step"),
    )  # fmt: skip
    clip_grad_norm: float | None = setting(
        None, Real(_POSITIVE), "Scale all gradients down together when their global norm exceeds X.",
        metavar="X",
    )  # fmt: skip
    augment: str | None = setting(
        None, Text("a transform spec such as 'rotate=10,flip'"),
        "Random transforms of every training batch, e.g. rotate=10,zoom=0.1,shift=2,flip,erase=0.5 "
        "(degrees, scale change, pixels, and the probabilities of a flip and of an erased rectangle); see "
        "them with cnnx augmentations show.", metavar="SPEC",
    )  # fmt: skip
    dataset: str = setting(
        "fashion-mnist", OneOf(tuple(DATASETS)),
        "fashion-mnist ({data_dir} or the search order), mnist or kmnist ({data_dir}, the user cache, or a "
        "verified download), or digits (scikit-learn's 8x8 digits, upsampled to 28x28, offline).",
    )  # fmt: skip
    validation: float | None = setting(
        None, Real("a fraction in (0, 0.5]", high=0.5),
        "Hold out a seeded, stratified FRACTION of the training set, score it every epoch, and keep the "
        "best epoch's weights in best.npz (which cnnx evaluate and predict use when given the run "
        "directory).", metavar="FRACTION",
    )  # fmt: skip
    early_stopping: int | None = setting(
        None, Whole(1, what="a whole number of epochs >= 1"),
        "With {validation}: stop once the validation loss has not improved for EPOCHS epochs.",
        changeable=True, metavar="EPOCHS",
    )  # fmt: skip
    min_delta: float = setting(
        0.0, Real("a finite number >= 0", low_open=False),
        "With {validation}: how much an epoch's validation loss must fall below the best so far to count "
        "as better (for best.npz and {early_stopping}; default 0: any fall).",
        changeable=True, metavar="X", needs=("validation", 0.1),
    )  # fmt: skip
    dropout: float | None = setting(
        None, Real("a probability in [0, 1)", high=1, low_open=False, high_open=True),
        "Set every Dropout layer of the model to rate P (seed-dropout, cnn-bn and vgg-bn have them; "
        "default: the model's own rates).", metavar="P",
    )  # fmt: skip

    workers: int | None = setting(
        None, Whole(1, 1024),
        "Workers that share every training step and evaluation on the CPU, each running whole shards on "
        "one core (default: one per core; a GPU runs each step whole; under mpiexec the ranks are the "
        "workers and this is not used). The numbers do not depend on it.",
        changeable=True, metavar="N",
    )  # fmt: skip
    shard_size: int = setting(
        SHARD_SIZE, Whole(1),
        "Most images of one shard: a batch of N is cut into ceil(N / this) shards, fixed by the batch, "
        "that the {workers} share out; the numbers depend on the shards, never on the workers.",
        metavar="N",
    )  # fmt: skip

    def __post_init__(self):
        if isinstance(self.input_shape, list):  # from TOML or JSON: the same shape, kept hashable
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        for field in dataclasses.fields(self):
            check_value(field, getattr(self, field.name))
        self._check_combination()
        if self.augment is not None:
            spec = _about("augment", lambda: format_augment(parse_augment(self.augment)))
            object.__setattr__(self, "augment", spec or None)
        if self.dropout is not None:  # a model without a Dropout layer is refused here
            _about("dropout", lambda: with_dropout(self.model, self.dropout))
        if isinstance(self.model, list):
            _about("model", lambda: check_architecture(self.model))
        self._check_optimizer_options()

    def _check_optimizer_options(self) -> None:
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
        """Refuse a setting that would have no effect beside the others: what each field declares it
        needs, and the rules below."""
        if self.early_stopping is not None and self.validation is None:
            raise SettingError(Setting("early_stopping"), " needs a validation split (",
                               Setting("validation", 0.1, assign=True), ", say) to watch")  # fmt: skip
        for field in dataclasses.fields(self):
            check_needs(self, field)
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

    @classmethod
    def declared(cls) -> tuple[dataclasses.Field, ...]:
        """The fields with their declarations: kind, doc and rules (see
        :func:`~cnnx.training.settings.setting`)."""
        return dataclasses.fields(cls)


# What identifies a run: resuming with another value of any of these is a different run.
IDENTITY = tuple(field.name for field in RunConfig.declared() if not field.metadata["changeable"])
# What may change when a run is resumed.
CHANGEABLE = tuple(field.name for field in RunConfig.declared() if field.metadata["changeable"])


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
