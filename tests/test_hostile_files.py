"""Hostile files, beyond the table of tests/test_hostile.py: a model path that is not a regular file at
every entry point that reads one, the archive caps, the order of the checks, and the model-loading
options.

What could block or read for ever (a FIFO, /dev/zero) runs in a child process with a time and memory
limit, so that a regression fails its test instead of hanging the suite or exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from cnnx.errors import CheckpointError, ConfigError
from cnnx.io import load_model, modelfile, read_archive
from cnnx.nn import build_model
from cnnx.nn.saving import HEADER_KEY

from helpers import write_blob_idx

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
