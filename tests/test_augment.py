"""Data augmentation: the spec, each transform's effect, determinism from its own stream, exact resume,
the command line and `cnnx augmentations show`."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Augmenter, Dataset, format_augment, parse_augment
from cnnx.data.augment import _affine
from cnnx.errors import ConfigError
from cnnx.nn.random import derive_rng
from cnnx.training import RunConfig, run_training
from cnnx.training.interrupt import TrainingInterrupted

from helpers import StopAtStep, blobs, write_blob_idx


def test_a_spec_names_transforms_with_sizes_or_their_defaults():
    assert parse_augment("rotate=10, zoom=0.1,shift=2,flip,erase") == {
        "rotate": 10.0, "zoom": 0.1, "shift": 2.0, "flip": 0.5, "erase": 0.5}  # fmt: skip
    assert parse_augment("") == {} and parse_augment(None) == {}
    assert format_augment(parse_augment("flip,rotate=5")) == "flip=0.5,rotate=5"


@pytest.mark.parametrize(("spec", "message"), [
    ("spin=3", "unknown transform 'spin'"), ("rotate=x", "rotate='x' is not a number"),
    ("zoom=1.5", "zoom must be above 0 and at most 0.9"), ("flip,flip", "flip is given twice"),
    ("shift=-1", "shift must be above 0"),
])  # fmt: skip
def test_a_bad_spec_is_one_line_naming_the_part(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_augment(spec)
    with pytest.raises(ConfigError, match=message):
        RunConfig(augment=spec)


def images(n=16, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def test_the_identity_map_and_whole_pixel_shifts_are_exact():
    x = images()
    n = len(x)
    assert np.array_equal(_affine(x, np.zeros(n), np.ones(n), np.zeros((n, 2))), x)
    moved = _affine(x, np.zeros(n), np.ones(n), np.tile([2.0, -3.0], (n, 1)))
    assert np.array_equal(moved[:, :, 2:, :-3], x[:, :, :-2, 3:])
    assert not moved[:, :, :2].any() and not moved[:, :, :, -3:].any(), "pixels from outside must be 0"


def test_a_quarter_turn_turns_the_image():
    x = images(2)
    turned = _affine(x, np.full(2, np.pi / 2), np.ones(2), np.zeros((2, 2)))
    assert np.allclose(turned, np.rot90(x, k=1, axes=(2, 3)), atol=1e-5) or np.allclose(
        turned, np.rot90(x, k=-1, axes=(2, 3)), atol=1e-5)  # fmt: skip


def test_far_outside_points_sample_zeros_not_a_smeared_edge():
    x = np.ones((1, 1, 28, 28), np.float32)
    shrunk = _affine(x, np.zeros(1), np.full(1, 0.5), np.zeros((1, 2)))  # half size: a border of zeros
    assert shrunk[0, 0, 0, 0] == 0 and shrunk[0, 0, 14, 14] == 1


def test_flip_and_erase_do_what_they_say():
    x = images(64)
    flipped = Augmenter({"flip": 1.0}, derive_rng(0, "augment"))(x)
    assert np.array_equal(flipped, x[..., ::-1])
    erased = Augmenter({"erase": 1.0}, derive_rng(0, "augment"))(x)
    blank = (erased == 0) & (x != 0)
    share = blank.reshape(64, -1).mean(axis=1)
    assert np.all((share >= 0.01) & (share <= 0.25)), share
    assert np.array_equal(erased[~blank], x[~blank])


@pytest.mark.parametrize("degrees", [5.0, 30.0])
def test_rotation_angles_are_drawn_within_plus_or_minus_the_degrees_asked(degrees):
    angles = Augmenter({"rotate": degrees}, derive_rng(0, "augment")).draw((2000, 1, 28, 28))["angle"]
    largest = np.degrees(np.abs(angles)).max()
    assert largest <= degrees, f"an angle of {largest:.1f} degrees for rotate={degrees:g}"
    assert largest > 0.95 * degrees, f"angles reach only {largest:.2f} degrees for rotate={degrees:g}"


def test_the_erased_area_is_exactly_the_drawn_box():
    x = np.ones((64, 1, 28, 28), np.float32)
    draws = Augmenter({"erase": 1.0}, derive_rng(0, "augment")).draw(x.shape)
    erased = Augmenter.apply(x, draws)
    for i, (top, bottom, left, right) in enumerate(draws["box"]):
        expected = np.ones((28, 28), np.float32)
        expected[top:bottom, left:right] = 0
        assert np.array_equal(erased[i, 0], expected), (
            f"image {i}: erased area is not the box {draws['box'][i]}"
        )


def test_the_augmentation_stream_is_the_runs_own_derived_from_its_seed():
    spec = "rotate=10,shift=2,flip,erase=0.5"
    config = RunConfig(model="mlp", epochs=1, batch_size=32, max_steps=3, augment=spec)
    states = {}
    for seed in (1, 2):
        run = run_training(config.replace(seed=seed), dataset=dataset(), progress="none")
        replay = Augmenter(parse_augment(spec), derive_rng(seed, "augment"))
        for _ in range(3):  # three steps of 32 images
            replay.draw((32, 1, 28, 28))
        states[seed] = run.augmenter.rng.bit_generator.state
        assert states[seed] == replay.rng.bit_generator.state, f"seed {seed}: not the 'augment' stream"
    assert states[1] != states[2], "two seeds drew the same augmentations"


def test_the_augmenter_never_changes_its_input_and_repeats_from_a_seed():
    x = images()
    before = x.copy()
    spec = parse_augment("rotate=10,zoom=0.1,shift=2,flip,erase=0.5")
    a = Augmenter(spec, derive_rng(3, "augment"))(x)
    b = Augmenter(spec, derive_rng(3, "augment"))(x)
    assert np.array_equal(x, before) and np.array_equal(a, b) and not np.array_equal(a, x)


def dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


AUGMENTED = RunConfig(model="mlp", epochs=3, batch_size=32, augment="rotate=10,shift=2,flip,erase=0.5")


def test_an_augmented_run_resumes_to_the_weights_of_the_uninterrupted_run(tmp_path):
    straight = run_training(AUGMENTED, dataset=dataset(), progress="none")
    with pytest.raises(TrainingInterrupted):
        run_training(AUGMENTED, tmp_path / "run", dataset=dataset(), progress="none", stop=StopAtStep(10))
    resumed = run_training(AUGMENTED, tmp_path / "run", resume=True, dataset=dataset(), progress="none")
    for key, value in straight.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[key]), key
    plain = run_training(AUGMENTED.replace(augment=None), dataset=dataset(), progress="none")
    assert not np.array_equal(plain.model.state_dict()["1.W"], straight.model.state_dict()["1.W"])


def test_augmenting_a_model_of_flat_inputs_is_one_line():
    config = RunConfig(model=[{"type": "Dense", "config": {"in_features": 784, "out_features": 10}}],
                       input_shape=(784,), augment="flip")  # fmt: skip
    with pytest.raises(ConfigError, match=r"augment needs image inputs \(C, H, W\)"):
        run_training(config, dataset=dataset(), progress="none")


def test_cnnx_augmentations_show_writes_a_grid(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")
    out = tmp_path / "grid.png"
    args = ["augmentations", "show", "--augment", "rotate=10,flip", "--data-dir", str(data), "--out",
            str(out),
            "--count", "3", "--draws", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and "3 test images, each beside 2 draws" in result.output
    bad = CliRunner().invoke(cli, ["augmentations", "show", "--augment", "spin", "--data-dir", str(data)])
    assert bad.exit_code == 1 and "unknown transform 'spin'" in bad.output


def test_cutting_the_batch_over_threads_gives_the_same_images():
    from cnnx.backends import NumpyBackend

    spec = parse_augment("rotate=10,zoom=0.1,shift=2,flip,erase=0.5")
    x = np.random.default_rng(0).random((128, 1, 28, 28), dtype=np.float32)
    whole = Augmenter(spec, derive_rng(5, "augment"))(x)
    backend = NumpyBackend(threads=3)
    with backend.parallel_region():
        parts = Augmenter(spec, derive_rng(5, "augment"))(x, split=backend.split_batch)
    assert np.array_equal(whole, parts)
