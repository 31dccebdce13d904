"""A user's own pictures: read any common image format (through Pillow) and prepare it the way
Fashion-MNIST's images were made from product photos, so the model sees what it was trained on.

The data set's authors made each image by trimming the photo's background, resizing its longest edge to
28 pixels, sharpening, extending the short edge to 28 with the item centred, negating and converting
to 8-bit grey. :func:`prepare_image` follows that pipeline on any picture: greyscale (transparent parts
laid over white), trim, aspect-preserving resize, centring, and negation when the background is light,
as a photo's usually is. It leaves out the sharpening: on a photo that is already sharp it only adds
ringing. A 28x28 picture with a dark background, like the data set's own, passes through unchanged.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import open_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# The decoders Pillow may use: those of the formats promised. Pillow picks a decoder by content, so a
# TIFF, PSD or EPS named .png would otherwise be decoded by code cnnx never meant to run.
PICTURE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_PIXELS = 64_000_000  # far above any camera's 50 MP; a 20,000 x 20,000 "bomb" (400 MP) is refused
MIN_SIDE = 8  # fewer pixels than this on a side cannot show a garment
TRIM_THRESHOLD = 24  # grey levels from the background colour that count as the item (JPEG noise is less)
# A prepared image whose grey levels span less than this has almost no contrast (a blank or uniform
# picture, a faint item): every Fashion-MNIST image spans at least 254, so a model's answer means little.
LOW_CONTRAST = 64


def read_photo(path) -> np.ndarray:
    """A picture file as 8-bit grey (H, W): PNG, JPEG, WebP, BMP or GIF (its first frame), whatever its
    name says; 16-bit grey is scaled to 8 bits. Transparent parts are laid over white, as a product
    photo's background is. Only a regular file is opened, and the size is checked from the file's header
    before anything is decoded. Any problem is a one-line DataError naming the file."""
    with bomb_warnings_as_errors():
        return decode_photo(path)


@contextlib.contextmanager
def bomb_warnings_as_errors():
    """Pillow's decompression-bomb warning raised as an error inside. It changes the warning filters of
    the whole process, which threads share: enter it once, in one thread, around all the decoding."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_photo(path) -> np.ndarray:
    """:func:`read_photo` for callers inside :func:`bomb_warnings_as_errors` (threads decoding at once)."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib; imported when needed

    path = Path(path)
    try:
        with (
            open_regular(path, "rb", what="picture") as handle,
            Image.open(handle, formats=PICTURE_FORMATS) as image,
        ):
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DataError(
                    f"{path}: {width}x{height} pixels is more than the {MAX_PIXELS:,} cnnx decodes"
                )
            if min(width, height) < MIN_SIDE:
                raise DataError(
                    f"{path}: a {width}x{height} image is too small (at least {MIN_SIDE}x{MIN_SIDE})"
                )
            image.seek(0)  # an animation's first frame
            return _grey_over_white(image)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(
            f"{path}: not an image in a format cnnx reads (PNG, JPEG, WebP, BMP or GIF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({' '.join(str(exc).split())})") from None


def _grey_over_white(image) -> np.ndarray:
    from PIL import Image

    if image.mode.startswith("I"):  # 16-bit grey (I;16, or I from older Pillows): scale, never clip
        wide = np.asarray(image, dtype=np.float64)
        return np.rint(np.clip(wide, 0, 65535) * (255 / 65535)).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_grey(pixels) -> np.ndarray:
    """An image array as 8-bit grey (H, W): grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4; laid over white),
    uint8 or floating in [0, 1]."""
    array = np.asarray(pixels)
    if array.dtype.kind == "f":
        array = np.rint(np.clip(array, 0.0, 1.0) * 255)
    elif array.dtype.kind not in "ub" or array.dtype.itemsize > 1:
        raise DataError(f"an image array must be uint8 or floating in [0, 1], not {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        colour = array[..., : 3 if array.shape[2] >= 3 else 1]
        grey = colour @ np.array([0.299, 0.587, 0.114]) if colour.shape[2] == 3 else colour[..., 0]
        if array.shape[2] in (2, 4):  # alpha: transparent parts become white
            alpha = array[..., -1] / 255
            grey = grey * alpha + 255 * (1 - alpha)
        array = grey
    if array.ndim != 2:
        raise DataError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return np.rint(array).astype(np.uint8)


def prepare_image(image, size: int = 28, *, invert: bool | None = None) -> tuple[np.ndarray, dict]:
    """Turn a picture (a path, or an array as :func:`to_grey` takes) into what a Fashion-MNIST model
    sees: uint8 (size, size), a light item on a black background. Returns the image and what was done
    to it: ``{"source_size": [w, h], "inverted": bool, "trimmed": [left, top, right, bottom] or None,
    "resized_to": [w, h] or None, "contrast": int, "low_contrast": bool}``, where ``contrast`` is the
    span of the prepared image's grey levels and ``low_contrast`` says it is below LOW_CONTRAST.

    ``invert=None`` negates when the border is light (its median grey level: a photo on a white
    background); True or False forces it. A size x size image with a dark border passes through unchanged.
    """
    grey = read_photo(image) if isinstance(image, (str, Path)) else to_grey(image)
    height, width = grey.shape
    if min(height, width) < 1:
        raise DataError(f"an empty image ({width}x{height})")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = int(np.median(border))  # the median: an item reaching the border does not move it
    light = background > 127 if invert is None else bool(invert)
    steps = {"source_size": [width, height], "inverted": light, "trimmed": None, "resized_to": None}
    if (height, width) == (size, size):
        prepared = 255 - grey if light else grey
    else:
        item = np.abs(grey.astype(np.int16) - background) > TRIM_THRESHOLD
        if item.any():
            rows, cols = np.flatnonzero(item.any(axis=1)), np.flatnonzero(item.any(axis=0))
            top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            if (top, bottom, left, right) != (0, height, 0, width):
                grey = grey[top:bottom, left:right]
                steps["trimmed"] = [int(left), int(top), int(right), int(bottom)]
        # The background becomes black, as in the data set: negate a light one, then take its level off.
        oriented = (255 - grey.astype(np.int16)) if light else grey.astype(np.int16)
        level = 255 - background if light else background
        oriented = np.clip(oriented - level, 0, 255).astype(np.uint8)
        prepared = _fit_centred(oriented, size, steps)
    contrast = int(prepared.max()) - int(prepared.min())
    steps.update(contrast=contrast, low_contrast=contrast < LOW_CONTRAST)
    return prepared, steps


def _fit_centred(grey: np.ndarray, size: int, steps: dict) -> np.ndarray:
    """Resize so the longest edge is ``size`` (aspect kept, Lanczos), then centre on a black square."""
    from PIL import Image

    height, width = grey.shape
    scale = size / max(height, width)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    resized = Image.fromarray(grey).resize((new_width, new_height), Image.Resampling.LANCZOS)
    steps["resized_to"] = [new_width, new_height]
    canvas = np.zeros((size, size), np.uint8)
    left, top = (size - new_width) // 2, (size - new_height) // 2
    canvas[top : top + new_height, left : left + new_width] = np.asarray(resized)
    return canvas


def image_files(paths) -> list[Path]:
    """The files a command was given: files as they are, directories replaced by the pictures, IDX and
    CSV files inside them (sorted by name, hidden files left out)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            pictures = [p for p in inside if is_image_source(p)]
            if not pictures:
                raise DataError(f"{path}: a directory with no pictures, IDX or CSV files inside")
            found += pictures
        else:
            found.append(path)
    return found


def is_image_source(path: Path) -> bool:
    """Whether ``cnnx predict`` reads this file: a picture, a CSV, or an IDX images file."""
    name = path.name.lower()
    return path.suffix.lower() in (*IMAGE_SUFFIXES, ".csv") or "idx3" in name or name.endswith("ubyte.gz")
