"""Weight decay (L2 and decoupled), learning-rate schedules stepped per batch, and gradient-norm clipping:
each against its formula, through RunConfig and the command line, and exact on resuming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.layers import Dense
from cnnx.nn import build_model
from cnnx.optim import SCHEDULES, learning_rate, make_optimizer
from cnnx.training import RunConfig, run_training
from cnnx.training.interrupt import TrainingInterrupted
from cnnx.training.step import clip_gradients

from helpers import StopAtStep, blobs, write_blob_idx


def layer_with_grad(rng):
    layer = Dense(4, 3, rng=0, dtype="float64")
    layer.grads = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    return layer


# -- weight decay -----------------------------------------------------------------------------------------


def test_sgd_weight_decay_is_l2(rng):
    layer = layer_with_grad(rng)
    w, g = layer.params["W"].copy(), layer.grads["W"].copy()
    make_optimizer("sgd", layer, 0.1, weight_decay=0.01).step()
    assert np.allclose(layer.params["W"], w - 0.1 * (g + 0.01 * w), rtol=1e-14)


def test_momentum_weight_decay_enters_the_average(rng):
    layer = layer_with_grad(rng)
    w, g = layer.params["W"].copy(), layer.grads["W"].copy()
    make_optimizer("momentum", layer, 0.1, beta=0.9, weight_decay=0.01).step()
    assert np.allclose(layer.params["W"], w - 0.1 * 0.1 * (g + 0.01 * w), rtol=1e-14)


def test_adam_weight_decay_is_decoupled_adamw(rng):
    layer = layer_with_grad(rng)
    w, g = layer.params["W"].copy(), layer.grads["W"].copy()
    make_optimizer("adam", layer, 1e-2, weight_decay=0.1).step()
    # First step: m_hat = g, v_hat = g^2, so the Adam step is lr * g / (|g| + eps); the decay is apart.
    expected = w * (1 - 1e-2 * 0.1) - 1e-2 * g / (np.abs(g) + 1e-8)
    assert np.allclose(layer.params["W"], expected, rtol=1e-12)


def test_adam_weight_decay_matches_pytorch_adamw_over_steps(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: nothing to compare against")
    layer = layer_with_grad(rng)
    mirror = torch.nn.Parameter(torch.from_numpy(layer.params["W"].copy()))
    theirs = torch.optim.AdamW([mirror], lr=1e-2, weight_decay=0.1)
    ours = make_optimizer("adam", layer, 1e-2, weight_decay=0.1)
    for _ in range(5):
        g = rng.standard_normal((4, 3))
        layer.grads = {"W": g, "b": np.zeros(3)}
        mirror.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    assert np.allclose(layer.params["W"], mirror.detach().numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("value", [-0.1, math.inf, "0.1", True])
def test_weight_decay_must_be_a_finite_number_of_at_least_zero(value):
    with pytest.raises(ConfigError, match="weight_decay must be a finite number >= 0"):
        RunConfig(weight_decay=value)


def test_weight_decay_is_a_run_setting_not_an_optimizer_option():
    with pytest.raises(ConfigError, match="adam has no setting 'weight_decay'"):
        RunConfig(optimizer_options={"weight_decay": 0.1})


# -- schedules --------------------------------------------------------------------------------------------


def test_constant_step_and_cosine_rates_follow_their_formulas():
    assert learning_rate("constant", 0.1, 57, 100) == 0.1
    assert [learning_rate("step", 0.1, s, 90, step_every=30, gamma=0.5) for s in (0, 29, 30, 60, 89)] == [
        0.1, 0.1, 0.05, 0.025, 0.025]  # fmt: skip
    assert learning_rate("step", 1.0, 33, 99) == pytest.approx(0.1)  # a drop every third of the run
    assert learning_rate("cosine", 0.1, 0, 100) == 0.1
    assert learning_rate("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 100, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("warmup", [0, 10])
def test_the_step_schedule_drops_after_each_third_rounded_up_of_a_run_not_divisible_by_three(warmup):
    # 100 steps after the warm-up: drops every ceil(100 / 3) = 34 steps, at 34 and 68.
    rates = {
        s: learning_rate("step", 1.0, warmup + s, warmup + 100, warmup=warmup) for s in (33, 34, 67, 68, 99)
    }
    assert rates == pytest.approx({33: 1.0, 34: 0.1, 67: 0.1, 68: 0.01, 99: 0.01}), rates


def test_warmup_climbs_linearly_then_hands_over_to_the_schedule():
    rates = [learning_rate("cosine", 1.0, s, 110, warmup=10) for s in range(12)]
    assert rates[:10] == pytest.approx([0.1 * (s + 1) for s in range(10)])
    assert rates[10] == 1.0 and rates[11] < 1.0


def test_onecycle_rises_to_the_rate_at_30_percent_and_ends_far_below():
    rates = [learning_rate("onecycle", 1.0, s, 1000) for s in range(1001)]
    assert rates[0] == pytest.approx(1 / 25) and max(rates) == pytest.approx(1.0)
    assert int(np.argmax(rates)) == 300 and rates[-1] == pytest.approx(1 / 250_000)


def test_an_unknown_schedule_names_the_choices():
    with pytest.raises(ConfigError, match="lr_schedule must be one of " + ", ".join(SCHEDULES)):
        RunConfig(lr_schedule="linear")


def dataset() -> Dataset:
    return Dataset(*blobs(200, seed=1), *blobs(50, seed=2), source="synthetic blobs")


SCHEDULED = RunConfig(model="mlp", epochs=3, batch_size=32, lr=1e-2, lr_schedule="onecycle", warmup_steps=0,
                      weight_decay=0.01, clip_grad_norm=0.5)  # fmt: skip


def rates_of(config: RunConfig, monkeypatch) -> list[float]:
    """The learning rate of every Adam step of a run of ``config``, as the optimizer saw it."""
    seen = []
    original = make_optimizer("adam", build_model("mlp"), 1e-3).__class__.step

    def spy(self):
        seen.append(self.lr)
        return original(self)

    monkeypatch.setattr("cnnx.optim.optimizers.Adam.step", spy)
    run_training(config, dataset=dataset(), progress="none")
    return seen


def test_a_scheduled_run_steps_its_rate_per_batch(monkeypatch):
    seen = rates_of(SCHEDULED, monkeypatch)
    total = 3 * 7
    assert seen == pytest.approx([learning_rate("onecycle", 1e-2, s, total) for s in range(total)])


def test_a_cosine_run_cut_by_max_steps_follows_the_schedule_of_max_steps(monkeypatch):
    seen = rates_of(SCHEDULED.replace(lr_schedule="cosine", max_steps=10), monkeypatch)
    assert seen == pytest.approx([learning_rate("cosine", 1e-2, s, 10) for s in range(10)]), (
        "the rates follow another run length than max_steps' 10 steps"
    )


def test_a_scheduled_clipped_decayed_run_resumes_to_the_same_weights(tmp_path):
    straight = run_training(SCHEDULED, dataset=dataset(), progress="none")
    with pytest.raises(TrainingInterrupted):
        run_training(SCHEDULED, tmp_path / "run", dataset=dataset(), progress="none", stop=StopAtStep(9))
    resumed = run_training(SCHEDULED, tmp_path / "run", resume=True, dataset=dataset(), progress="none")
    for key, value in straight.model.state_dict().items():
        assert np.array_equal(value, resumed.model.state_dict()[key]), key


# -- clipping ---------------------------------------------------------------------------------------------


def test_clipping_scales_every_gradient_by_one_factor_to_the_norm(rng):
    model = build_model("mlp", dtype="float64")
    for layer in model.layers:
        for name, param in layer.params.items():
            layer.grads[name] = rng.standard_normal(param.shape)
    before = {n: g.copy() for n, _, g in model.named_parameters()}
    norm = float(np.sqrt(sum((g * g).sum() for g in before.values())))
    returned = clip_gradients(model, 1.0)
    assert float(returned) == pytest.approx(norm)
    after = {n: g for n, _, g in model.named_parameters()}
    assert float(np.sqrt(sum((g * g).sum() for g in after.values()))) == pytest.approx(1.0, rel=1e-5)
    ratios = {n: after[n].ravel()[0] / before[n].ravel()[0] for n in before}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))


def test_clipping_leaves_small_gradients_alone(rng):
    layer = layer_with_grad(rng)
    model = build_model([{"type": "Dense", "config": {"in_features": 4, "out_features": 3}}], dtype="float64",
                        input_shape=(4,))  # fmt: skip
    model.layers[0].grads = {k: v.copy() for k, v in layer.grads.items()}
    clip_gradients(model, 1e6)
    assert all(np.array_equal(model.layers[0].grads[k], layer.grads[k]) for k in layer.grads)


def test_cnnx_train_takes_the_extras_and_records_them(tmp_path):
    (tmp_path / "data").mkdir()
    data = write_blob_idx(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--data-dir", str(data), "--batch-size", "32", "--epochs", "2",
            "--quiet", "--out", str(out), "--weight-decay", "0.001", "--lr-schedule", "step",
            "--lr-step-every", "3",
            "--lr-gamma", "0.5", "--warmup-steps", "2", "--clip-grad-norm", "1.0"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["weight_decay"], config["lr_schedule"], config["lr_step_every"], config["lr_gamma"],
            config["warmup_steps"], config["clip_grad_norm"]) == (0.001, "step", 3, 0.5, 2, 1.0)  # fmt: skip
    again = CliRunner().invoke(
        cli, ["train", "--resume", str(out), "--epochs", "3", "--lr-schedule", "cosine"]
    )
    assert again.exit_code == 1 and "--lr-schedule 'cosine' contradicts the run" in again.output


# -- the dropout rate --------------------------------------------------------------------------------------


def test_dropout_sets_every_dropout_layer_and_is_part_of_the_run(tmp_path):
    (tmp_path / "data").mkdir()
    write_blob_idx(tmp_path / "data", train=64, test=20)
    out = tmp_path / "run"
    args = ["train", "--model", "seed-dropout", "--dropout", "0.1", "--epochs", "1", "--batch-size", "16",
            "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["config"]["dropout"] == 0.1
    from cnnx.io import load_model

    model = load_model(out / "model.npz")
    rates = [layer.p for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.1, 0.1] and model.name == "seed-dropout"
    again = CliRunner().invoke(cli, ["train", "--resume", str(out), "--epochs", "2", "--dropout", "0.2"])
    assert again.exit_code != 0 and "dropout" in again.output and "\n" not in again.output.strip()


@pytest.mark.parametrize(
    "values, fragment",
    [({"dropout": 1.5}, "dropout must be a probability in [0, 1), got 1.5"),
     ({"dropout": -0.1}, "dropout must be a probability in [0, 1)"),
     ({"model": "seed", "dropout": 0.3}, "dropout: model 'seed' has no Dropout layer to set (presets with "
                                         "dropout: seed-dropout, cnn-bn, vgg-bn)")],
)  # fmt: skip
def test_a_bad_dropout_is_one_line_naming_it(values, fragment):
    with pytest.raises(ConfigError) as refused:
        RunConfig(**values)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)


def test_the_wrong_options_the_issue_names_are_one_line_errors_naming_them(tmp_path):
    (tmp_path / "data").mkdir()
    write_blob_idx(tmp_path / "data", train=20, test=10)
    cases = {
        ("--augment", "rotate=abc"): "rotate",
        ("--dropout", "1.5"): "--dropout",
        ("--lr-schedule", "triangle"): "--lr-schedule",
        ("--dataset", "cifar"): "--dataset",
        ("--validation", "0.9"): "--validation",
    }
    for (option, value), named in cases.items():
        result = CliRunner().invoke(cli, ["train", option, value, "--data-dir", str(tmp_path / "data"),
                                          "--out", str(tmp_path / "r")])  # fmt: skip
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code in (1, 2) and named in lines[-1], (option, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "r").exists()
    # A validation split that leaves no training data: 20 images, half held out, batches of 16.
    result = CliRunner().invoke(cli, ["train", "--validation", "0.5", "--limit", "2", "--data-dir",
                                      str(tmp_path / "data"), "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1, result.output
