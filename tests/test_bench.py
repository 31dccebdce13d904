"""`cnnx bench`: the benchmark runs and reports well-formed results, PyTorch's twin computes the same
logits, and bad settings fail with one-line errors. Nothing here asserts a speed."""

from __future__ import annotations

import json
import math
import sys

import pytest
from click.testing import CliRunner

from cnnx.backends import BackendUnavailable, get_backend
from cnnx.bench.benchmark import parse_batch_sizes, run_benchmark
from cnnx.bench.profile import format_profile, profile_layers
from cnnx.cli.bench import bench
from cnnx.errors import CnnxError, ConfigError
from cnnx.nn.presets import PRESETS

TINY = {"steps": 1, "warmup": 0, "repeats": 1}


def gpu_usable() -> bool:
    try:
        get_backend("gpu")
    except BackendUnavailable:
        return False
    return True


def check_summary(summary: dict, batch_size: int, what: str) -> None:
    for key in ("train_images_per_s", "train_seconds_per_epoch", "infer_images_per_s"):
        value = summary[key]
        assert math.isfinite(value) and value > 0, f"{what}: {key} is {value}"
    expected_epoch = 60_000 / summary["train_images_per_s"]
    assert summary["train_seconds_per_epoch"] == pytest.approx(expected_epoch), (
        f"{what}: {summary['train_seconds_per_epoch']} s/epoch is not 60,000 images at "
        f"{summary['train_images_per_s']} images/s"
    )


@pytest.mark.parametrize("model", ["mlp", "seed"])
def test_benchmark_reports_train_and_inference_speed_for_each_batch_size(model):
    result = run_benchmark(model, (2, 4), **TINY)
    sizes = [entry["batch_size"] for entry in result["results"]]
    assert sizes == [2, 4], f"results for batch sizes {sizes}, asked for [2, 4]"
    for entry in result["results"]:
        check_summary(entry["cnnx"], entry["batch_size"], f"{model} batch {entry['batch_size']}")


def test_benchmark_result_says_how_it_was_measured_and_is_json():
    result = run_benchmark("mlp", (2,), **TINY)
    text = json.dumps(result)
    for key in ("machine", "data", "epoch", "device", "dtype", "steps", "warmup", "repeats"):
        assert key in result, f"the result lacks {key!r}"
    assert "synthetic" in result["data"] and "extrapolated" in result["epoch"], (
        f"the result does not say the data are synthetic and the epoch extrapolated: {result['data']!r}, "
        f"{result['epoch']!r}"
    )
    assert json.loads(text)["results"][0]["batch_size"] == 2, "the result does not survive JSON"


def test_each_run_is_recorded_so_the_median_can_be_checked():
    result = run_benchmark("mlp", (2,), steps=1, warmup=0, repeats=3)
    summary = result["results"][0]["cnnx"]
    counts = len(summary["train_step_ms"]), len(summary["infer_step_ms"])
    assert counts == (3, 3), f"{counts} train/inference runs recorded, expected 3 each"


def test_profile_times_every_layer_and_the_optimizer():
    profile = profile_layers("seed", 2, steps=1, warmup=0)
    assert len(profile["layers"]) == 14, f"{len(profile['layers'])} layers profiled, the seed CNN has 14"
    timed = [r["forward_ms"] for r in profile["layers"]] + [profile["loss_ms"], profile["optimizer_ms"]]
    assert all(0 < ms < 60_000 for ms in timed), f"implausible timings (ms): {timed}"
    labels = [r["layer"] for r in profile["layers"]]
    assert (
        labels[0] == " 0 Conv2D 1->32 3x3"
        and labels[2] == " 2 MaxPool2D 2/2"
        and labels[7] == " 7 Dense 1600->128"
    ), labels


def test_profile_runs_the_layers_as_a_training_step_does():
    # The mlp's Flatten sits below the first Dense: training never runs its backward, nor the Dense's
    # input gradient (the Dense computes only its own gradients).
    profile = profile_layers("mlp", 4, steps=1, warmup=0)
    rows = profile["layers"]
    assert rows[0]["layer"] == " 0 Flatten" and rows[0]["backward_ms"] is None, rows[0]
    assert all(row["backward_ms"] is not None for row in rows[1:]), rows
    assert "torch_forward_ms" not in rows[0] and "torch_step_ms" not in profile
    table = format_profile(profile)
    assert " 0 Flatten" in table and "-" in table.splitlines()[2] and "torch" not in table, table


def test_profile_with_torch_times_the_twin_module_by_module():
    pytest.importorskip("torch", reason="PyTorch is not installed: nothing to compare against")
    profile = profile_layers("seed", 32, steps=3, warmup=1, compare="torch")
    rows = profile["layers"]
    assert len(rows) == 14
    for row in rows:
        for key in ("forward_ms", "backward_ms", "torch_forward_ms", "torch_backward_ms"):
            assert row[key] is not None and 0 <= row[key] < 60_000, (row["layer"], key, row[key])
    # The first convolution's weight gradient is made after PyTorch's backward hook for it would fire:
    # it must still be timed, not show the hook's few microseconds. The two are a hundred times apart;
    # the bound sits far from both, so a busy machine's noise in either time does not decide it.
    assert rows[0]["torch_backward_ms"] > 0.05 * rows[0]["torch_forward_ms"], rows[0]
    assert profile["torch_optimizer_ms"] > 0 and profile["torch_step_ms"] > 0
    table = format_profile(profile)
    assert "torch fw" in table and "torch sum" in table and "PyTorch" in table, table


@pytest.mark.parametrize("model", sorted(PRESETS))
def test_torch_twin_starts_from_the_same_weights_and_gives_the_same_logits(model):
    pytest.importorskip("torch", reason="PyTorch is not installed: nothing to compare against")
    entry = run_benchmark(model, (3,), compare="torch", **TINY)["results"][0]
    agreement = entry["logits"]
    assert agreement["agree"] and agreement["rel_error"] < 1e-5, (
        f"{model}: first-forward logits of cnnx and PyTorch differ by {agreement['max_abs_diff']:.2e} "
        f"(relative {agreement['rel_error']:.2e})"
    )


def test_torch_comparison_reports_both_frameworks_and_the_time_ratios():
    pytest.importorskip("torch", reason="PyTorch is not installed: nothing to compare against")
    result = run_benchmark("mlp", (4,), compare="torch", **TINY)
    entry = result["results"][0]
    check_summary(entry["torch"], 4, "torch")
    expected = entry["cnnx"]["train_seconds_per_epoch"] / entry["torch"]["train_seconds_per_epoch"]
    assert entry["ratio"]["train_time"] == pytest.approx(expected), (
        f"train time ratio {entry['ratio']['train_time']} is not cnnx/torch = {expected}"
    )
    torch_threads, blas_threads = result["torch"]["threads"], result["machine"]["blas"]["threads"]
    assert torch_threads == blas_threads, f"PyTorch ran {torch_threads} threads, NumPy's BLAS {blas_threads}"


def test_compare_torch_without_torch_installed_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ConfigError, match="needs PyTorch") as caught:
        run_benchmark("mlp", (2,), compare="torch", **TINY)
    assert "\n" not in str(caught.value), f"a multi-line message: {caught.value}"


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"model": "vgg"}, "unknown model"),
        ({"batch_sizes": (0,)}, "batch sizes"),
        ({"batch_sizes": ()}, "batch sizes"),
        ({"dtype": "float16"}, "dtype"),
        ({"steps": 0}, "steps"),
        ({"warmup": -1}, "warmup"),
        ({"repeats": 0}, "repeats"),
        ({"compare": "tensorflow"}, "--compare"),
    ],
)
def test_bad_settings_are_one_line_config_errors(settings, words):
    kwargs = {"model": "mlp", "batch_sizes": (2,), **TINY, **settings}
    with pytest.raises(ConfigError, match=words) as caught:
        run_benchmark(**kwargs)
    assert "\n" not in str(caught.value), f"a multi-line message: {caught.value}"


@pytest.mark.skipif(gpu_usable(), reason="a GPU is usable here, so the request does not fail")
def test_a_gpu_benchmark_without_a_gpu_names_the_reason():
    with pytest.raises(BackendUnavailable, match="GPU backend unavailable") as caught:
        run_benchmark("mlp", (2,), device="gpu", **TINY)
    assert "\n" not in str(caught.value), f"a multi-line message: {caught.value}"


def test_batch_sizes_may_be_repeated_or_comma_separated():
    assert parse_batch_sizes(("8,16", " 32 ")) == (8, 16, 32)


@pytest.mark.parametrize("bad", ["abc", "0", "8,,16", "-4"])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ConfigError, match="--batch-size takes positive integers"):
        parse_batch_sizes((bad,))


def test_bench_command_prints_a_json_result():
    out = CliRunner().invoke(
        bench,
        ["--model", "mlp", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--repeats", "1", "--json"],
    )
    assert out.exit_code == 0, f"exit {out.exit_code}: {out.output}{out.exception!r}"
    assert json.loads(out.output)["results"][0]["batch_size"] == 2, out.output


def test_bench_command_prints_a_table_and_the_profile():
    out = CliRunner().invoke(
        bench,
        [
            "--model",
            "seed",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--profile",
        ],
    )
    assert out.exit_code == 0, f"exit {out.exit_code}: {out.output}{out.exception!r}"
    for words in ("train img/s", "s/epoch", "per-layer profile", "Conv2D 32->64 3x3", "optimizer"):
        assert words in out.output, f"{words!r} missing from:\n{out.output}"


def test_bench_command_turns_a_bad_option_into_a_cnnx_error():
    out = CliRunner().invoke(bench, ["--batch-size", "abc"])
    assert isinstance(out.exception, CnnxError), f"got {out.exception!r} (exit {out.exit_code})"
    assert "\n" not in str(out.exception), f"a multi-line message: {out.exception}"


# -- whole epochs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def epoch_data(tmp_path_factory):
    from helpers import write_blob_idx

    return write_blob_idx(tmp_path_factory.mktemp("epoch"), train=96, test=24)


def test_epoch_mode_times_training_evaluation_and_the_host_pipeline_apart(epoch_data):
    args = [
        "--epoch",
        "--model",
        "mlp",
        "--batch-size",
        "32",
        "--repeats",
        "2",
        "--data-dir",
        str(epoch_data),
    ]
    out = CliRunner().invoke(bench, [*args, "--json"])
    assert out.exit_code == 0, f"exit {out.exit_code}: {out.output}{out.exception!r}"
    result = json.loads(out.output)
    assert result["mode"] == "epoch" and len(result["runs"]["cnnx"]) == 2 and "torch" not in result
    cnnx = result["cnnx"]
    assert cnnx["train"] > 0 and cnnx["eval"] > 0 and 0 < cnnx["pipeline_share"] < 1, cnnx
    assert "96 training and 24 test images" in result["data"]


def test_epoch_mode_against_torch_trains_the_same_model_on_the_same_batches(epoch_data):
    pytest.importorskip("torch", reason="PyTorch is the yardstick here; it is not installed")
    from cnnx.bench.epoch import run_epoch_benchmark
    from cnnx.data import load_fashion_mnist

    result = run_epoch_benchmark(
        load_fashion_mnist(epoch_data), model="mlp", batch_size=32, repeats=1, compare="torch"
    )
    # Same weights, same batch order, same conversion, same Adam: one epoch ends at the same test accuracy,
    # give or take a test image whose two best classes lie within float32 rounding of each other.
    assert abs(result["cnnx"]["accuracy"] - result["torch"]["accuracy"]) <= 1 / 24, result
    assert set(result["ratio"]) == {"train", "eval"}
