"""Classifying a user's own pictures: every common format reads, bad files are one line each, pictures are
prepared the way the data set's images were made, `cnnx predict` speaks JSON and CSV, and photos made
from real test items are classified as the items themselves are."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnx.cli import cli
from cnnx.data import (
    CLASS_NAMES,
    SYSTEM_DIR,
    Dataset,
    find_dataset,
    image_files,
    load_fashion_mnist,
    prepare_image,
    read_photo,
    to_grey,
)
from cnnx.errors import DataError
from cnnx.io import load_model
from cnnx.nn import build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit

from helpers import blobs, write_blob_idx


def item(seed: int = 0) -> np.ndarray:
    """A Fashion-MNIST-like 28x28 item: a light, textured T-shirt shape on black, its size and place
    varying with ``seed``."""
    rng = np.random.default_rng(seed)
    image = np.zeros((28, 28), np.uint8)
    top, left, width = int(rng.integers(2, 6)), int(rng.integers(5, 9)), int(rng.integers(10, 15))
    texture = rng.integers(120, 231, size=(28, 28))
    image[top : top + 20, left : left + width] = texture[top : top + 20, left : left + width]  # the body
    image[top : top + 6, left - 4 : left + width + 4] = texture[top : top + 6, left - 4 : left + width + 4]
    return image


def photo(grey28: np.ndarray, scale: int = 10, margins=(40, 15, 90, 60), mode: str = "RGB") -> Image.Image:
    """A "product photo" of a 28x28 item: negated (dark on white), upscaled, with a non-square white margin
    (left, top, right, bottom); RGBA photos get a transparent background instead of white."""
    dark = Image.fromarray(255 - grey28).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    left, top, right, bottom = margins
    size = (28 * scale + left + right, 28 * scale + top + bottom)
    if mode == "RGBA":
        canvas = Image.new("RGBA", size, (0, 0, 0, 0))
        alpha = Image.fromarray(np.where(np.asarray(dark) < 250, 255, 0).astype(np.uint8))
        canvas.paste(dark.convert("RGBA"), (left, top), alpha)
        return canvas
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(dark.convert("RGB"), (left, top))
    return canvas


# -- reading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, mode, options",
    [
        (".png", "L", {}),
        (".png", "RGB", {}),
        (".jpg", "RGB", {"quality": 95}),
        (".webp", "RGB", {"lossless": True}),
        (".bmp", "RGB", {}),
        (".gif", "L", {}),
    ],  # fmt: skip
)
def test_every_common_format_reads_as_grey(tmp_path, suffix, mode, options):
    pixels = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # (16, 32): a grey ramp
    Image.fromarray(pixels).convert(mode).save(tmp_path / f"ramp{suffix}", **options)
    read = read_photo(tmp_path / f"ramp{suffix}")
    assert read.shape == (16, 32) and read.dtype == np.uint8
    assert np.abs(read.astype(int) - pixels).max() <= (3 if suffix == ".jpg" else 0)


def test_a_gif_reads_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 10), v, np.uint8)) for v in (40, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert int(read_photo(tmp_path / "anim.gif").mean()) == 40


def test_transparency_is_laid_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:5, 2:5] = (0, 0, 0, 255)  # an opaque black square on a transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut-out.png")
    read = read_photo(tmp_path / "cut-out.png")
    assert read[0, 0] == 255 and read[3, 3] == 0
    assert np.array_equal(to_grey(rgba), read)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("truncated.jpg", lambda p: p.write_bytes(_jpeg_bytes()[:600]), "truncated"),
        ("notes.png", lambda p: p.write_text("shopping list: socks\n"), "not an image"),
        ("dot.png", lambda p: Image.new("L", (1, 1)).save(p), "too small"),
        (
            "bomb.png",
            lambda p: p.write_bytes(_png_header_only(20_000, 20_000)),
            "decompression bomb",
        ),
    ],
)
def test_an_unusable_picture_is_one_line_naming_it(tmp_path, name, make, fragment):
    make(tmp_path / name)
    with pytest.raises(DataError) as refused:
        read_photo(tmp_path / name)
    message = str(refused.value)
    assert message.startswith(str(tmp_path / name)) and fragment in message and "\n" not in message, message


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))  # (8, 256): black to white
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    read = read_photo(tmp_path / "ramp16.png").astype(int)
    expected = np.tile(np.arange(256), (8, 1))
    assert np.abs(read - expected).max() <= 1, f"16-bit ramp read as {read[0, ::32].tolist()}"


@pytest.mark.parametrize("pillow_format", ["TIFF", "PPM", "TGA", "PCX"])
def test_a_picture_in_a_format_not_promised_is_refused_whatever_its_name(tmp_path, pillow_format):
    path = tmp_path / "looks-like.png"
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(path, format=pillow_format)
    with pytest.raises(DataError) as refused:
        read_photo(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and "not an image in a format cnnx reads" in message, message


# -- preparing --------------------------------------------------------------------------------------


def test_a_dataset_like_28x28_item_passes_through_unchanged():
    original = item()
    prepared, steps = prepare_image(original)
    assert np.array_equal(prepared, original)
    assert steps == {"source_size": [28, 28], "inverted": False, "trimmed": None, "resized_to": None,
                     "contrast": int(original.max()), "low_contrast": False}  # fmt: skip


def test_a_28x28_item_on_white_is_negated_and_can_be_told_not_to_be():
    on_white = 255 - item()
    assert np.array_equal(prepare_image(on_white)[0], item())
    assert np.array_equal(prepare_image(on_white, invert=False)[0], on_white)


def test_a_photo_is_trimmed_resized_centred_and_negated(tmp_path):
    photo(item(), scale=10).save(tmp_path / "shirt.jpg", quality=85)
    prepared, steps = prepare_image(tmp_path / "shirt.jpg")
    assert prepared.shape == (28, 28) and steps["inverted"] and steps["source_size"] == [410, 355]
    assert steps["trimmed"] is not None and max(steps["resized_to"]) == 28
    width, height = steps["resized_to"]
    margin_rows, margin_cols = (28 - height) // 2, (28 - width) // 2
    margins = [
        prepared[:margin_rows],
        prepared[28 - margin_rows :],
        prepared[:, :margin_cols],
        prepared[:, 28 - margin_cols :],
    ]
    assert all(m.size == 0 or m.max() <= 24 for m in margins), "the background did not become black"
    lit = prepared[prepared > 60]
    assert abs(lit.mean() - item()[item() > 0].mean()) < 25, (
        f"the item's grey levels changed: {lit.mean():.0f}"
    )
    rows, cols = np.flatnonzero(prepared.max(axis=1) > 60), np.flatnonzero(prepared.max(axis=0) > 60)
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    assert abs(centre[0] - 13.5) <= 1.5 and abs(centre[1] - 13.5) <= 1.5, f"item not centred: {centre}"


def _dark_box_on_white(height, width, top, bottom, left, right, level=20) -> np.ndarray:
    grey = np.full((height, width), 255, np.uint8)
    grey[top:bottom, left:right] = level
    return grey


def test_a_dark_box_on_white_is_trimmed_to_its_exact_bounds():
    _, steps = prepare_image(_dark_box_on_white(80, 100, top=17, bottom=53, left=31, right=62))
    assert steps["trimmed"] == [31, 17, 62, 53], f"trimmed to {steps['trimmed']}, the box is [31, 17, 62, 53]"
    assert steps["resized_to"] == [round(31 * 28 / 36), 28], steps["resized_to"]


def test_an_item_touching_three_borders_is_still_trimmed():
    # The box reaches the top, left and bottom edges; only the white on its right is background.
    _, steps = prepare_image(_dark_box_on_white(60, 100, top=0, bottom=60, left=0, right=24))
    assert steps["inverted"], "the border is mostly white, so the picture is negated"
    assert steps["trimmed"] == [0, 0, 24, 60], f"trimmed to {steps['trimmed']}"


def test_a_wide_item_keeps_its_aspect_ratio_and_is_centred():
    prepared, steps = prepare_image(_dark_box_on_white(50, 90, top=15, bottom=35, left=10, right=70))
    assert steps["resized_to"] == [28, round(20 * 28 / 60)], f"60x20 box resized to {steps['resized_to']}"
    lit_rows = np.flatnonzero(prepared.max(axis=1) > 100)
    expected = np.arange((28 - 9) // 2, (28 - 9) // 2 + 9)
    assert lit_rows.tolist() == expected.tolist(), f"item on rows {lit_rows.tolist()}, expected centred"
    assert prepared[:, 0].max() > 100 and prepared[:, -1].max() > 100, "the long edge spans the width"


@pytest.mark.parametrize(
    "common, rare, inverted",
    [(100, 255, False), (160, 0, True)],
    ids=["dark-median-light-mean", "light-median-dark-mean"],
)
def test_the_median_of_the_border_decides_the_inversion(common, rare, inverted):
    # 60 % of the border at one level, 40 % at another: the mean falls on the other side of 127.
    grey = np.full((40, 40), common, np.uint8)
    for edge in (grey[0], grey[-1], grey[:, 0], grey[:, -1]):
        edge[: len(edge) * 2 // 5] = rare
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    mean_says, median_says = bool(border.mean() > 127), bool(np.median(border) > 127)
    assert mean_says != median_says and median_says == inverted, "the case must split mean and median"
    assert prepare_image(grey)[1]["inverted"] is inverted


@pytest.mark.parametrize(
    "picture",
    [np.full((60, 40), 255, np.uint8), np.full((28, 28), 0, np.uint8),
     np.random.default_rng(0).integers(230, 246, (50, 50)).astype(np.uint8),
     _dark_box_on_white(40, 40, 5, 30, 5, 30, level=215)],
    ids=["blank-white", "blank-black", "uniform-noise", "faint-item"],
)  # fmt: skip
def test_a_picture_with_almost_no_contrast_is_flagged(picture):
    _, steps = prepare_image(picture)
    assert steps["low_contrast"] and steps["contrast"] < 64, steps


def test_a_garment_photo_and_a_data_set_item_are_not_flagged_as_low_contrast(tmp_path):
    photo(item()).save(tmp_path / "shirt.jpg", quality=85)
    for picture in (tmp_path / "shirt.jpg", item(1)):
        _, steps = prepare_image(picture)
        assert not steps["low_contrast"] and steps["contrast"] > 200, steps


def test_a_directory_gives_its_pictures_sorted_and_leaves_other_files_out(tmp_path):
    for name in ("b.jpg", "a.png", ".hidden.png", "notes.txt", "c.csv"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files([tmp_path])] == ["a.png", "b.jpg", "c.csv"]


# -- the model's host API -----------------------------------------------------------------------------


def test_predict_takes_uint8_or_float_images_of_any_shape_and_batch_size():
    model = build_model("mlp", seed=1)
    images = blobs(7, seed=3)[0]
    reference = model.predict_proba(images[:, None] / 255.0)
    for variant in (images, images.reshape(7, 784), images[:, None], images / 255.0):
        assert np.allclose(model.predict_proba(variant, batch_size=3), reference, atol=1e-6)
    assert model.predict(images).tolist() == reference.argmax(axis=1).tolist()
    with pytest.raises(ValueError, match="do not fit this model's input"):
        model.predict(np.zeros((2, 27, 27), np.uint8))


# -- the command line ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model file of a few blob-trained epochs, and the blob data set's directory."""
    directory = tmp_path_factory.mktemp("predict")
    (directory / "data").mkdir()
    data = write_blob_idx(directory / "data")
    model = build_model("mlp", seed=0)
    dataset = Dataset(*blobs(160, 1), *blobs(40, 2), source="blobs")
    fit(model, make_optimizer("adam", model, 3e-3), dataset, epochs=8, batch_size=16, progress="none")
    return model.save(directory / "model.npz"), data


def test_predict_json_has_one_record_per_input_with_its_preprocessing(trained, tmp_path):
    model_path, _ = trained
    for i in range(3):
        photo(item(i)).save(tmp_path / f"photo{i}.jpg", quality=85)
    photo(item(3), mode="RGBA").save(tmp_path / "cut-out.png")
    result = CliRunner().invoke(
        cli, ["predict", str(model_path), str(tmp_path), "--format", "json", "--top", "2"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == [
        "cut-out.png",
        "photo0.jpg",
        "photo1.jpg",
        "photo2.jpg",
    ]
    assert all(len(r["top"]) == 2 and r["preprocessing"]["inverted"] for r in records)
    model = load_model(model_path)
    expected = model.predict(np.stack([prepare_image(r["path"])[0] for r in records]))
    assert [r["top"][0]["class"] for r in records] == [CLASS_NAMES[k] for k in expected]


def test_predict_csv_has_a_header_and_a_row_per_image(trained):
    model_path, data = trained
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(model_path),
            str(data / "t10k-images-idx3-ubyte.gz"),
            "--format",
            "csv",
            "--top",
            "1",
        ],
    )
    lines = result.stdout.splitlines()
    assert (
        result.exit_code == 0 and lines[0] == "path,index,class_1,probability_1,inverted,trimmed,source_size"
    )
    assert len(lines) == 41 and lines[1].split(",")[1] == "0", lines[:2]


def test_a_bad_file_is_one_line_the_others_are_classified_and_the_exit_status_says_so(trained, tmp_path):
    model_path, _ = trained
    photo(item()).save(tmp_path / "good.jpg")
    (tmp_path / "bad.png").write_text("not a picture")
    result = CliRunner().invoke(
        cli, ["predict", str(model_path), str(tmp_path / "bad.png"), str(tmp_path / "good.jpg")]
    )
    assert result.exit_code == 1
    assert f"cnnx: error: {tmp_path / 'bad.png'}: not an image" in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'good.jpg'}: "), result.stdout


def test_predict_preview_draws_each_input_beside_what_the_model_saw(trained, tmp_path):
    model_path, _ = trained
    photo(item()).save(tmp_path / "shirt.jpg")
    result = CliRunner().invoke(
        cli, ["predict", str(model_path), str(tmp_path / "shirt.jpg"), "--preview", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "p.png") as preview:
        assert preview.size[0] >= 400 and preview.size[1] >= 150


def test_evaluate_limit_counts_test_images(trained):
    model_path, data = trained
    result = CliRunner().invoke(cli, ["evaluate", str(model_path), "--data-dir", str(data), "--limit", "20"])
    assert result.exit_code == 0 and " on 20 test images" in result.output, result.output


# -- real photos of real items -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    find_dataset(SYSTEM_DIR) is None, reason=f"Fashion-MNIST is not installed at {SYSTEM_DIR}"
)
def test_photos_made_from_test_items_are_classified_as_the_items_are(tmp_path):
    data = load_fashion_mnist(SYSTEM_DIR, limit=19_200, test_limit=300)  # 300 steps of 64
    model = build_model("seed", seed=0)
    fit(model, make_optimizer("adam", model, 1e-3), data, epochs=1, batch_size=64, progress="none")
    rng = np.random.default_rng(5)
    prepared = []
    for i, original in enumerate(data.test_images):
        margins = tuple(int(m) for m in rng.integers(5, 120, size=4))
        scale = int(rng.integers(6, 14))
        if i % 3 == 2:  # a cut-out on a transparent background
            path = tmp_path / f"{i}.png"
            photo(original, scale, margins, mode="RGBA").save(path)
        else:
            path = tmp_path / f"{i}.jpg"
            photo(original, scale, margins).save(path, quality=85)
        prepared.append(prepare_image(path)[0])
    direct, from_photos = model.predict(data.test_images), model.predict(np.stack(prepared))
    agreement = float((direct == from_photos).mean())
    assert agreement >= 0.90, f"photos agree with their items on {agreement:.1%} of 300"
