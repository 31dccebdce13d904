"""What a model's inputs and outputs mean: the data set it learned, its class names, the shape of one
image and how pixels are scaled on the way in.

A model file and a checkpoint carry this beside the architecture (the header's ``data`` field, format 3),
so ``cnnx evaluate`` loads the run's own data set, and ``cnnx predict``, the estimator and every later
command name the classes as training did. A file written before format 3 has none: it is read as a
Fashion-MNIST model, with Fashion-MNIST's class names when it has ten outputs, as cnnx did then
(:func:`legacy_data_info`).

The header is untrusted, so :func:`check_data_info` checks every field before a DataInfo is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np  # host: inputs are scaled on the host, before they go to the device

from cnnx.checks import is_whole_number, short_repr
from cnnx.errors import CheckpointError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# How a model's inputs were made from the data: "pixels/255" (uint8 pixels divided by 255, what every
# training run does) or "none" (numbers used as they are: features given to the estimator).
SCALINGS = ("pixels/255", "none")
MAX_CLASSES = 1000
MAX_CLASS_CHARS = 100
MAX_DATASET_CHARS = 64
MAX_DIR_CHARS = 4096
MAX_IMAGE_SIDE = 4096
FIELDS = ("dataset", "classes", "image_shape", "scaling", "data_dir")


def scaled_pixels(pixels, dtype) -> np.ndarray:  # host
    """uint8 pixels (0-255) as floats of ``dtype`` in [0, 1], the ``pixels/255`` scaling: cast, then
    divided by 255 in ``dtype``. Every way in uses this one function (training and evaluation batches,
    :func:`cnnx.data.scale_pixels`, ``Sequential.predict_proba``), so they give the same bits."""
    scaled = np.asarray(pixels).astype(dtype)  # host: a fresh array, divided in place
    scaled /= 255
    return scaled


@dataclass(frozen=True)
class DataInfo:
    """The data a model was trained on, as far as using the model needs it.

    - ``dataset``: its name (``fashion-mnist``, ``mnist``, ``kmnist``, ``digits``, ``image-folder``, or
      ``arrays`` for data handed to the estimator);
    - ``classes``: the class names, label 0 first (one per output of the model);
    - ``image_shape``: (channels, height, width) of one image, or None when the inputs are not images;
    - ``scaling``: one of :data:`SCALINGS`;
    - ``data_dir``: the folder the data was read from, when one was named (a default for evaluation).
    """

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int] | None = (1, 28, 28)
    scaling: str = "pixels/255"
    data_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(self.image_shape))

    def to_json(self) -> dict:
        """The header's ``data`` field."""
        return {"dataset": self.dataset, "classes": list(self.classes),
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "scaling": self.scaling, "data_dir": self.data_dir}  # fmt: skip

    @property
    def takes_pictures(self) -> bool:
        """Whether a picture, prepared as the data set's images were, is something this model takes."""
        return self.image_shape is not None and self.scaling == "pixels/255"


def _printable(value, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def check_data_info(value) -> DataInfo:
    """A DataInfo from an untrusted header's ``data`` field; CheckpointError naming the bad field."""
    if not isinstance(value, dict) or set(value) != set(FIELDS):
        keys = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
        raise CheckpointError(
            f"malformed header (data must be an object with {', '.join(FIELDS)}; got {keys})"
        )
    if not _printable(value["dataset"], MAX_DATASET_CHARS):
        raise CheckpointError(f"data.dataset must be 1 to {MAX_DATASET_CHARS} printable characters")
    classes = value["classes"]
    if not (
        isinstance(classes, list)
        and 2 <= len(classes) <= MAX_CLASSES
        and all(_printable(name, MAX_CLASS_CHARS) for name in classes)
    ):
        raise CheckpointError(
            f"data.classes must be 2 to {MAX_CLASSES:,} names of 1 to {MAX_CLASS_CHARS} printable characters"
        )
    shape = value["image_shape"]
    if shape is not None and not (
        isinstance(shape, list) and len(shape) == 3
        and all(is_whole_number(v) and 1 <= v <= MAX_IMAGE_SIDE for v in shape)
    ):  # fmt: skip
        raise CheckpointError(
            f"data.image_shape must be null or three whole numbers in 1..{MAX_IMAGE_SIDE}, "
            f"got {short_repr(shape)}"
        )
    if value["scaling"] not in SCALINGS:
        raise CheckpointError(
            f"data.scaling must be one of {', '.join(SCALINGS)}, got {short_repr(value['scaling'])}"
        )
    if value["data_dir"] is not None and not _printable(value["data_dir"], MAX_DIR_CHARS):
        raise CheckpointError(f"data.data_dir must be null or a path of at most {MAX_DIR_CHARS} characters")
    image_shape = None if shape is None else tuple(shape)
    return DataInfo(value["dataset"], tuple(classes), image_shape, value["scaling"], value["data_dir"])


def default_class_names(count: int) -> tuple[str, ...]:
    """The names of ``count`` unnamed classes: Fashion-MNIST's for ten (what cnnx always assumed), else
    the class numbers."""
    if count == len(FASHION_MNIST_CLASSES):
        return FASHION_MNIST_CLASSES
    return tuple(str(i) for i in range(count))


def legacy_data_info(input_shape, outputs: int) -> DataInfo:
    """What a file written before format 3 meant: a Fashion-MNIST model (its class names for ten
    outputs), taking 28x28 pixels scaled to [0, 1], flat or as images."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        image = shape
    elif math.prod(shape) == 28 * 28:
        image = (1, 28, 28)
    else:
        image = None
    return DataInfo("fashion-mnist", default_class_names(outputs), image)


def check_fits(info: DataInfo, input_shape, outputs: int) -> None:
    """CheckpointError unless ``info`` fits a model taking ``input_shape`` with ``outputs`` classes."""
    if len(info.classes) != outputs:
        raise CheckpointError(
            f"the file names {len(info.classes)} classes, and the model has {outputs} outputs"
        )
    if info.image_shape is not None and math.prod(info.image_shape) != math.prod(input_shape):
        raise CheckpointError(
            f"data.image_shape {list(info.image_shape)} does not fit the model's input {list(input_shape)}"
        )
