"""Hostile files, beyond the table of tests/test_hostile.py: a model path that is not a regular file at
every entry point that reads one, the archive caps, the order of the checks, the model-loading options,
and memory: inference batches sized to the model's activations, running out of memory as one line, and
cnnx bench refusing a batch size the machine cannot hold.

What could block or read for ever (a FIFO, /dev/zero) runs in a child process with a time and memory
limit, so that a regression fails its test instead of hanging the suite or exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import cnnx.nn.model as model_module
from cnnx.bench import epoch as bench_epoch
from cnnx.bench import memory as bench_memory
from cnnx.bench import profile as bench_profile
from cnnx.bench import timing as bench_timing
from cnnx.bench.benchmark import run_benchmark
from cnnx.bench.epoch import run_epoch_benchmark
from cnnx.bench.profile import profile_layers
from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import CheckpointError, ConfigError, ResourceError
from cnnx.io import load_model, modelfile, read_archive
from cnnx.nn import Sequential, build_model
from cnnx.nn.model import INFERENCE_BYTES, build_from_architecture
from cnnx.nn.parallel import ShardGroup
from cnnx.nn.presets import layer
from cnnx.nn.registry import MAX_ACTIVATION
from cnnx.nn.saving import HEADER_KEY
from cnnx.training import evaluate

from helpers import blobs, write_blob_idx

LIMIT_S = 120  # safety nets, not measures: a hang or a runaway read ends the child, and fails the test
MEMORY_LIMIT = 3 << 30


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_idx(tmp_path_factory.mktemp("blobs"), train=40, test=20)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return build_model("mlp", seed=1).save(tmp_path_factory.mktemp("model") / "model.npz")


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=LIMIT_S,
                          preexec_fn=_limited)  # fmt: skip


LOAD = "import sys; from cnnx.errors import CnnxError; from cnnx.io import {0}\ntry: {0}(sys.argv[1])\n" \
       "except CnnxError as exc: sys.exit(f'cnnx: error: {{exc}}')"  # fmt: skip
ENTRY_POINTS = {
    "predict": lambda path, data: ["-m", "cnnx", "predict", path, data / "t10k-images-idx3-ubyte.gz"],
    "evaluate": lambda path, data: ["-m", "cnnx", "evaluate", path, "--data-dir", data],
    "load_model": lambda path, data: ["-c", LOAD.format("load_model"), path],
    "load_checkpoint": lambda path, data: ["-c", LOAD.format("load_checkpoint"), path],
}
NOT_REGULAR = {"fifo": "a FIFO (named pipe), not a regular model file",
               "link-to-dev-zero": "a character device, not a regular model file"}  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", NOT_REGULAR)
def test_a_model_path_that_is_not_a_regular_file_is_refused_in_one_line(tmp_path, kind, entry, data_dir):
    path = tmp_path / "model.npz"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    done = _run(*ENTRY_POINTS[entry](path, data_dir))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, f"exit {done.returncode}, stderr {done.stderr!r}"
    assert lines[0] == f"cnnx: error: {path}: {NOT_REGULAR[kind]}", lines[0]


def test_members_holding_more_bytes_than_the_cap_are_refused_before_they_are_read(saved_model, monkeypatch):
    monkeypatch.setattr(modelfile, "MAX_ARCHIVE_BYTES", 10_000)  # the real cap needs a 3 GB file
    reads = []
    monkeypatch.setattr(modelfile, "_read_member", lambda archive, info: reads.append(info.filename))
    with pytest.raises(CheckpointError, match="bytes, more than a cnnx file's 10,000"):
        read_archive(saved_model)
    assert not reads, f"members were read before the archive was refused: {reads}"


@pytest.fixture
def zip64_model(tmp_path, monkeypatch):
    """A model file written as zipfile writes one past 2 GiB: zip64 end records, offsets in zip64
    extras. Lowering zipfile's limit while writing does that to a small file."""
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", 1000)
        path = build_model("mlp", seed=1).save(tmp_path / "zip64.npz")
    assert path.read_bytes()[-42:-38] == b"PK\x06\x07", "no zip64 end record was written"
    return path


def test_a_model_file_with_the_zip64_records_of_one_past_2_gib_is_read(zip64_model, saved_model):
    _, arrays = read_archive(zip64_model)
    _, expected = read_archive(saved_model)
    differ = sorted(key for key in expected if not np.array_equal(arrays.get(key), expected[key]))
    assert arrays.keys() == expected.keys() and not differ, f"arrays differ: {differ}"


@pytest.mark.parametrize("field, value", [("offset", 7), ("disks", 2)])
def test_a_zip64_end_record_out_of_place_is_refused(zip64_model, field, value):
    data = bytearray(zip64_model.read_bytes())
    at = len(data) - 42 + (8 if field == "offset" else 16)  # the locator: signature, disk, offset, disks
    data[at : at + (8 if field == "offset" else 4)] = value.to_bytes(8 if field == "offset" else 4, "little")
    zip64_model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="a zip64 end record out of place"):
        read_archive(zip64_model)


def test_the_header_is_checked_before_any_array_is_read(saved_model, tmp_path, monkeypatch):
    with np.load(saved_model) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(str(arrays.pop(HEADER_KEY)))
    path = tmp_path / "newer.npz"
    np.savez(path, **arrays, **{HEADER_KEY: np.array(json.dumps({**header, "version": 99}))})  # header last
    read, real = [], modelfile._read_member
    monkeypatch.setattr(
        modelfile, "_read_member", lambda a, info: read.append(info.filename) or real(a, info)
    )
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        read_archive(path)
    assert read == [HEADER_KEY + ".npy"], f"read before the header was checked: {read}"


@pytest.mark.parametrize("dtype", ["nonsense", 5, "float16", "int32", ["float32"]], ids=repr)
def test_load_model_refuses_a_dtype_it_cannot_load_as_in_one_line(saved_model, dtype):
    with pytest.raises(ConfigError, match="a model loads as one of float32, float64, not "):
        load_model(saved_model, dtype=dtype)


def test_load_model_loads_as_another_dtype_when_asked(saved_model):
    assert str(load_model(saved_model, dtype="float64").dtype) == "float64"


# ---------------------------------------------------------------- inference in bounded memory


def _wide(backend=None, dtype="float32"):
    """Conv2D 1->64 'same' on 28x28 (50,176 values per image), a global average and a Dense to ten."""
    return build_from_architecture(
        [layer("Conv2D", in_channels=1, out_channels=64, kernel_size=3, padding="same"),
         layer("GlobalAvgPool2D"), layer("Dense", in_features=64, out_features=10)],
        backend=backend, dtype=dtype, rng=0,
    )  # fmt: skip


def _predict_proba(model, images, labels, batch_size):
    return model.predict_proba(images, batch_size=batch_size)


def _predict(model, images, labels, batch_size):
    return model.predict(images, batch_size=batch_size)


def _evaluate(model, images, labels, batch_size):
    return evaluate(model, images, labels, batch_size)


INFERENCE = {"predict_proba": _predict_proba, "predict": _predict, "evaluate": _evaluate}


def _batches_run(model, monkeypatch) -> list[int]:
    """The batch sizes ``model``'s inference passes will see, recorded as they run: a whole batch's
    forward, or the batch a group of workers is given to cut into shards (cnnx.nn.parallel)."""
    sizes, forward, logits = [], model.forward, ShardGroup.logits
    monkeypatch.setattr(model, "forward", lambda x, train=True: sizes.append(len(x)) or forward(x, train))
    monkeypatch.setattr(ShardGroup, "logits", lambda group, x: sizes.append(len(x)) or logits(group, x))
    return sizes


@pytest.mark.parametrize("entry", INFERENCE)
def test_inference_cuts_its_batches_to_the_activation_budget(entry, monkeypatch):
    model = _wide()
    monkeypatch.setattr(model_module, "INFERENCE_BYTES", 4 * model.activation_values() * 4)  # 4 images
    sizes = _batches_run(model, monkeypatch)
    images, labels = blobs(10, seed=0)
    INFERENCE[entry](model, images, labels.astype(np.int64), 1000)
    assert sizes == [4, 4, 2], f"batches of {sizes} images, for a budget of 4 images' activations"


@pytest.mark.parametrize("entry", INFERENCE)
def test_inference_within_the_budget_runs_in_the_batches_asked_for(entry, monkeypatch):
    model = build_model("seed")
    sizes = _batches_run(model, monkeypatch)
    images, labels = blobs(70, seed=0)
    INFERENCE[entry](model, images, labels.astype(np.int64), 32)
    assert sizes == [32, 32, 6], f"batches of {sizes} images, asked for 32"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_model_at_the_activation_cap_runs_in_batches_within_the_budget(dtype):
    # The shape: a convolution to as many channels as the cap allows, 'same', then a Dense.
    channels = MAX_ACTIVATION // (28 * 28)
    model = build_from_architecture(
        [layer("Conv2D", in_channels=1, out_channels=channels, kernel_size=3, padding="same"),
         layer("GlobalAvgPool2D"), layer("Dense", in_features=channels, out_features=10)],
        dtype=dtype, rng=0,
    )  # fmt: skip
    per_image = model.activation_values() * model.dtype.itemsize
    size = model.inference_batch_size(10_000)
    assert 1 <= size and size * per_image <= INFERENCE_BYTES, (size, per_image)


def test_a_layer_whose_scratch_passes_the_activation_cap_is_refused_before_it_runs(tmp_path):
    # 1,060,864 values out, within the cap, but 188 x 188 windows of 201 x 201 taps unfolded: 1.4e9.
    wide_kernel = layer("Conv2D", in_channels=1, out_channels=30, kernel_size=201, padding=180)
    with pytest.raises(CheckpointError, match="works on 1,4[0-9,]+ values per image besides its output"):
        build_from_architecture([wide_kernel], rng=0)


def _out_of_memory(*args, **kwargs):
    raise MemoryError("Unable to allocate 9.2 GiB for an array")


@pytest.mark.parametrize("entry", INFERENCE)
def test_running_out_of_memory_in_inference_is_a_resource_error(entry, monkeypatch):
    model = build_model("mlp")
    monkeypatch.setattr(model, "forward", _out_of_memory)
    monkeypatch.setattr(model, "forward_shards", _out_of_memory)  # what the workers run
    images, labels = blobs(3, seed=0)
    doing = "evaluating" if entry == "evaluate" else "predicting"
    with pytest.raises(ResourceError, match=f"^out of memory {doing} in batches of 3 images on cpu"):
        INFERENCE[entry](model, images, labels.astype(np.int64), 256)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_running_out_of_memory_in_predict_and_evaluate_is_one_error_line(
    command, saved_model, data_dir, monkeypatch
):
    monkeypatch.setattr(Sequential, "forward", _out_of_memory)
    monkeypatch.setattr(Sequential, "forward_shards", _out_of_memory)  # what the workers run
    extra = [data_dir / "t10k-images-idx3-ubyte.gz"] if command == "predict" else ["--data-dir", data_dir]
    result = CliRunner().invoke(cli, [command, str(saved_model), *map(str, extra)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, f"exit {result.exit_code}: {result.output}"
    assert lines[0].startswith("cnnx: error: out of memory "), lines[0]


def test_cupy_running_out_of_memory_counts_as_running_out_of_memory(monkeypatch):
    class OutOfMemoryError(Exception):
        pass

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(memory=types.SimpleNamespace(
        OutOfMemoryError=OutOfMemoryError)))  # fmt: skip
    monkeypatch.setitem(sys.modules, "cupy", fake)
    model = build_model("mlp")
    for method in ("forward", "forward_shards"):  # a whole batch's, or the workers'
        monkeypatch.setattr(model, method, lambda *a, **k: _raise(OutOfMemoryError("out of memory")))
    with pytest.raises(ResourceError, match="OutOfMemoryError"):
        model.predict_proba(blobs(2, seed=0)[0])


def _raise(exc):
    raise exc


# ---------------------------------------------------------------- cnnx bench


@pytest.fixture(scope="module")
def small_dataset():
    images, labels = blobs(40, seed=3)
    return Dataset(images[:32], labels[:32], images[32:], labels[32:], source="blobs")


BENCH = {
    "benchmark": lambda data, size: run_benchmark("seed", (size,), steps=1, warmup=0, repeats=1),
    "profile": lambda data, size: profile_layers("seed", size, steps=1, warmup=0),
    "epoch": lambda data, size: run_epoch_benchmark(data, model="seed", batch_size=size, repeats=1),
}


@pytest.mark.parametrize("entry", BENCH)
def test_bench_refuses_a_batch_size_the_machine_cannot_hold_before_allocating(entry, small_dataset,
                                                                             monkeypatch):  # fmt: skip
    monkeypatch.setattr(bench_memory, "machine_memory", lambda: 8 << 20)  # an 8 MiB machine
    monkeypatch.setattr(bench_timing, "synthetic_batches", _out_of_memory)  # nothing may be allocated
    with pytest.raises(ResourceError, match=r"^--batch-size 16 needs about .* GiB .* try --batch-size 2 or"):
        BENCH[entry](small_dataset, 16)


def test_bench_command_with_an_absurd_batch_size_is_one_error_line():
    result = CliRunner().invoke(cli, ["bench", "--batch-size", "10000000"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, f"exit {result.exit_code}: {result.output}"
    assert "--batch-size 10,000,000 needs about" in lines[0] and "try --batch-size" in lines[0], lines[0]


@pytest.mark.parametrize("entry", BENCH)
def test_bench_running_out_of_memory_is_a_resource_error(entry, small_dataset, monkeypatch):
    monkeypatch.setattr(bench_timing.CnnxRunner, "_steps", _out_of_memory)
    monkeypatch.setattr(bench_profile, "_cnnx_run", _out_of_memory)
    monkeypatch.setattr(bench_epoch, "_cnnx_epoch", _out_of_memory)
    with pytest.raises(ResourceError, match=r"^out of memory benchmarking batch size 8 on cpu .* 4$"):
        BENCH[entry](small_dataset, 8)
