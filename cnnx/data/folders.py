"""Image folders: a data set of one's own pictures, laid out as ``train/<class>/*.png`` and
``test/<class>/*.jpg`` (the layout torchvision's ImageFolder and Keras's image_dataset_from_directory read).

The class names are the class folders' names, sorted (label 0 first); train and test must have the same
ones. Every picture goes through :func:`cnnx.data.prepare_image`, as ``cnnx predict`` prepares it, so a
model trained here sees what it will be shown later, and the same rules for hostile files hold: regular
files only, the promised formats only, the size checked before decoding. Pictures are decoded on a few
threads (Pillow decodes without holding the interpreter lock), each into its own place, so the arrays do
not depend on the threads.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import MAX_CLASS_NAME, MAX_CLASSES, Dataset, balanced_subset
from .images import IMAGE_SUFFIXES, bomb_warnings_as_errors, decode_photo, prepare_image
from .readers import IMAGE_SHAPE

SPLITS = ("train", "test")
MAX_IMAGES = 1_000_000  # pictures in all: 784 MB of prepared arrays
READ_BLOCK = 1000  # pictures decoded between two progress reports (and before an error stops the rest)
READ_THREADS = min(4, os.cpu_count() or 1)
PROGRESS_EVERY = 10_000  # pictures: a line on stderr this often, when there are at least this many


@dataclass(frozen=True)
class ImageFolder:
    """An image folder as listed, before any picture is decoded: its class names, and each split's
    picture files with their labels (class by class, by file name within a class)."""

    directory: Path
    class_names: tuple[str, ...]
    files: dict[str, list[Path]]
    labels: dict[str, np.ndarray]

    def count(self, split: str) -> int:
        return len(self.files[split])


def is_image_folder(directory) -> bool:
    """Whether ``directory`` has a ``train/`` or a ``test/`` subfolder, which makes it an image folder
    (one without the other is then refused by :func:`scan_image_folder`, saying which is missing)."""
    try:
        return any((Path(directory).expanduser() / split).is_dir() for split in SPLITS)
    except OSError:
        return False


def scan_image_folder(directory) -> ImageFolder:
    """List an image folder's classes and pictures (nothing is decoded). A folder that breaks a rule
    (no class folders, different ones in train and test, an empty class, too many pictures) is a
    one-line DataError naming it."""
    directory = Path(directory).expanduser()
    missing = [f"{split}/" for split in SPLITS if not (directory / split).is_dir()]
    if missing:
        raise DataError(f"{directory}: an image folder needs train/ and test/, each of class folders; "
                        f"{' and '.join(missing)} missing")  # fmt: skip
    classes = {split: _class_folders(directory / split) for split in SPLITS}
    if classes["train"] != classes["test"]:
        train, test = set(classes["train"]), set(classes["test"])
        only = [f"only in {split}: {', '.join(sorted(extra))}"
                for split, extra in (("train", train - test), ("test", test - train)) if extra]  # fmt: skip
        raise DataError(f"{directory}: train and test must have the same class folders; " + "; ".join(only))
    names = classes["train"]
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DataError(
            f"{directory / 'train'}: expected 2 to {MAX_CLASSES} class folders, found {len(names)}"
        )
    files, labels, budget = {}, {}, MAX_IMAGES
    for split in SPLITS:
        per_class = []
        for name in names:
            pictures = _pictures(directory / split / name, budget)
            budget -= len(pictures)
            per_class.append(pictures)
        files[split] = [path for pictures in per_class for path in pictures]
        dtype = np.uint8 if len(names) <= 256 else np.uint16
        labels[split] = np.repeat(np.arange(len(names), dtype=dtype), [len(p) for p in per_class])
    return ImageFolder(directory, tuple(names), files, labels)


def _class_folders(split_dir: Path) -> list[str]:
    """The sorted names of the class folders in ``split_dir`` (hidden ones left out)."""
    try:
        entries = sorted(os.scandir(split_dir), key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{split_dir}: cannot list ({exc.strerror or exc})") from None
    names = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if len(entry.name) > MAX_CLASS_NAME or not entry.name.isprintable():
                shown = entry.name.encode("unicode_escape").decode("ascii")[:MAX_CLASS_NAME]
                raise DataError(
                    f"{split_dir}: class folder {shown!r}: a class name is 1 to {MAX_CLASS_NAME} printable "
                    "characters (a model file names its classes)"
                )
            names.append(entry.name)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            raise DataError(
                f"{split_dir / entry.name}: a picture outside the class folders (<class>/{entry.name})"
            )
    if not names:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir.name}/<class>/<picture>)")
    return names


def _pictures(class_dir: Path, budget: int) -> list[Path]:
    """The pictures in ``class_dir``, sorted by name (hidden files and other kinds left out); at most
    ``budget`` of them, or a DataError."""
    found = []
    try:
        with os.scandir(class_dir) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    found.append(entry.name)
                    if len(found) > budget:
                        raise DataError(
                            f"{class_dir.parent.parent}: more than {MAX_IMAGES:,} pictures, more than "
                            "cnnx reads from an image folder"
                        )
    except OSError as exc:
        raise DataError(f"{class_dir}: cannot list ({exc.strerror or exc})") from None
    if not found:
        raise DataError(f"{class_dir}: an empty class folder (no PNG, JPEG, WebP, BMP or GIF pictures)")
    return [class_dir / name for name in sorted(found)]


def load_image_folder(
    directory,
    *,
    limit: int | None = None,
    test_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Read an image folder into a :class:`Dataset` of prepared 28x28 uint8 images whose class names are
    its class folders' names. ``limit`` and ``test_limit`` keep class-balanced subsets, as for the IDX
    data sets (and only those pictures are decoded). ``progress(done, total)`` is called as pictures are
    read; see :func:`stderr_progress`."""
    folder = scan_image_folder(directory)
    sizes = {"train": limit, "test": test_limit if test_limit is not None else limit and math.ceil(limit / 6)}
    files, labels = {}, {}
    for split in SPLITS:
        files[split], labels[split] = folder.files[split], folder.labels[split]
        if sizes[split] is not None and sizes[split] < len(files[split]):
            keep = balanced_subset(labels[split], sizes[split])
            files[split], labels[split] = [files[split][i] for i in keep], labels[split][keep]
    images = _read_pictures(files["train"] + files["test"], progress)
    train = len(files["train"])
    return Dataset(images[:train], labels["train"], images[train:], labels["test"],
                   source=f"image folder {folder.directory}", class_names=folder.class_names)  # fmt: skip


def _read_pictures(paths: list[Path], progress) -> np.ndarray:
    """Each picture prepared as ``cnnx predict`` prepares it, into its own row: (N, 28, 28) uint8."""
    images = np.empty((len(paths), *IMAGE_SHAPE), np.uint8)

    def read(i: int) -> None:
        images[i] = prepare_image(decode_photo(paths[i]), IMAGE_SHAPE[0])[0]

    with bomb_warnings_as_errors(), ThreadPoolExecutor(READ_THREADS) as pool:  # the filters: once, here
        for start in range(0, len(paths), READ_BLOCK):
            # list(): wait for the block, and raise the first unreadable picture's DataError in order.
            list(pool.map(read, range(start, min(start + READ_BLOCK, len(paths)))))
            if progress is not None:
                progress(min(start + READ_BLOCK, len(paths)), len(paths))
    return images


def stderr_progress(directory) -> Callable[[int, int], None]:
    """A ``progress`` for :func:`load_image_folder` that says on stderr how far reading a large folder
    has come, every PROGRESS_EVERY pictures (nothing for a folder of fewer)."""
    shown = [0]

    def report(done: int, total: int) -> None:
        if total >= PROGRESS_EVERY and (done // PROGRESS_EVERY > shown[0] or done == total):
            shown[0] = done // PROGRESS_EVERY
            print(f"cnnx: reading image folder {directory}: {done:,} of {total:,} pictures", file=sys.stderr)

    return report
