"""Resuming, stopping, divergence and resources, through Python: a stopped run resumed ends exactly where
an unstopped one does; the divergence guard names the layer; full disks and unwritable directories
give one line and keep the last good checkpoint."""

from __future__ import annotations

import collections
import errno
import json
import os
import signal

import numpy as np
import pytest

import cnnx.training.loop as loop_module
import cnnx.training.rundir as rundir_module
from cnnx.data import Dataset
from cnnx.errors import CheckpointError, ConfigError, DivergenceError, ResourceError
from cnnx.io import load_model
from cnnx.io.checkpoint import check_optimizer_state, load_checkpoint
from cnnx.layers import Layer
from cnnx.nn import Sequential, build_model
from cnnx.optim import make_optimizer
from cnnx.training import fit, shuffle_rng
from cnnx.training.interrupt import StopFlag, StopNow, TrainingInterrupted, stop_on_signals

from helpers import StopAtStep, blobs

SETTINGS = {"epochs": 3, "batch_size": 32, "seed": 0, "progress": "none"}  # 200 images: 7 batches an epoch


def blob_dataset(train: int = 200, white: tuple[int, ...] = ()) -> Dataset:
    """Blob images; the training images at the ``white`` indices are made all 255 (a poison marker)."""
    images, labels = blobs(train, seed=1)
    images[list(white)] = 255
    return Dataset(images, labels, *blobs(50, seed=2), source="synthetic blobs")


def mlp_and_adam():
    model = build_model("mlp", seed=0)
    return model, make_optimizer("adam", model, 1e-3)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def straight():
    """The uninterrupted run: (model, optimizer, history)."""
    model, optimizer = mlp_and_adam()
    history = fit(model, optimizer, blob_dataset(), **SETTINGS)
    return model, optimizer, history


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The same run stopped after step 10 (epoch 2, batch 3), then resumed by fresh objects:
    (model, optimizer, history, the TrainingInterrupted, run dir)."""
    out = tmp_path_factory.mktemp("stopped")
    model, optimizer = mlp_and_adam()
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(model, optimizer, blob_dataset(), out_dir=out, stop=StopAtStep(10), **SETTINGS)
    model, optimizer = mlp_and_adam()
    history = fit(model, optimizer, blob_dataset(), out_dir=out, resume=True, **SETTINGS)
    return model, optimizer, history, stopped.value, out


def max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b), f"keys differ: {sorted(set(a) ^ set(b))}"
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)


def test_a_stop_request_ends_fit_mid_epoch_with_a_checkpoint_there(resumed):
    stopped = resumed[3]
    where = (stopped.epoch, stopped.batch, stopped.checkpoint.name)
    assert where == (2, 3, "model.npz"), (
        f"stopped at (epoch, batch, file) {where}, expected (2, 3, model.npz)"
    )


def test_a_resumed_run_ends_with_exactly_the_weights_of_the_uninterrupted_run(straight, resumed):
    gap = max_difference(straight[0].state_dict(), resumed[0].state_dict())
    assert gap == 0.0, f"weights differ by up to {gap:.3e}"


def test_a_resumed_run_ends_with_exactly_the_adam_state_of_the_uninterrupted_run(straight, resumed):
    a, b = straight[1].state_dict(np.asarray), resumed[1].state_dict(np.asarray)
    assert a["steps"] == b["steps"] == 21, f"Adam steps {a['steps']} vs {b['steps']} (21 expected)"
    gap = max_difference(
        {k: v for k, v in a.items() if k != "steps"}, {k: v for k, v in b.items() if k != "steps"}
    )
    assert gap == 0.0, f"Adam moments differ by up to {gap:.3e}"


def test_a_resumed_run_has_the_history_of_the_uninterrupted_run(straight, resumed):
    a, b = without_seconds(straight[2]), without_seconds(resumed[2])
    assert a == b, f"histories differ:\n{a}\n{b}"


def test_a_resumed_run_records_completed_and_the_whole_history(resumed):
    record = json.loads((resumed[4] / "metrics.json").read_text())
    got = (record["status"], record["resumes"], len(record["history"]))
    assert got == ("completed", 1, 3), f"(status, resumes, history rows) {got}, expected (completed, 1, 3)"


def test_an_exception_inside_a_step_leaves_the_periodic_checkpoint_to_resume_from(
    straight, tmp_path, monkeypatch
):
    real, calls = loop_module.train_step, {"n": 0}

    def step(*args, **options):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **options)

    monkeypatch.setattr(loop_module, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, checkpoint_every=3, **SETTINGS)
    status = json.loads((tmp_path / "metrics.json").read_text())["status"]
    meta = load_checkpoint(tmp_path / "model.npz").meta
    assert (status, meta["epoch"], meta["batch"]) == ("interrupted", 1, 2), f"{status}, {meta['epoch']}"
    monkeypatch.setattr(loop_module, "train_step", real)
    model, optimizer = mlp_and_adam()
    fit(model, optimizer, blob_dataset(), out_dir=tmp_path, resume=True, **SETTINGS)
    gap = max_difference(straight[0].state_dict(), model.state_dict())
    assert gap == 0.0, f"resumed from step 9, the weights differ from the uninterrupted run's by {gap:.3e}"


def test_resuming_a_completed_run_without_more_epochs_is_an_error(resumed):
    with pytest.raises(ConfigError, match="already completed its 3 epochs"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=resumed[4], resume=True, **SETTINGS)


def test_resuming_with_another_batch_size_is_refused(resumed):
    settings = {**SETTINGS, "batch_size": 16, "epochs": 4}
    with pytest.raises(ConfigError, match="batch_size is 32, not 16"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=resumed[4], resume=True, **settings)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(steps=np.array(-1)), "step count"),
        (lambda s: s.update(steps=np.array(2.5)), "step count"),
        (lambda s: s.update({"m/9.W": s["m/1.W"]}), "unexpected entry"),
        (lambda s: s.update({"m/1.W": s["m/1.W"][:3]}), "the parameter is"),
        (lambda s: s.update({"m/1.W": s["m/1.W"].astype(np.float64)}), "the parameter is"),
        (lambda s: s["v/1.b"].__setitem__(0, np.nan), "NaN"),
        (lambda s: s.pop("v/1.b"), "lacks v/1.b"),
    ],
    ids=[
        "negative-steps",
        "fractional-steps",
        "unknown-name",
        "wrong-shape",
        "wrong-dtype",
        "nan",
        "missing",
    ],
)
def test_optimizer_state_from_a_checkpoint_is_checked_before_it_is_loaded(straight, change, message):
    state = {k: np.array(v) for k, v in straight[1].state_dict(np.asarray).items()}
    change(state)
    _, optimizer = mlp_and_adam()
    with pytest.raises(CheckpointError, match=message):
        check_optimizer_state(state, optimizer)


def test_a_batch_size_larger_than_the_training_set_names_both_numbers():
    with pytest.raises(ConfigError, match=r"batch size 300 is larger than the training set \(200 images\)"):
        fit(*mlp_and_adam(), blob_dataset(), epochs=1, batch_size=300, progress="none")


# -- divergence -------------------------------------------------------------------------------------


class PoisonOnWhite(Layer):
    """Passes images through, but turns every all-white image into NaN; records each training forward's
    (poisoned?, weights of the model) so tests can see what a skipped step did."""

    def __init__(self, backend=None):
        super().__init__(backend=backend)
        self.model, self.calls = None, []

    def forward(self, x, train=True, draws=None):
        white = x.reshape(len(x), -1).min(axis=1) == 1.0
        if train and self.model is not None:
            self.calls.append((bool(white.any()), self.model.state_dict()))
        return x + np.where(white, np.nan, 0.0).astype(x.dtype)[:, None, None, None], None

    def backward(self, saved, dy, need_dx=True):
        return dy, {}


def poisoned_mlp():
    poison = PoisonOnWhite()
    model = Sequential([poison, *build_model("mlp", seed=0).layers], name="poisoned")
    poison.model = model
    return model, make_optimizer("adam", model, 1e-3), poison


def batch_of(index: int, seed: int = 0, n: int = 200, batch_size: int = 32) -> int:
    """The 1-based batch of the first epoch that holds training image ``index``."""
    return int(np.flatnonzero(shuffle_rng(seed).permutation(n) == index)[0]) // batch_size + 1


def test_divergence_names_the_epoch_batch_and_layer_where_it_began():
    model, optimizer, _ = poisoned_mlp()
    b = batch_of(17)
    expected = (
        rf"epoch 1, batch {b} \(step {b}\): non-finite values first in layer 0 \(PoisonOnWhite\) forward"
    )
    with pytest.raises(DivergenceError, match=expected):
        fit(model, optimizer, blob_dataset(white=(17,)), epochs=1, batch_size=32, progress="none")


def test_an_exploding_learning_rate_is_traced_to_a_layer():
    model = build_model("mlp", seed=0)
    with pytest.raises(
        DivergenceError, match=r"epoch 1, batch \d+ \(step \d+\): non-finite values first in layer \d"
    ):
        fit(
            model,
            make_optimizer("sgd", model, 1e30),
            blob_dataset(),
            epochs=1,
            batch_size=32,
            progress="none",
        )


@pytest.fixture(scope="module")
def skipping():
    """Two epochs in skip mode with one poisoned image: (model, optimizer, poison layer, history)."""
    model, optimizer, poison = poisoned_mlp()
    history = fit(model, optimizer, blob_dataset(white=(17,)), epochs=2, batch_size=32, progress="none",
                  on_divergence="skip")  # fmt: skip
    return model, optimizer, poison, history


def test_skip_mode_skips_and_counts_the_poisoned_step_of_each_epoch(skipping):
    _, optimizer, _, history = skipping
    counts = [row["skipped"] for row in history]
    assert counts == [1, 1] and optimizer.steps == 12, (
        f"skipped per epoch {counts}, Adam steps {optimizer.steps}"
    )


def test_a_skipped_step_leaves_the_weights_as_they_were(skipping):
    calls = skipping[2].calls
    bad = next(i for i, (poisoned, _) in enumerate(calls) if poisoned)
    after = next(weights for poisoned, weights in calls[bad + 1 :] if not poisoned)
    gap = max_difference(calls[bad][1], after)
    assert gap == 0.0, f"the weights changed by {gap:.3e} across a skipped step"


def test_skip_mode_gives_up_after_too_many_steps_in_a_row():
    model, optimizer, _ = poisoned_mlp()
    with pytest.raises(DivergenceError, match="5 steps in a row skipped"):
        fit(model, optimizer, blob_dataset(white=tuple(range(200))), epochs=1, batch_size=16, progress="none",
            on_divergence="skip", max_skips=5)  # fmt: skip


# -- resources --------------------------------------------------------------------------------------


def test_an_unwritable_run_directory_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_probe(path, *args, **kwargs):
        if rundir_module.PROBE_PREFIX in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_probe)
    with pytest.raises(ResourceError, match=r"cannot write in .* \(Permission denied\)$") as caught:
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path / "run", **SETTINGS)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists(), "a run directory was left"


def test_a_read_only_parent_directory_is_refused_before_training(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the patched probe test covers this case")
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    with pytest.raises(ResourceError, match="cannot write in"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=parent / "run", **SETTINGS)


def test_too_little_free_space_is_one_line_before_training(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(rundir_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(
        ResourceError, match=r"not enough free space in .*: 0\.0 MiB free, the run needs about"
    ):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path / "run", **SETTINGS)
    assert not (tmp_path / "run").exists(), "a refused run left its directory"


def test_a_full_disk_during_training_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real, calls = np.savez, {"n": 0}

    def savez(file, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half written, then the disk is full
            file.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(ResourceError, match=r"No space left on device\); the last good checkpoint is"):
        fit(*mlp_and_adam(), blob_dataset(), out_dir=tmp_path, **SETTINGS)
    meta = load_checkpoint(tmp_path / "model.npz").meta
    load_model(tmp_path / "model.npz")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    status = json.loads((tmp_path / "metrics.json").read_text())["status"]
    assert (meta["epoch"], leftovers, status) == (1, [], "failed"), f"{meta['epoch']}, {leftovers}, {status}"


def test_running_out_of_memory_names_the_batch_size_and_suggests_a_smaller_one(monkeypatch):
    def step(*args, **options):
        raise MemoryError

    monkeypatch.setattr(loop_module, "train_step", step)
    with pytest.raises(ResourceError, match=r"batch size 32 .*--batch-size 16"):
        fit(*mlp_and_adam(), blob_dataset(), **SETTINGS)


def test_layer_buffers_are_collected_and_restored_by_name():
    model, _ = mlp_and_adam()
    model.layers[1].buffers = {"running_mean": np.arange(128, dtype=np.float32)}
    saved = model.state_dict()
    fresh, _ = mlp_and_adam()
    fresh.layers[1].buffers = {"running_mean": np.zeros(128, np.float32)}
    fresh.load_state_dict(saved)
    restored = fresh.layers[1].buffers["running_mean"]
    assert "1.running_mean" in saved and (restored == np.arange(128)).all(), f"{sorted(saved)}, {restored}"


# -- signals ----------------------------------------------------------------------------------------


def test_a_first_signal_raises_the_flag_and_a_second_stops_at_once():
    flag, heard = StopFlag(), []
    with stop_on_signals(flag, heard.append):
        signal.raise_signal(signal.SIGTERM)
        assert flag.requested == "SIGTERM" and heard == ["SIGTERM"], f"flag {flag.requested}, heard {heard}"
        with pytest.raises(StopNow):
            signal.raise_signal(signal.SIGINT)


def test_the_previous_signal_handlers_come_back_after_training():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals(StopFlag()):
        pass
    after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert after == before, f"handlers {after} after the block, {before} before"
