"""Data augmentation on the host: random rotation, zoom, shift, horizontal flip and erasing of image batches,
vectorised over the batch and drawn from a seeded generator of its own.

A spec names the transforms and their sizes: ``"rotate=10,zoom=0.1,shift=2,flip,erase=0.5"`` rotates by
up to 10 degrees either way, scales by 0.9 to 1.1, shifts by up to 2 pixels in each direction, flips
half the images left to right, and blanks a random rectangle in half of them. Rotation, zoom and shift
are one affine map per image, sampled bilinearly around the image's centre (pixels from outside the
image are 0, the background of Fashion-MNIST).
"""

from __future__ import annotations

import math

import numpy as np  # host: augmentation is host work, before the batch goes to the device

from cnnx.errors import ConfigError

# transform -> (its default size when named without one, the largest size allowed, what the size is)
TRANSFORMS = {
    "rotate": (10.0, 180.0, "degrees either way"),
    "zoom": (0.1, 0.9, "the largest relative change of scale"),
    "shift": (2.0, 64.0, "pixels in each direction"),
    "flip": (0.5, 1.0, "the probability of a left-right flip"),
    "erase": (0.5, 1.0, "the probability of erasing a rectangle"),
}
ERASE_AREA = (0.02, 0.2)  # the erased rectangle's share of the image
ERASE_ASPECT = (0.3, 3.3)  # and its height / width


def parse_augment(spec) -> dict[str, float]:
    """``{"rotate": 10.0, "flip": 0.5, ...}`` from a spec string (an empty string or None: no
    augmentation); a ConfigError names the part that is wrong."""
    if spec is None or spec == "":
        return {}
    if not isinstance(spec, str):
        raise ConfigError(f"augment must be a string such as 'rotate=10,flip', got {spec!r}")
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",")):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in TRANSFORMS:
            raise ConfigError(f"augment: unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
        default, largest, what = TRANSFORMS[name]
        try:
            size = float(value) if value.strip() else default
        except ValueError:
            raise ConfigError(f"augment: {name}={value.strip()!r} is not a number ({what})") from None
        if not (math.isfinite(size) and 0 < size <= largest):
            raise ConfigError(
                f"augment: {name} must be above 0 and at most {largest:g} ({what}), got {value.strip()}"
            )
        if name in out:
            raise ConfigError(f"augment: {name} is given twice")
        out[name] = size
    return out


def format_augment(transforms: dict[str, float]) -> str:
    """The spec string of ``transforms`` (the inverse of :func:`parse_augment`)."""
    return ",".join(f"{name}={size:g}" for name, size in transforms.items())


class Augmenter:
    """Applies a spec's transforms to host batches (N, C, H, W) of floats, drawing from ``rng``; the
    batch given is never changed (a new array comes back).

    Every random number of a batch is drawn first, in one fixed order, and the images are then
    transformed; ``split`` (a backend's ``split_batch``) may cut that second part over threads, and the
    result is the same however it is cut.
    """

    def __init__(self, transforms: dict[str, float], rng: np.random.Generator):
        self.transforms, self.rng = dict(transforms), rng

    def __call__(self, x: np.ndarray, split=None) -> np.ndarray:
        draws = self.draw(x.shape)
        out = np.empty_like(x)

        def part(s):
            out[s] = self.apply(x[s], {name: value[s] for name, value in draws.items()})

        if split is None:
            part(slice(0, len(x)))
        else:
            split(part, len(x), x.size)
        return out

    def draw(self, shape) -> dict[str, np.ndarray]:
        """The random numbers of a batch of ``shape``, one array per kind, indexed by image."""
        t, rng = self.transforms, self.rng
        n, _, h, w = shape
        draws = {}
        if any(k in t for k in ("rotate", "zoom", "shift")):
            draws["angle"] = np.radians(rng.uniform(-1, 1, n) * t.get("rotate", 0.0))
            draws["scale"] = 1 + rng.uniform(-1, 1, n) * t.get("zoom", 0.0)
            draws["shift"] = rng.uniform(-1, 1, (n, 2)) * t.get("shift", 0.0)
        if "flip" in t:
            draws["flip"] = rng.random(n) < t["flip"]
        if "erase" in t:
            draws["erase"] = rng.random(n) < t["erase"]
            area = rng.uniform(*ERASE_AREA, n) * h * w
            aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT), n))
            eh = np.clip(np.round(np.sqrt(area * aspect)), 1, h).astype(np.int64)
            ew = np.clip(np.round(np.sqrt(area / aspect)), 1, w).astype(np.int64)
            top = np.floor(rng.random(n) * (h - eh + 1)).astype(np.int64)
            left = np.floor(rng.random(n) * (w - ew + 1)).astype(np.int64)
            draws["box"] = np.stack([top, top + eh, left, left + ew], axis=1)
        return draws

    @staticmethod
    def apply(x: np.ndarray, draws: dict[str, np.ndarray]) -> np.ndarray:
        """The transforms of ``draws`` applied to the images ``x``."""
        if "angle" in draws:
            x = _affine(x, draws["angle"], draws["scale"], draws["shift"])
        if "flip" in draws:
            x = np.where(draws["flip"][:, None, None, None], x[..., ::-1], x)
        if "erase" in draws:
            x = _erase(x, draws["erase"], draws["box"])
        return x


def _affine(x: np.ndarray, angle, scale, shift) -> np.ndarray:
    """Each image of ``x`` rotated by ``angle`` (radians), scaled by ``scale`` about its centre and moved by
    ``shift`` (rows, columns), sampled bilinearly; outside the image is 0."""
    n, c, h, w = x.shape
    f32, ph, pw = np.float32, h + 4, w + 4
    # The inverse map, source = A @ (output - centre - shift) + centre, as one affine form per image in
    # the output pixel's row and column: source_y = a_y * row + b_y * col + c_y, likewise source_x.
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    cy, cx = (h - 1) / 2, (w - 1) / 2
    oy, ox = cy + shift[:, 0], cx + shift[:, 1]  # where the output's centre sits before the shift
    rows = np.arange(h, dtype=f32)[None, :, None]
    cols = np.arange(w, dtype=f32)[None, None, :]
    src_y = (cos.astype(f32)[:, None, None] * rows - sin.astype(f32)[:, None, None] * cols
             + (cy - cos * oy + sin * ox).astype(f32)[:, None, None])  # fmt: skip
    src_x = (sin.astype(f32)[:, None, None] * rows + cos.astype(f32)[:, None, None] * cols
             + (cx - sin * oy - cos * ox).astype(f32)[:, None, None])  # fmt: skip
    # Kept within half a pixel of a border of zeros two pixels wide: a point far outside samples zeros.
    np.clip(src_y, -1.5, h + 0.5, out=src_y)
    np.clip(src_x, -1.5, w + 0.5, out=src_x)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    padded = np.zeros((n, c, ph, pw), dtype=x.dtype)
    padded[:, :, 2:-2, 2:-2] = x
    # One flat index per output pixel into its image's padded plane (exact in float32 up to 2**24).
    y0 += 2
    y0 *= pw
    y0 += x0
    y0 += 2 + np.arange(n, dtype=f32)[:, None, None] * f32(c * ph * pw)
    index = y0.astype(np.int64)
    flat = padded.reshape(-1)
    out = np.empty_like(x)
    for channel in range(c):
        at = index + channel * ph * pw if channel else index
        top, right = flat.take(at), flat.take(at + 1)
        top += fx * (right - top)
        bottom, right = flat.take(at + pw), flat.take(at + pw + 1)
        bottom += fx * (right - bottom)
        top += fy * (bottom - top)
        out[:, channel] = top
    return out


def _erase(x: np.ndarray, chosen: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Blank each chosen image's rectangle ``box`` (top, bottom, left, right): 2 % to 20 % of the image,
    aspect 0.3 to 3.3, as :meth:`Augmenter.draw` draws it."""
    _, _, h, w = x.shape
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    top, bottom, left, right = (box[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mask = inside & chosen[:, None, None]
    return np.where(mask[:, None], np.zeros((), x.dtype), x)
