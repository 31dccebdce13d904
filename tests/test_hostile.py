"""The hostile-input battery: corrupt data, tampered model files and nonsense options, through the CLI.

Every case must end with exactly one error line (``cnnx: error: ...`` when cnnx found the problem, and
then nothing else on stderr; click's ``Error: ...`` under its usage text for a bad option), a non-zero
exit status, no traceback, and no half-written run directory. Each table row is one case with an id:
``pytest --collect-only -q tests/test_hostile.py`` counts them.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.backends import available_backends
from cnnx.cli import cli
from cnnx.data import CSV_FILES, IDX_FILES, write_csv, write_idx
from cnnx.nn import build_model
from cnnx.nn.saving import FORMAT_VERSION, HEADER_KEY

from helpers import blobs, write_blob_idx
from zipcraft import bomb, filler, lie, rewrite

TRAIN_IMAGES, TRAIN_LABELS = IDX_FILES["train"]
FAST = ["--model", "mlp", "--epochs", "1", "--batch-size", "32", "-q"]


def assert_refused(result, fragment: str = "") -> str:
    """One error line, a non-zero exit, no traceback; returns the error line."""
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}\n{result.output}"
    assert result.exit_code != 0, f"exit status 0; output {result.output!r}"
    assert "Traceback" not in result.output, f"a traceback reached the user: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("cnnx: error:", "Error:"))]
    assert len(errors) == 1, f"expected one error line, stderr holds {lines}"
    if errors[0].startswith("cnnx: error:"):
        assert lines == errors, f"stderr has more than the error line: {lines}"
    assert fragment.lower() in errors[0].lower(), f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_idx(tmp_path_factory.mktemp("blobs"), train=160, test=40)


@pytest.fixture(scope="module")
def images_file(tmp_path_factory):
    """Two blob images as an IDX file, the input `predict` is given in the model-file cases."""
    path = tmp_path_factory.mktemp("inputs") / "two-idx3-ubyte"
    write_idx(path, blobs(2, seed=5)[0])
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return build_model("seed", seed=1).save(tmp_path_factory.mktemp("model") / "model.npz")


# ---------------------------------------------------------------- tampered model files


def _read(path):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return arrays, json.loads(str(arrays.pop(HEADER_KEY)))


def edit(change):
    """A tamper that rewrites the archive after ``change(arrays, header)``; when it returns a string, that
    string is the header text (for what ``json.dumps`` cannot write)."""

    def tamper(path):
        arrays, header = _read(path)
        text = change(arrays, header)
        arrays.setdefault(HEADER_KEY, np.array(text if isinstance(text, str) else json.dumps(header)))
        np.savez(path, **arrays)  # allow_pickle: object arrays are written, as an attacker would

    return tamper


def config(i, **values):
    return edit(lambda a, h: h["architecture"][i]["config"].update(values))


def header(**values):
    return edit(lambda a, h: h.update(values))


def array(key, value):
    def change(arrays, head):
        current = arrays.get(key, np.array(json.dumps(head)))  # the header is handed over as its text
        arrays[key] = value(current) if callable(value) else value

    return edit(change)


def _npy(shape_text: str, payload: bytes, version: bytes = b"\x01\x00") -> bytes:
    """A hand-made .npy: any header text (so it can lie about its shape), then ``payload``."""
    text = ("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text + ", }").ljust(117) + "\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(text)) + text.encode() + payload


def with_member(name, data=None, compress=zipfile.ZIP_STORED):
    """A tamper that adds one raw zip member (a duplicate name is added, not replaced)."""

    def tamper(path):
        info = zipfile.ZipInfo(name)
        info.compress_type = compress
        with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # zipfile warns of a duplicate name: that is the point of one case
            archive.writestr(info, data if data is not None else _npy("(1,)", bytes(4)))

    return tamper


def raw(write):
    return lambda path: write(path)


def _other_input_shape(path):
    model = build_model("mlp")
    model.input_shape = (4, 14, 14)  # flattens to the same 784 features, so the model itself is sound
    model.save(path)


def _compressed(path):
    arrays, head = _read(path)
    np.savez_compressed(path, **arrays, **{HEADER_KEY: np.array(json.dumps(head))})


def _huge_digits(arrays, head):
    head["architecture"][7]["config"]["out_features"] = 123456789
    return json.dumps(head).replace("123456789", "9" * 5000)  # json.dumps refuses such an int itself


# (id, tamper, a fragment of the expected message)
MODEL_CASES = [
    ("object-array-weights", array("param/0.W", np.array([{"a": 1}], dtype=object)), "Python objects"),
    ("object-array-header", array(HEADER_KEY, lambda h: np.array([str(h)], dtype=object)), "Python objects"),
    ("wrong-shape", array("param/0.W", np.zeros((2, 2), np.float32)), "shape"),
    ("transposed-weights", array("param/7.W", lambda w: w.T.copy()), "shape"),
    ("wrong-dtype-float64", array("param/0.W", lambda w: w.astype(np.float64)), "dtype float64"),
    ("wrong-dtype-int", array("param/0.W", lambda w: w.astype(np.int32)), "dtype int32"),
    ("complex-weights", array("param/0.W", lambda w: w.astype(np.complex64)), "not a plain number"),
    ("structured-weights", array("param/0.b", np.zeros(32, [("a", "<f4")])), "not a plain number"),
    ("string-weights", array("param/0.b", np.array(["x"] * 32)), "not a plain number"),
    ("nan-weights", array("param/7.W", lambda w: np.where(w > 0.1, np.nan, w)), "NaN"),
    ("inf-bias", array("param/13.b", np.full(10, np.inf, np.float32)), "infinite"),
    ("missing-weight", edit(lambda a, h: a.pop("param/13.b")), "missing"),
    ("extra-weight", array("param/1.W", np.zeros(3, np.float32)), "unexpected"),
    ("unknown-array-name", array("evil", np.zeros(3, np.float32)), "unexpected member"),
    ("unknown-layer-type", edit(lambda a, h: h["architecture"][1].update(type="os.system")), "unknown type"),
    ("layer-type-not-a-string", edit(lambda a, h: h["architecture"][1].update(type=[1])), "unknown type"),
    ("newer-format-version", header(version=FORMAT_VERSION + 1), "newer"),
    ("version-as-string", header(version="1"), "version"),
    ("version-as-bool", header(version=True), "version"),
    ("foreign-format", header(format="keras"), "not a cnnx model"),
    ("extra-config-key", config(7, activation="relu"), "unexpected key 'activation'"),
    (
        "missing-config-key",
        edit(lambda a, h: h["architecture"][7]["config"].pop("in_features")),
        "missing key",
    ),
    ("bool-size", config(13, out_features=True), "out_features must be"),
    ("float-size", config(0, out_channels=32.0), "out_channels must be"),
    ("string-size", config(0, out_channels="32"), "out_channels must be"),
    ("negative-size", config(3, out_channels=-64), "out_channels must be"),
    ("zero-stride", config(2, stride=0), "stride must be"),
    ("huge-size", config(7, out_features=10**12), "out_features must be"),
    ("huge-parameter-count", config(7, out_features=10**7), "the cap is"),
    ("thousands-of-digits", edit(_huge_digits), "not usable JSON"),
    ("huge-padding", config(0, padding=10**6), "values per image"),
    ("kernel-of-three-sides", config(0, kernel_size=[3, 3, 3]), "kernel_size must be"),
    ("unknown-init", config(0, init="zeros"), "init must be"),
    ("layers-do-not-fit", config(7, in_features=1000), "does not fit"),
    ("architecture-not-a-list", header(architecture={"0": "Conv2D"}), "list of"),
    ("empty-architecture", header(architecture=[]), "list of"),
    ("layer-not-an-object", edit(lambda a, h: h["architecture"].__setitem__(0, "Conv2D")), "{type, config}"),
    ("dtype-float16", header(dtype="float16"), "dtype must be"),
    ("dtype-object", header(dtype="object"), "dtype must be"),
    # Flat and 2-D inputs are allowed from format 3 on (an mlp's); the seed CNN does not take them.
    ("input-shape-two-sides", header(input_shape=[28, 28]), "does not fit together on inputs of 28x28"),
    ("input-shape-four-sides", header(input_shape=[1, 1, 28, 28]), "input_shape"),
    ("input-shape-negative", header(input_shape=[1, -28, 28]), "input_shape"),
    ("input-shape-huge", header(input_shape=[1, 10**6, 28]), "input_shape"),
    ("input-shape-bools", header(input_shape=[True, 28, 28]), "input_shape"),
    ("input-shape-not-fashion-mnist", raw(_other_input_shape), "takes inputs of shape"),
    ("name-not-a-string", header(name=5), "name"),
    ("name-too-long", header(name="x" * 1000), "name"),
    ("name-with-newline", header(name="seed\nTraceback"), "name"),
    ("unexpected-header-field", header(exec="import os"), "unexpected field 'exec'"),
    ("missing-header-field", edit(lambda a, h: h.pop("dtype") and None), "no field 'dtype'"),
    ("meta-not-an-object", header(meta=[1, 2]), "meta"),
    ("header-not-json", edit(lambda a, h: "{not json"), "not valid JSON"),
    ("header-a-json-list", edit(lambda a, h: "[1, 2]"), "not a cnnx model"),
    ("header-nested-too-deep", edit(lambda a, h: "[" * 100_000 + "]" * 100_000), "not usable JSON"),
    ("header-not-a-string", array(HEADER_KEY, np.zeros(3)), "not a JSON string"),
    ("header-too-long", array(HEADER_KEY, lambda h: np.array(" " * (1 << 21))), "not a JSON string"),
    ("missing-header", raw(lambda p: np.savez(p, **{"param/0.b": np.zeros(32, np.float32)})), "no __cnnx__"),
    ("truncated-archive", raw(lambda p: p.write_bytes(p.read_bytes()[:1000])), "truncated"),
    ("truncated-tail", raw(lambda p: p.write_bytes(p.read_bytes()[:-100])), "truncated"),
    ("empty-file", raw(lambda p: p.write_bytes(b"")), "truncated"),
    ("text-file", raw(lambda p: p.write_text("weights: lots")), "truncated"),
    ("compressed-archive", raw(_compressed), "compressed"),
    ("member-not-npy", with_member("README.txt", b"hello"), "unexpected member"),
    ("member-path-traversal", with_member("../../param/0.W.npy"), "unexpected member"),
    ("member-compressed", with_member("param/1.b.npy", compress=zipfile.ZIP_DEFLATED), "compressed"),
    ("duplicate-member", with_member("param/0.b.npy"), "appears twice"),
    ("array-over-the-cap", with_member("optim/m.npy", _npy("(1000000000,)", b"")), "the cap is"),
    ("array-shorter-than-declared", with_member("optim/m.npy", _npy("(1000,)", bytes(40))), "disagree"),
    ("npy-format-version-3", with_member("optim/m.npy", _npy("(1,)", bytes(4), b"\x03\x00")), "version"),
    ("npy-header-garbage", with_member("optim/m.npy", b"\x93NUMPY\x01\x00\x08\x00garbage!"), "unreadable"),
    # The zip's structure, checked before any member's data is read (tests/zipcraft.py builds these;
    # a FIFO or /dev/zero for a model file: tests/test_hostile_files.py, in a child process).
    ("members-overlap", rewrite(lambda m: bomb(2) + m), "overlap"),
    ("member-runs-into-the-next", rewrite(lie(2, size=100_000)), "overlap"),
    ("member-runs-into-the-directory", rewrite(lie(-1, size=10**9)), "central directory"),
    ("member-offset-beyond-the-data", rewrite(lie(2, offset=10**9)), "outside the data"),
    ("local-header-size-differs", rewrite(lie(3, local_size=5)), "disagree on its size"),
    ("local-header-name-differs", rewrite(lie(3, local_name="param/9.W.npy")), "disagree on its name"),
    ("member-encrypted", rewrite(lie(0, flags=0x1)), "encrypted"),
    ("more-members-than-the-cap", rewrite(lambda m: m + filler(4097 - len(m))), "more than the 4,096"),
    ("end-record-undercounts", rewrite(lambda m: m, count=12), "end record says 12"),
    ("directory-larger-than-its-count", rewrite(lambda m: m, count=1), "more than its 1 entries need"),
    ("bytes-before-the-archive", raw(lambda p: p.write_bytes(b"MZ" * 64 + p.read_bytes())), "does not end"),
    ("bytes-after-the-archive", raw(lambda p: p.write_bytes(p.read_bytes() + b"\0" * 64)), "no zip end"),
    ("a-directory", raw(lambda p: p.unlink() or p.mkdir()), "is a directory"),
    ("no-such-file", raw(lambda p: p.unlink()), "no such model file"),
]


@pytest.fixture
def tampered(saved_model, tmp_path, request):
    path = tmp_path / "model.npz"
    shutil.copyfile(saved_model, path)
    request.param(path)
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize(
    "tampered, fragment",
    [pytest.param(tamper, fragment, id=name) for name, tamper, fragment in MODEL_CASES],
    indirect=["tampered"],
)
def test_a_tampered_model_file_is_refused_with_one_line(command, tampered, fragment, data_dir, images_file):
    extra = ["--data-dir", data_dir] if command == "evaluate" else [images_file]
    line = assert_refused(invoke(command, tampered, *extra), fragment)
    assert str(tampered) in line, f"the error does not name the file: {line!r}"


def test_the_untampered_model_file_is_accepted(saved_model, images_file):
    result = invoke("predict", saved_model, images_file)
    assert result.exit_code == 0, f"the battery's base file is refused: {result.output}"


# ---------------------------------------------------------------- code in a checkpoint


class _Payload:
    """Unpickling this object calls open(marker, "w"): the marker file proves code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def booby_trapped(saved_model, tmp_path):
    """A checkpoint whose weights and header are pickled objects that create ``marker`` when loaded."""
    marker = tmp_path / "code-ran"
    arrays, head = _read(saved_model)
    arrays["param/0.W"] = np.array([_Payload(str(marker))], dtype=object)
    arrays[HEADER_KEY] = np.array([_Payload(str(marker)), json.dumps(head)], dtype=object)
    arrays["optim/steps"] = np.array([_Payload(str(marker))], dtype=object)
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    return tmp_path / "checkpoint.npz", marker


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_checkpoint_crafted_to_run_code_on_load_is_refused(command, booby_trapped, data_dir, images_file):
    path, _ = booby_trapped
    extra = ["--data-dir", data_dir] if command == "evaluate" else [images_file]
    assert_refused(invoke(command, path, *extra), "Python objects")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_checkpoint_crafted_to_run_code_does_not_run_it(command, booby_trapped, data_dir, images_file):
    path, marker = booby_trapped
    extra = ["--data-dir", data_dir] if command == "evaluate" else [images_file]
    invoke(command, path, *extra)
    assert not marker.exists(), f"loading {path.name} ran the code inside it"


def test_the_crafted_checkpoint_would_run_its_code_if_unpickled(booby_trapped):
    path, marker = booby_trapped
    with np.load(path, allow_pickle=True) as archive:
        archive["param/0.W"]  # noqa: B018 (the read is the point: it unpickles)
    assert marker.exists(), "the payload is inert, so the refusal tests above prove nothing"


# ---------------------------------------------------------------- corrupt data sets


def _idx(array, magic=None) -> bytes:
    """IDX bytes built by hand (so a case can lie in any field)."""
    magic = 0x800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + np.asarray(array, np.uint8).tobytes()


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


def rewrite(name, content):
    """A corruption that replaces file ``name`` of the data set with ``content(old bytes)``."""

    def corrupt(directory):
        path = directory / name
        path.write_bytes(content(path.read_bytes()))

    return corrupt


def _flip_middle(old: bytes) -> bytes:
    middle = len(old) // 2
    return old[:middle] + bytes(b ^ 0xFF for b in old[middle : middle + 32]) + old[middle + 32 :]


IMAGES, LABELS = blobs(160, seed=1)
IDX_CASES = [
    ("gzip-truncated", rewrite(TRAIN_IMAGES, lambda old: old[: len(old) // 2]), "corrupt or truncated gzip"),
    ("gzip-cut-in-its-header", rewrite(TRAIN_IMAGES, lambda old: old[:5]), "corrupt or truncated gzip"),
    ("gzip-bytes-flipped", rewrite(TRAIN_IMAGES, _flip_middle), "corrupt or truncated gzip"),
    (
        "gzip-bad-checksum",
        rewrite(TRAIN_LABELS, lambda old: old[:-8] + bytes(8)),
        "corrupt or truncated gzip",
    ),
    (
        "gz-name-not-gzip",
        rewrite(TRAIN_IMAGES, lambda old: b"definitely not gzip"),
        "corrupt or truncated gzip",
    ),
    ("empty-file", rewrite(TRAIN_IMAGES, lambda old: b""), "too short"),
    ("bad-magic", rewrite(TRAIN_IMAGES, lambda old: _gz(_idx(IMAGES, magic=0x0D0C))), "magic number"),
    ("header-cut-short", rewrite(TRAIN_IMAGES, lambda old: _gz(struct.pack(">II", 0x803, 160))), "truncated"),
    ("pixels-cut-short", rewrite(TRAIN_IMAGES, lambda old: _gz(_idx(IMAGES)[:-100])), "truncated"),
    (
        "bytes-after-the-pixels",
        rewrite(TRAIN_IMAGES, lambda old: _gz(_idx(IMAGES) + b"xx")),
        "unexpected bytes",
    ),
    ("images-32x32", rewrite(TRAIN_IMAGES, lambda old: _gz(_idx(np.zeros((160, 32, 32))))), "expected 28x28"),
    (
        "billions-of-images-declared",
        rewrite(TRAIN_IMAGES, lambda old: _gz(struct.pack(">IIII", 0x803, 10**9, 28, 28) + bytes(784))),
        "truncated",
    ),
    ("label-10", rewrite(TRAIN_LABELS, lambda old: _gz(_idx(np.full(160, 10)))), "outside 0-9"),
    ("label-255", rewrite(TRAIN_LABELS, lambda old: _gz(_idx(np.full(160, 255)))), "outside 0-9"),
    ("fewer-labels-than-images", rewrite(TRAIN_LABELS, lambda old: _gz(_idx(LABELS[:150]))), "150 labels"),
    ("images-and-labels-swapped", rewrite(TRAIN_IMAGES, lambda old: _gz(_idx(LABELS))), "swapped"),
    ("a-file-missing", lambda d: (d / IDX_FILES["test"][1]).unlink(), "incomplete"),
    (
        "a-directory-for-a-file",
        lambda d: (d / TRAIN_IMAGES).unlink() or (d / TRAIN_IMAGES).mkdir(),
        "incomplete",
    ),
    (
        "empty-training-set",
        lambda d: (
            rewrite(TRAIN_IMAGES, lambda o: _gz(_idx(np.zeros((0, 28, 28)))))(d)
            or rewrite(TRAIN_LABELS, lambda o: _gz(_idx(np.zeros(0))))(d)
        ),
        "no images",
    ),
    (
        "empty-test-set",
        lambda d: (
            rewrite(IDX_FILES["test"][0], lambda o: _gz(_idx(np.zeros((0, 28, 28)))))(d)
            or rewrite(IDX_FILES["test"][1], lambda o: _gz(_idx(np.zeros(0))))(d)
        ),
        "no images",
    ),
]

TRAIN_CSV = CSV_FILES["train"]


def csv_line(number, change):
    """A corruption of line ``number`` (1 is the header) of the training CSV: ``change(fields)``."""

    def content(old: bytes) -> bytes:
        lines = old.decode().split("\n")
        fields = lines[number - 1].split(",")
        lines[number - 1] = ",".join(change(fields))
        return "\n".join(lines).encode()

    return rewrite(TRAIN_CSV, content)


def _set(index, value):
    return lambda fields: fields[:index] + [value] + fields[index + 1 :]


CSV_CASES = [
    ("csv-missing-column", csv_line(3, lambda f: f[:-1]), "line 3: 784 fields"),
    ("csv-extra-column", csv_line(3, lambda f: f + ["0"]), "line 3: 786 fields"),
    ("csv-text-in-a-pixel", csv_line(4, _set(5, "abc")), "pixel5 = 'abc'"),
    ("csv-empty-pixel", csv_line(4, _set(5, "")), "pixel5 = ''"),
    ("csv-negative-pixel", csv_line(4, _set(5, "-1")), "pixel5 = -1 is outside 0-255"),
    ("csv-fractional-pixel", csv_line(4, _set(5, "12.5")), "pixel5 = '12.5'"),
    ("csv-pixel-256", csv_line(4, _set(5, "256")), "outside 0-255"),
    ("csv-label-10", csv_line(2, _set(0, "10")), "label 10 is outside 0-9"),
    ("csv-label-text", csv_line(2, _set(0, "shirt")), "label = 'shirt'"),
    ("csv-no-header", csv_line(1, lambda f: ["0"] * 785), "missing header row"),
    ("csv-wrong-header", csv_line(1, _set(0, "id")), "unexpected header row"),
    ("csv-empty-file", rewrite(TRAIN_CSV, lambda old: b""), "empty file"),
    ("csv-header-only", rewrite(TRAIN_CSV, lambda old: old.split(b"\n")[0] + b"\n"), "no data rows"),
    ("csv-not-text", rewrite(TRAIN_CSV, lambda old: b"\xff\xfe\x00" + old), "not a text file"),
]


@pytest.fixture
def broken_data(tmp_path, request):
    """A fresh copy of the blob data set (IDX, or CSV for the csv-* cases) with one corruption applied."""
    directory = tmp_path / "data"
    directory.mkdir()
    if request.node.callspec.id.startswith("csv-"):
        for split, n, seed in (("train", 160, 1), ("test", 40, 2)):
            write_csv(directory / CSV_FILES[split], *blobs(n, seed))
    else:
        write_blob_idx(directory)
    request.param(directory)
    return directory


@pytest.mark.parametrize(
    "broken_data, fragment",
    [pytest.param(corrupt, fragment, id=name) for name, corrupt, fragment in IDX_CASES + CSV_CASES],
    indirect=["broken_data"],
)
def test_training_on_a_corrupt_data_set_is_refused_with_one_line(broken_data, fragment, tmp_path):
    assert_refused(invoke("train", *FAST, "--data-dir", broken_data, "--out", tmp_path / "run"), fragment)


@pytest.mark.parametrize(
    "broken_data, fragment",
    [pytest.param(corrupt, fragment, id=name) for name, corrupt, fragment in IDX_CASES + CSV_CASES],
    indirect=["broken_data"],
)
def test_a_corrupt_data_set_leaves_no_run_directory(broken_data, fragment, tmp_path):
    invoke("train", *FAST, "--data-dir", broken_data, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists(), f"a refused run left {sorted((tmp_path / 'run').iterdir())}"


@pytest.mark.parametrize(
    "broken_data, fragment",
    [pytest.param(corrupt, fragment, id=name) for name, corrupt, fragment in IDX_CASES + CSV_CASES],
    indirect=["broken_data"],
)
def test_evaluating_on_a_corrupt_data_set_is_refused_with_one_line(broken_data, fragment, saved_model):
    assert_refused(invoke("evaluate", saved_model, "--data-dir", broken_data), fragment)


# ---------------------------------------------------------------- images to classify


def _png(shape):
    def write(path):
        import matplotlib.image

        matplotlib.image.imsave(path, np.zeros(shape), cmap="gray")

    return write


def _valid_png_prefix(path):
    _png((28, 28))(path)
    path.write_bytes(path.read_bytes()[:60])


def _file(name, content):
    """An input file ``name`` holding ``content`` (bytes, or a writer taking the path)."""

    def make(directory):
        path = directory / name
        content(path) if callable(content) else path.write_bytes(content)
        return path

    return make


def _csv_text(rows) -> bytes:
    header = ",".join(["label"] + [f"pixel{i}" for i in range(1, 785)])
    return "\n".join([header, *rows]).encode() + b"\n"


PREDICT_CASES = [
    ("png-4x4", _file("tiny.png", _png((4, 4))), "too small"),
    ("png-28x1", _file("thin.png", _png((28, 1))), "too small"),
    ("png-garbage", _file("noise.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an image"),
    ("png-truncated", _file("cut.png", _valid_png_prefix), "truncated"),
    ("png-empty", _file("empty.png", b""), "not an image"),
    ("csv-missing-column", _file("rows.csv", _csv_text([",".join(["0"] * 784)])), "784 fields"),
    ("csv-extra-column", _file("rows.csv", _csv_text([",".join(["0"] * 786)])), "786 fields"),
    ("csv-text-in-a-pixel", _file("rows.csv", _csv_text(["0,abc" + ",0" * 783])), "pixel1 = 'abc'"),
    ("csv-empty", _file("rows.csv", b""), "empty file"),
    ("idx-32x32", _file("big-idx3-ubyte", _idx(np.zeros((2, 32, 32)))), "expected 28x28"),
    ("idx-labels-file", _file("labels-idx1-ubyte", _idx(np.zeros(2))), "labels file"),
    ("idx-truncated", _file("cut-idx3-ubyte", _idx(np.zeros((2, 28, 28)))[:-10]), "truncated"),
    ("idx-no-images", _file("none-idx3-ubyte", _idx(np.zeros((0, 28, 28)))), "holds no images"),
    (
        "gzip-corrupt",
        _file("x-idx3-ubyte.gz", _gz(_idx(np.zeros((2, 28, 28))))[:-20]),
        "corrupt or truncated",
    ),
    ("unknown-file-type", _file("notes.txt", b"a shirt"), "unsupported file type"),
    ("no-such-file", lambda directory: directory / "absent.png", "absent.png"),
    ("a-directory-of-no-pictures", lambda directory: directory, "no pictures"),
]


@pytest.mark.parametrize(
    "make, fragment", [pytest.param(make, fragment, id=name) for name, make, fragment in PREDICT_CASES]
)
def test_predicting_an_unusable_image_file_is_refused_with_one_line(make, fragment, saved_model, tmp_path):
    assert_refused(invoke("predict", saved_model, make(tmp_path)), fragment)


# ---------------------------------------------------------------- nonsense options

USAGE, USER = 2, 1  # click's exit status for a usage error; cnnx's for a problem it found
GPU_USABLE = available_backends()["gpu"] is None

# (id, arguments after the command, expected exit status, a fragment of the error line)
TRAIN_OPTION_CASES = [
    ("negative-epochs", ["--epochs", "-1"], USAGE, "--epochs"),
    ("zero-epochs", ["--epochs", "0"], USAGE, "--epochs"),
    ("epochs-not-a-number", ["--epochs", "many"], USAGE, "--epochs"),
    ("epochs-beyond-any-run", ["--epochs", "1000000"], USAGE, "--epochs"),
    ("lr-zero", ["--lr", "0"], USAGE, "--lr"),
    ("lr-nan", ["--lr", "nan"], USAGE, "--lr"),
    ("lr-negative", ["--lr", "-0.1"], USAGE, "--lr"),
    ("lr-infinite", ["--lr", "inf"], USAGE, "--lr"),
    ("batch-size-zero", ["--batch-size", "0"], USAGE, "--batch-size"),
    ("batch-size-negative", ["--batch-size", "-32"], USAGE, "--batch-size"),
    ("unknown-device", ["--device", "tpu"], USAGE, "--device"),
    ("limit-zero", ["--limit", "0"], USAGE, "--limit"),
    ("limit-negative", ["--limit", "-5"], USAGE, "--limit"),
    ("unknown-model", ["--model", "vgg99"], USAGE, "--model"),
    ("unknown-optimizer", ["--optimizer", "rmsprop"], USAGE, "--optimizer"),
    ("unknown-dtype", ["--dtype", "float16"], USAGE, "--dtype"),
    ("seed-not-a-number", ["--seed", "lucky"], USAGE, "--seed"),
    ("seed-negative", ["--seed", "-1"], USAGE, "--seed"),
    ("unknown-option", ["--turbo"], USAGE, "--turbo"),
    ("nonexistent-data-dir", ["--data-dir", "{tmp}/nowhere"], USER, "nowhere"),
    ("data-dir-is-a-file", ["--data-dir", "{tmp}/a-file"], USAGE, "--data-dir"),
    ("out-is-a-file", ["--out", "{tmp}/a-file"], USAGE, "--out"),
    ("batch-size-larger-than-the-data-set", ["--batch-size", "1000"], USER, "larger than the training set"),
    ("checkpoint-every-zero", ["--checkpoint-every", "0"], USAGE, "--checkpoint-every"),
    ("unknown-divergence-policy", ["--on-divergence", "explode"], USAGE, "--on-divergence"),
    ("resume-a-nonexistent-run", ["--resume", "{tmp}/nowhere"], USER, "no checkpoint"),
    ("resume-a-directory-without-a-checkpoint", ["--resume", "{tmp}"], USER, "no checkpoint"),
    ("resume-with-out", ["--resume", "{tmp}", "--out", "{tmp}/run"], USER, "--out cannot be combined"),
]


def _args(args, tmp_path, data_dir):
    (tmp_path / "a-file").write_text("not a directory")
    filled = [str(arg).format(tmp=tmp_path) for arg in args]
    defaults = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
    out = [] if "--out" in args or "--resume" in args else ["--out", str(tmp_path / "run")]
    return [*filled, *defaults, *out]


@pytest.mark.parametrize(
    "args, status, fragment",
    [pytest.param(args, status, fragment, id=name) for name, args, status, fragment in TRAIN_OPTION_CASES],
)
def test_a_nonsense_train_option_is_refused_with_one_line(args, status, fragment, tmp_path, data_dir):
    result = invoke("train", *FAST, *_args(args, tmp_path, data_dir))
    assert_refused(result, fragment)
    assert result.exit_code == status, f"exit status {result.exit_code}, expected {status}"


@pytest.mark.parametrize("args", [pytest.param(args, id=name) for name, args, _, _ in TRAIN_OPTION_CASES])
def test_a_nonsense_train_option_leaves_no_run_directory(args, tmp_path, data_dir):
    invoke("train", *FAST, *_args(args, tmp_path, data_dir))
    assert not (tmp_path / "run").exists(), "a refused train left a run directory"


def test_a_refused_train_leaves_a_given_empty_out_directory_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    invoke("train", *FAST, "--data-dir", tmp_path / "nowhere", "--out", out)
    assert list(out.iterdir()) == [], f"the empty run directory now holds {list(out.iterdir())}"


@pytest.mark.skipif(GPU_USABLE, reason="a usable GPU is present, so --device gpu succeeds here")
def test_a_gpu_request_without_a_gpu_is_refused_with_one_line(tmp_path, data_dir, saved_model, images_file):
    assert_refused(invoke("predict", saved_model, images_file, "--device", "gpu"), "GPU backend unavailable")


# (id, command line with {model}, {images}, {data}, {tmp} filled in, a fragment of the error line)
OTHER_OPTION_CASES = [
    ("predict-top-zero", ["predict", "{model}", "{images}", "--top", "0"], "--top"),
    ("predict-top-negative", ["predict", "{model}", "{images}", "--top", "-3"], "--top"),
    ("predict-no-files", ["predict", "{model}"], "FILE"),
    ("predict-unknown-device", ["predict", "{model}", "{images}", "--device", "tpu"], "--device"),
    ("evaluate-limit-zero", ["evaluate", "{model}", "--data-dir", "{data}", "--limit", "0"], "--limit"),
    ("evaluate-unknown-device", ["evaluate", "{model}", "--device", "quantum"], "--device"),
    ("evaluate-no-model", ["evaluate"], "MODEL"),
    ("evaluate-nonexistent-data-dir", ["evaluate", "{model}", "--data-dir", "{tmp}/nowhere"], "nowhere"),
    ("unknown-command", ["fly"], "fly"),
]


@pytest.mark.parametrize(
    "args, fragment",
    [pytest.param(args, fragment, id=name) for name, args, fragment in OTHER_OPTION_CASES],
)
def test_a_nonsense_option_of_the_other_commands_is_refused_with_one_line(
    args, fragment, tmp_path, data_dir, saved_model, images_file
):
    places = {"model": saved_model, "images": images_file, "data": data_dir, "tmp": tmp_path}
    assert_refused(invoke(*[arg.format(**places) for arg in args]), fragment)


# ---------------------------------------------------------------- the real process


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory, saved_model, data_dir):
    """Command lines for ``python -m cnnx`` whose real stderr must be exactly one line."""
    here = tmp_path_factory.mktemp("real")
    truncated = here / "truncated.npz"
    truncated.write_bytes(saved_model.read_bytes()[:2000])
    broken = here / "data"
    shutil.copytree(data_dir, broken)
    rewrite(TRAIN_IMAGES, lambda old: old[: len(old) // 2])(broken)
    return {
        "truncated-model": ["predict", truncated, data_dir / IDX_FILES["test"][0]],
        "corrupt-gzip": ["train", *FAST, "--data-dir", broken, "--out", here / "run"],
        "nonexistent-data-dir": ["evaluate", saved_model, "--data-dir", here / "nowhere"],
    }


def _run_module(args):
    command = [sys.executable, "-m", "cnnx", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["truncated-model", "corrupt-gzip", "nonexistent-data-dir"])
def test_the_real_stderr_is_one_error_line(case, real_cases):
    done = _run_module(real_cases[case])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, f"exit status {done.returncode}: {done.stderr}"
    assert len(lines) == 1 and lines[0].startswith("cnnx: error: "), f"stderr: {done.stderr!r}"


def test_the_real_process_refuses_a_code_running_checkpoint_without_running_it(booby_trapped, images_file):
    path, marker = booby_trapped
    done = _run_module(["predict", path, images_file])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, f"exit {done.returncode}, stderr {done.stderr!r}"
    assert not marker.exists(), "the crafted checkpoint ran its code in the real process"


def test_the_real_usage_error_has_one_error_line(tmp_path):
    done = _run_module(["train", "--epochs", "-1", "--out", tmp_path / "run"])
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 2 and len(errors) == 1, f"exit {done.returncode}, stderr {done.stderr!r}"
    assert "Traceback" not in done.stderr, f"stderr: {done.stderr!r}"


# ---------------------------------------------------------------- resuming from a tampered checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A one-epoch run of the seed CNN on the blobs: its checkpoint holds the layers MODEL_CASES edit."""
    out = tmp_path_factory.mktemp("resume") / "run"
    result = invoke("train", "--model", "seed", "--epochs", "1", "--batch-size", "32", "-q",
                    "--data-dir", data_dir, "--out", out)  # fmt: skip
    assert result.exit_code == 0, f"the run to resume failed: {result.output}"
    return out


def meta(change):
    """A tamper of the checkpoint's ``meta``: ``change(meta)``."""
    return edit(lambda a, h: change(h["meta"]) and None)


def settings(**values):
    return meta(lambda m: m["settings"].update(values))


def shuffle_state(**values):
    """A tamper of the shuffle generator's saved state: its inner ``state`` dict updated."""
    return meta(lambda m: m["rng_state"]["state"].update(values))


EARLY = {"best_loss": None, "best_epoch": 0, "waited": 0}  # early stopping's state before any epoch


def early_state(**values):
    """A checkpoint given early stopping's state, ``values`` changed."""
    return meta(lambda m: m.update(early={**EARLY, **values}))


def _early_nan(arrays, head):
    head["meta"]["early"] = EARLY
    return json.dumps(head).replace('"best_loss": null', '"best_loss": NaN')  # JSON itself has no NaN


# Where --resume finds the problem before the model file reader does, it says so in its own words.
RESUME_FRAGMENTS = {
    "input-shape-not-fashion-mnist": "not a training checkpoint",
    "input-shape-two-sides": "input shape differs",
    "a-directory": "no checkpoint",
    "no-such-file": "no checkpoint",
    "huge-padding": "architecture differs",  # the run compares the file with its preset before building
    "layers-do-not-fit": "architecture differs",
}
CHECKPOINT_CASES = [
    ("not-a-checkpoint", meta(lambda m: m.pop("kind")), "not a training checkpoint"),
    ("epoch-negative", meta(lambda m: m.update(epoch=-1)), "epoch"),
    ("epoch-a-bool", meta(lambda m: m.update(epoch=True)), "epoch"),
    ("step-a-float", meta(lambda m: m.update(step=5.0)), "step"),
    ("history-not-a-list", meta(lambda m: m.update(history="long")), "history"),
    ("history-rows-without-losses", meta(lambda m: m.update(history=[{"epoch": "one"}])), "history"),
    ("history-loss-a-string", meta(lambda m: m["history"][0].update(test_loss="low")), "test_loss"),
    ("history-epochs-out-of-order", meta(lambda m: m["history"][0].update(epoch=7)), "epoch must be 1"),
    ("settings-epochs-astronomical", settings(epochs=10**30), "epochs"),
    ("partial-sum-negative", meta(lambda m: m["partial"].update(loss_sum=-1.0)), "partial.loss_sum"),
    ("settings-missing", meta(lambda m: m.pop("settings")), "settings"),
    ("rng-state-not-an-object", meta(lambda m: m.update(rng_state=[1, 2])), "rng_state"),
    ("optimizer-not-an-object", meta(lambda m: m.update(optimizer="adam")), "optimizer"),
    ("optimizer-state-nan", array("optim/m/0.W", lambda v: np.full_like(v, np.nan)), "NaN"),
    ("optimizer-state-object", array("optim/steps", np.array([{"x": 1}], dtype=object)), "Python objects"),
    ("settings-unknown-model", settings(model="vgg99"), "model must be a preset (seed, mlp, "),
    ("settings-batch-size-zero", settings(batch_size=0), "batch_size must be a whole number >= 1"),
    ("settings-batch-size-a-string", settings(batch_size="32"), "batch_size must be a whole number"),
    ("settings-lr-a-string", settings(lr="fast"), "lr must be a positive finite number"),
    ("settings-limit-negative", settings(limit=-5), "limit"),
    ("unknown-optimizer", settings(optimizer="rmsprop"), "optimizer must be one of sgd, momentum, adam"),
    (
        "rng-state-of-another-generator",
        meta(lambda m: m.update(rng_state={"bit_generator": "MT19937"})),
        "shuffle",
    ),
    ("position-beyond-the-epoch", meta(lambda m: m.update(batch=10**6)), "does not fit"),
    ("optimizer-steps-missing", edit(lambda a, h: a.pop("optim/steps") is None), "step count"),
    ("optimizer-steps-negative", array("optim/steps", np.array(-4)), "step count"),
    ("optimizer-moment-wrong-shape", array("optim/m/0.W", np.zeros((2, 2), np.float32)), "m/0.W"),
    ("optimizer-moment-missing", edit(lambda a, h: a.pop("optim/v/13.b") is None), "v/13.b"),
    ("optimizer-unknown-slot", array("optim/zzz/0.W", np.zeros(3, np.float32)), "unexpected entry"),
    ("unexpected-layer-buffer", array("buffer/0.mean", np.zeros(3, np.float32)), "unexpected ['0.mean']"),
    ("settings-model-not-a-layer-list", settings(model=["seed"]), "layer 0 of the architecture is not"),
    ("settings-seed-a-string", settings(seed="x"), "seed must be a whole number"),
    ("rng-state-beyond-128-bits", shuffle_state(state=2**200), "'rng_state' must be the shuffle"),
    ("rng-state-negative", shuffle_state(inc=-1), "'rng_state' must be the shuffle"),
    ("rng-state-increment-even", shuffle_state(inc=2), "'rng_state' must be the shuffle"),
    ("rng-state-has-uint32-two", meta(lambda m: m["rng_state"].update(has_uint32=2)), "'rng_state'"),
    ("rng-state-uinteger-a-string", meta(lambda m: m["rng_state"].update(uinteger="0")), "'rng_state'"),
    ("rng-state-an-extra-key", meta(lambda m: m["rng_state"].update(seed=1)), "'rng_state'"),
    (
        "augment-rng-state-beyond-128-bits",
        meta(lambda m: m.update(augment_rng_state={**m["rng_state"], "state": {"state": 2**200, "inc": 1}})),
        "'augment_rng_state' must be",
    ),
    ("augment-rng-state-a-list", meta(lambda m: m.update(augment_rng_state=[1])), "'augment_rng_state'"),
    ("early-a-list", meta(lambda m: m.update(early=[1, 2])), "'early' must be"),
    ("early-best-loss-a-string", early_state(best_loss="low"), "'early' must be"),
    ("early-best-loss-nan", edit(_early_nan), "'early' must be"),
    ("early-best-epoch-beyond-the-run", early_state(best_epoch=10**6), "'early' must be"),
    ("early-waited-negative", early_state(waited=-1), "'early' must be"),
    ("early-missing-a-field", meta(lambda m: m.update(early={"best_loss": None})), "'early' must be"),
]


def _snapshot(directory):
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


@pytest.fixture
def tampered_run(finished_run, tmp_path, request):
    """A copy of the finished run whose checkpoint got one tamper; returns (run dir, its files' bytes)."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    request.param(out / "model.npz")
    return out, _snapshot(out)


RESUME_CASES = [
    pytest.param(tamper, RESUME_FRAGMENTS.get(name, fragment), id=name)
    for name, tamper, fragment in MODEL_CASES + CHECKPOINT_CASES
]


@pytest.mark.parametrize("tampered_run, fragment", RESUME_CASES, indirect=["tampered_run"])
def test_resuming_from_a_tampered_checkpoint_is_refused_with_one_line(tampered_run, fragment, data_dir):
    out, _ = tampered_run
    assert_refused(invoke("train", "--resume", out, "--epochs", "2", "--data-dir", data_dir, "-q"), fragment)


@pytest.mark.parametrize("tampered_run, fragment", RESUME_CASES, indirect=["tampered_run"])
def test_a_refused_resume_leaves_the_run_directory_as_it_was(tampered_run, fragment, data_dir):
    out, before = tampered_run
    invoke("train", "--resume", out, "--epochs", "2", "--data-dir", data_dir, "-q")
    after = _snapshot(out)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a refused resume changed {changed}"
