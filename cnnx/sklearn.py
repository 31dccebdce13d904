"""A scikit-learn estimator over cnnx: ``CNNClassifier`` works in ``Pipeline``, ``GridSearchCV``,
``cross_val_score`` and joblib's parallel backends (a Dask cluster included), and trains through
:func:`cnnx.training.run_training` like every other way of training.

    from sklearn.model_selection import GridSearchCV
    from cnnx.sklearn import CNNClassifier

    search = GridSearchCV(CNNClassifier(model="seed", epochs=3), {"lr": [1e-3, 3e-3]}, n_jobs=2)
    search.fit(X_train, y_train)              # X: uint8 images (n, 28, 28), or features (n, d) for "mlp"
    print(search.best_params_, search.score(X_test, y_test))
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from cnnx.backends import available_backends
from cnnx.data import Dataset
from cnnx.errors import CnnxError
from cnnx.nn.datainfo import MAX_CLASS_CHARS, DataInfo, check_data_info
from cnnx.nn.model import Sequential, build_from_architecture
from cnnx.nn.presets import PRESETS, preset_architecture
from cnnx.optim import make_optimizer
from cnnx.training import RunConfig, run_training

IMAGE_SHAPE = (1, 28, 28)
# The largest number RunConfig takes in input_shape (its check in cnnx/training/config.py; a test holds
# the two together): an "mlp" on more features is refused here, in words about X, not about input_shape.
MAX_INPUT_SIZE = 1 << 16


def _numbers(X: np.ndarray) -> np.ndarray:
    """Validated rows of features as numbers: uint8 (pixels) and other numeric dtypes stay, anything else
    that scikit-learn's checks let through (objects holding numbers) becomes float64."""
    return X if X.dtype.kind in "biuf" else X.astype(np.float64)


def _class_name(label) -> str:
    """A label as a model file names its class: ``str(label)``, escaped where it is not printable and
    cut to the length a file allows."""
    text = str(label)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text[:MAX_CLASS_CHARS] or repr(text)


def _flat(X):
    """Images (n, 28, 28) or (n, 1, 28, 28) as rows of features (n, 784), before scikit-learn's checks
    see them, so that ``n_features_in_`` counts pixels; anything else goes to the checks as it is. No
    images at all become (0, 784) too, for the checks to refuse in their words."""
    if getattr(X, "ndim", None) is None and isinstance(X, (list, tuple)):
        X = np.asarray(X)
    if getattr(X, "ndim", 2) > 2:
        X = np.asarray(X)
        return X.reshape(len(X), math.prod(X.shape[1:]))  # not -1, which 0 images cannot resolve
    return X


def _check_representable(X: np.ndarray, dtype) -> None:
    """Refuse finite values too large for the model's ``dtype``: cast, they would become inf and the
    probabilities NaN. A ``dtype`` that is not a float is left to RunConfig to name."""
    try:
        limit = float(np.finfo(dtype).max)
    except (TypeError, ValueError):
        return
    if X.dtype.kind != "f" or X.dtype.itemsize <= np.dtype(dtype).itemsize or X.size == 0:
        return
    largest = max(float(X.max()), -float(X.min()))  # no |X| copy of a large X
    if largest > limit:
        raise ValueError(
            f"X holds a value of magnitude {largest:.3g} and the model computes in {np.dtype(dtype)}, "
            f"whose largest is {limit:.3g}: scale X down (or fit with dtype='float64')"
        )


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """A cnnx network as a scikit-learn classifier.

    Parameters
    ----------
    model : str, default="seed"
        The architecture: "seed" (the report's CNN: two 3x3 conv blocks and a dense 128-64-32 head) or
        "mlp" (dense 128-64-32). The input layer follows the data and the output layer the number of
        classes.
    optimizer : {"adam", "momentum", "sgd"}, default="adam"
    lr : float or None, default=None
        Learning rate; None takes the optimizer's default (Adam 1e-3).
    epochs : int, default=5
        Passes over the training data in each ``fit`` (``partial_fit`` makes one).
    batch_size : int, default=128
        Images per step (at most the number of training samples).
    device : {"cpu", "gpu", "auto"}, default="cpu"
    dtype : {"float32", "float64"}, default="float32"
    image_shape : tuple of int or None, default=None
        The (channels, height, width) each sample is reshaped to. None: (1, 28, 28) for 784 features
        and the "seed" model; the flat features for "mlp".
    validation_fraction : float, default=0.0
        A stratified, seeded share of the training data kept out of training and scored after every
        epoch (the ``test_*`` columns of ``history_``).
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, the random streams, the batch order and the validation split.
        Anything else (a NumPy Generator included) is a ValueError, as in scikit-learn's estimators.
    warm_start : bool, default=False
        When True, ``fit`` continues training the fitted network (and its optimizer) instead of
        starting anew.
    verbose : int, default=0
        0: silent; 1: one line per epoch.

    Inputs: ``X`` of uint8 pixels (scaled to [0, 1] as in training) or of any other numbers (used as
    they are; a value beyond the range of the model's dtype is a ValueError), shaped (n, 784), (n, 28, 28),
    (n, 1, 28, 28) or, for "mlp", any (n, features) up to 65,536 features. ``y``: any labels, strings
    included.

    Attributes: ``classes_``, ``n_features_in_``, ``model_`` (the trained :class:`cnnx.nn.Sequential`),
    ``history_`` (one row per epoch, as in a run's metrics.json).
    """

    def __init__(
        self,
        model="seed",
        *,
        optimizer="adam",
        lr=None,
        epochs=5,
        batch_size=128,
        device="cpu",
        dtype="float32",
        image_shape=None,
        validation_fraction=0.0,
        random_state=None,
        warm_start=False,
        verbose=0,
    ):
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.image_shape = image_shape
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose

    # -- training ---------------------------------------------------------------------------------

    def fit(self, X, y):
        """Train on ``X`` and ``y`` for ``epochs`` epochs (continuing the fitted network with
        ``warm_start``). Returns self."""
        fitted = self.warm_start and hasattr(self, "model_")
        X, y = self._validate(X, y, reset=not fitted)
        if not fitted:
            self.classes_, encoded = np.unique(y, return_inverse=True)
        else:
            encoded = self._encode(y)
        return self._train(X, encoded, self.epochs, fresh=not fitted)

    def partial_fit(self, X, y, classes=None):
        """One epoch on ``X`` and ``y``; the first call needs ``classes``, every label there may be."""
        first = not hasattr(self, "model_")
        X, y = self._validate(X, y, reset=first)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(
                f"classes {np.unique(classes)} differ from those of the first call {self.classes_}"
            )
        return self._train(X, self._encode(y), 1, fresh=first)

    def _validate(self, X, y, reset: bool):
        X, y = validate_data(self, _flat(X), y, reset=reset, dtype=None, ensure_all_finite=True)
        check_classification_targets(y)
        return _numbers(X), y

    def _encode(self, y) -> np.ndarray:
        known = np.searchsorted(self.classes_, y)
        known = np.clip(known, 0, len(self.classes_) - 1)
        unseen = self.classes_[known] != y
        if unseen.any():
            raise ValueError(
                f"y holds labels not seen in the first fit: {np.unique(np.asarray(y)[unseen])[:5]}"
            )
        return known

    def _train(self, X, encoded, epochs: int, fresh: bool):
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; "
                f"got 1 class ({self.classes_[0]!r})"
            )
        seed = self._seed()
        _check_representable(X, self.dtype if fresh else self.model_.dtype)
        x_train, y_train, x_val, y_val = self._split(X, encoded, seed)
        input_shape = self._input_shape(X.shape[1])
        try:
            architecture = (
                preset_architecture(self.model, input_shape, len(self.classes_))
                if fresh
                else self.model_.architecture()
            )
            config = RunConfig(
                model=architecture,
                input_shape=input_shape,
                optimizer=self.optimizer,
                lr=self.lr,
                epochs=epochs,
                batch_size=min(int(self.batch_size), len(x_train)),  # small data: one batch of everything
                seed=seed,
                device=self.device,
                dtype=self.dtype,
            )
            dataset = Dataset(x_train, y_train, x_val, y_val, source="arrays given to fit")
            run = run_training(
                config,
                dataset=dataset,
                model=None if fresh else self.model_,
                optimizer=None if fresh else self.optimizer_,
                progress="lines" if self.verbose else "none",
            )
        except CnnxError as exc:  # a setting that does not fit: scikit-learn's way of saying so
            raise ValueError(str(exc)) from None
        self.model_, self.optimizer_ = run.model, run.optimizer
        rows = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in run.history
        ]
        self.history_ = (list(self.history_) if not fresh and hasattr(self, "history_") else []) + rows
        return self

    def _seed(self) -> int:
        """The run's seed: an int itself; otherwise a draw from scikit-learn's ``check_random_state``, which
        takes None (NumPy's global RandomState) or a RandomState and refuses anything else (a string, a
        float, a NumPy Generator) with a ValueError, as scikit-learn's own estimators do."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state) % 2**32
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _split(self, X, y, seed):
        fraction = float(self.validation_fraction)
        if not 0 <= fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if fraction == 0:
            return X, y, X[:0], y[:0]
        try:
            x_train, x_val, y_train, y_val = train_test_split(
                X, y, test_size=fraction, random_state=seed, stratify=y
            )
        except ValueError as exc:
            raise ValueError(f"validation_fraction {fraction} cannot be split off this data: {exc}") from None
        return x_train, y_train, x_val, y_val

    def _input_shape(self, n_features: int) -> tuple[int, ...]:
        if self.model not in PRESETS:
            raise ValueError(f"model must be one of {', '.join(PRESETS)}, got {self.model!r}")
        if self.image_shape is not None:
            shape = tuple(int(v) for v in self.image_shape)
        elif self.model == "mlp":
            if n_features > MAX_INPUT_SIZE:
                raise ValueError(
                    f"the 'mlp' model takes at most {MAX_INPUT_SIZE:,} features, X has {n_features:,}: "
                    "reduce them first, or pass image_shape=(channels, height, width)"
                )
            shape = (n_features,)
        elif n_features == math.prod(IMAGE_SHAPE):
            shape = IMAGE_SHAPE
        else:
            raise ValueError(
                f"the {self.model!r} model takes images: {n_features} features are not 1x28x28; "
                "pass image_shape=(channels, height, width), or use model='mlp'"
            )
        if math.prod(shape) != n_features:
            raise ValueError(
                f"image_shape {shape} holds {math.prod(shape)} values, X has {n_features} features"
            )
        return shape

    # -- predicting -------------------------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, classes), columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        X = _numbers(validate_data(self, _flat(X), reset=False, dtype=None, ensure_all_finite=True))
        _check_representable(X, self.model_.dtype)
        if X.dtype != np.uint8:
            X = X.astype(self.model_.dtype)
        return self.model_.predict_proba(X).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample, as labels from ``classes_``."""
        check_is_fitted(self, "model_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    # -- persistence ------------------------------------------------------------------------------

    def __getstate__(self):
        """Pickle host arrays only: a network trained on a GPU unpickles where there is none."""
        state = self.__dict__.copy()
        model = state.pop("model_", None)
        state.pop("optimizer_", None)  # the optimizer's moments are training state, not the model
        if model is not None:
            state["_model_host"] = {
                "architecture": model.architecture(),
                "input_shape": list(model.input_shape),
                "dtype": str(model.dtype),
                "state": model.state_dict(),
                "data_info": None if model.data_info is None else model.data_info.to_json(),
            }
        return state

    def __setstate__(self, state):
        host = state.pop("_model_host", None)
        self.__dict__.update(state)
        if host is not None:
            self.model_ = self._rebuild(
                host["architecture"], host["input_shape"], host["dtype"], host["state"]
            )
            if host.get("data_info") is not None:
                self.model_.data_info = check_data_info(host["data_info"])
            self.optimizer_ = make_optimizer(self.optimizer, self.model_, self.lr)

    def _rebuild(self, architecture, input_shape, dtype, state) -> Sequential:
        device = self.device if available_backends().get("gpu") is None or self.device == "cpu" else "cpu"
        model = build_from_architecture(
            architecture, backend=device, dtype=dtype, input_shape=tuple(input_shape)
        )
        model.load_state_dict(state)
        return model

    def save_model(self, path):
        """Write the fitted network as a cnnx model file (``cnnx predict`` and ``cnnx evaluate`` read it),
        with this estimator's classes and settings; :meth:`from_model_file` rebuilds the estimator. The
        file names the classes as ``str(label)`` of each of ``classes_``."""
        check_is_fitted(self, "model_")
        self.model_.data_info = self._data_info()
        meta = {"sklearn": {"classes": self.classes_.tolist(), "params": self.get_params(),
                            "n_features_in": int(self.n_features_in_)}}  # fmt: skip
        return self.model_.save(path, meta=meta)

    def _data_info(self) -> DataInfo:
        """What the fitted network's inputs and outputs mean: arrays of this estimator's classes, with the
        image shape and pixel scaling that training recorded."""
        trained, shape = self.model_.data_info, tuple(self.model_.input_shape)
        if trained is not None:
            image_shape, scaling = trained.image_shape, trained.scaling
        else:  # unpickled from a cnnx that did not record it: images are pixels, features are numbers
            image_shape = shape if len(shape) == 3 else None
            scaling = "pixels/255" if image_shape else "none"
        return DataInfo("arrays", tuple(map(_class_name, self.classes_)), image_shape, scaling)

    @classmethod
    def from_model_file(cls, path, device="cpu") -> CNNClassifier:
        """The fitted estimator saved by :meth:`save_model` (read through cnnx's safe loader)."""
        from cnnx.io import load_model
        from cnnx.io.modelfile import read_archive

        header, _ = read_archive(path, optimizer=False)
        saved = (header.get("meta") or {}).get("sklearn")
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), dict):
            raise ValueError(f"{path}: a cnnx model file, but not one saved by {cls.__name__}.save_model")
        estimator = cls(**{**saved["params"], "device": device})
        estimator.model_ = load_model(path, device=device)
        estimator.optimizer_ = make_optimizer(estimator.optimizer, estimator.model_, estimator.lr)
        estimator.classes_ = np.asarray(saved["classes"])
        estimator.n_features_in_ = int(saved["n_features_in"])
        estimator.history_ = []
        return estimator

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # one random_state, one result, on the CPU (parity-tested on GPUs)
        return tags
