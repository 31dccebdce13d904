"""Draw three product-style pictures (a T-shirt, trousers, an ankle boot) for the README's `cnnx predict`
example: coloured, shaded garments on a white or transparent background, at a few hundred pixels and
with uneven margins, as a shop's photos are. They are drawn here, not taken from the data set, so the
repository holds no part of Fashion-MNIST.

    python experiments/preview_photos.py photos/
    cnnx predict runs/<run>/model.npz photos/ --preview docs/predict-preview.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _shade(image: Image.Image, seed: int) -> Image.Image:
    """Fabric-like texture and a soft light from the top left, inside the drawn shape only."""
    rgb = np.asarray(image.convert("RGB")).astype(np.float64)
    height, width = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 6, (height, width, 1))
    light = np.linspace(1.08, 0.88, width)[None, :, None] * np.linspace(1.05, 0.9, height)[:, None, None]
    shaded = np.clip(rgb * light + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(shaded).filter(ImageFilter.GaussianBlur(1.2))


def _on_background(shape: Image.Image, mask: Image.Image, size, offset, transparent: bool) -> Image.Image:
    canvas = Image.new("RGBA", size, (255, 255, 255, 0 if transparent else 255))
    canvas.paste(shape, offset, mask)
    return canvas if transparent else canvas.convert("RGB")


def t_shirt() -> Image.Image:
    size = (300, 300)
    shape, mask = Image.new("RGB", size, (200, 40, 45)), Image.new("L", size, 0)
    outline = [(95, 30), (130, 45), (170, 45), (205, 30), (280, 85), (250, 130), (225, 115), (225, 285),
               (75, 285), (75, 115), (50, 130), (20, 85)]  # fmt: skip
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    ImageDraw.Draw(shape).arc((120, 20, 180, 70), 0, 180, fill=(150, 25, 30), width=6)  # the collar
    return _on_background(
        _shade(shape, 1), mask.filter(ImageFilter.GaussianBlur(1)), (420, 360), (40, 25), False
    )


def trousers() -> Image.Image:
    size = (180, 380)
    shape, mask = Image.new("RGB", size, (40, 60, 120)), Image.new("L", size, 0)
    legs = [(20, 10), (160, 10), (172, 370), (105, 370), (90, 120), (75, 370), (8, 370)]
    ImageDraw.Draw(mask).polygon(legs, fill=255)
    ImageDraw.Draw(shape).line([(20, 40), (160, 40)], fill=(25, 40, 85), width=5)  # the waistband
    return _on_background(
        _shade(shape, 2), mask.filter(ImageFilter.GaussianBlur(1)), (330, 430), (90, 20), True
    )


def ankle_boot() -> Image.Image:
    size = (320, 260)
    shape, mask = Image.new("RGB", size, (70, 45, 30)), Image.new("L", size, 0)
    outline = [(70, 10), (150, 10), (160, 140), (290, 180), (310, 225), (300, 250), (20, 250), (30, 150)]
    ImageDraw.Draw(mask).polygon(outline, fill=255)
    ImageDraw.Draw(shape).rectangle((15, 232, 310, 250), fill=(25, 20, 15))  # the sole
    shape, mask = (
        shape.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    )
    # The toe points left, as in the data set's photos.
    return _on_background(
        _shade(shape, 3), mask.filter(ImageFilter.GaussianBlur(1)), (380, 330), (20, 50), False
    )


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    t_shirt().save(out / "t-shirt.jpg", quality=85)
    trousers().save(out / "trousers.png")  # a cut-out on a transparent background
    ankle_boot().save(out / "ankle-boot.jpg", quality=85)
    print(f"wrote t-shirt.jpg, trousers.png and ankle-boot.jpg to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "photos")
