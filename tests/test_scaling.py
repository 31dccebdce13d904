"""Pixel scaling is written once (cnnx.nn.datainfo.scaled_pixels): training batches, scale_pixels and
predictions turn uint8 pixels into the same floats, to the bit, as cnnx always has (divided by 255 in the
model's dtype)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.data import model_inputs, scale_pixels
from cnnx.nn import build_model
from cnnx.nn.datainfo import scaled_pixels

EVERY_PIXEL = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_pixel_value_scales_to_what_a_division_by_255_in_the_dtype_gives(dtype):
    expected = EVERY_PIXEL.astype(dtype) / np.asarray(255, dtype)
    got = scaled_pixels(EVERY_PIXEL, dtype)
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, expected), "scaled pixels differ from x / 255"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batches_and_scale_pixels_give_the_same_bits(dtype):
    reference = scaled_pixels(EVERY_PIXEL, dtype)
    batch = model_inputs(EVERY_PIXEL, dtype, (1, 16, 16))
    assert np.array_equal(batch[:, 0], reference), "model_inputs scales pixels otherwise"
    assert np.array_equal(scale_pixels(EVERY_PIXEL, dtype)[:, 0], reference), "scale_pixels scales otherwise"


def test_predictions_of_pixels_equal_predictions_of_their_scaled_floats():
    model = build_model("mlp", seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    from_pixels = model.predict_proba(pixels)
    from_floats = model.predict_proba(scale_pixels(pixels, model.dtype))
    assert np.array_equal(from_pixels, from_floats), "predict_proba scales uint8 pixels otherwise"
