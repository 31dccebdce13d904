"""The data layer: readers and writers, discovery order, the verified download, subsets, scaling."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error

import numpy as np
import pytest

from cnnx import data
from cnnx.data import readers, sources
from cnnx.errors import ConfigError, DataError

TRAIN_N, TEST_N = 60, 20
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
IDX_NAMES += ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _labels(n):
    return (np.arange(n) % 10).astype(np.uint8)


def _idx_bytes(array, magic=None):
    """An IDX payload built by hand, so that the reader is not checked against its own writer."""
    magic = 0x800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _synthetic():
    return {
        IDX_NAMES[0]: _images(TRAIN_N, 1),
        IDX_NAMES[1]: _labels(TRAIN_N),
        IDX_NAMES[2]: _images(TEST_N, 2),
        IDX_NAMES[3]: _labels(TEST_N),
    }


def _write_idx_dir(directory, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in _synthetic().items():
        data.write_idx(directory / (name if gz else name.removesuffix(".gz")), array)
    return directory


def _write_csv_dir(directory):
    directory.mkdir(parents=True, exist_ok=True)
    arrays = list(_synthetic().values())
    data.write_csv(directory / "fashion-mnist_train.csv", arrays[0], arrays[1])
    data.write_csv(directory / "fashion-mnist_test.csv", arrays[2], arrays[3])
    return directory


def _assert_one_line_error_naming(path, read):
    with pytest.raises(DataError) as info:
        read(path)
    message = str(info.value)
    assert path.name in message and "\n" not in message, f"message was: {message!r}"
    return message


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Discovery pointed at empty folders under tmp_path; no environment override, fake mirrors."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(sources, "MIRRORS", ("http://mirror-a/", "http://mirror-b/"))
    return {"cache": tmp_path / "xdg" / "cnnx" / "fashion-mnist", "system": tmp_path / "system"}


# ---------------------------------------------------------------- readers and writers


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("array", [_images(5), _labels(7)], ids=["images", "labels"])
def test_idx_round_trip_preserves_the_array(tmp_path, suffix, array):
    path = tmp_path / f"file-ubyte{suffix}"
    data.write_idx(path, array)
    assert np.array_equal(data.read_idx(path), array)


def test_read_idx_recognises_gzip_by_content_whatever_the_name(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(gzip.compress(_idx_bytes(_images(3))))
    assert np.array_equal(data.read_idx(path), _images(3))


def test_a_gzip_that_unpacks_beyond_the_cap_is_refused_without_unpacking_it_all(tmp_path, monkeypatch):
    # The real cap is 512 MiB; a small one proves the same code path without allocating that much.
    monkeypatch.setattr(readers, "MAX_UNPACKED_BYTES", 10_000)
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(10_000_000)))  # 10 MB of zeros packs into about 10 kB
    with pytest.raises(DataError, match=r"bomb-idx3-ubyte\.gz: unpacks to more than") as caught:
        data.read_idx(path)
    assert "\n" not in str(caught.value), f"not one line: {caught.value}"


def test_a_gzip_exactly_at_the_cap_is_read(tmp_path, monkeypatch):
    payload = _idx_bytes(_images(3))
    monkeypatch.setattr(readers, "MAX_UNPACKED_BYTES", len(payload))
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    assert np.array_equal(data.read_idx(path), _images(3)), "a file of exactly the cap was refused or changed"


def test_csv_round_trip_preserves_images_and_labels(tmp_path):
    path = tmp_path / "fashion-mnist_test.csv"
    data.write_csv(path, _images(12), _labels(12))
    images, labels = data.read_csv(path)
    assert np.array_equal(images, _images(12)) and np.array_equal(labels, _labels(12))


def test_write_csv_produces_the_kaggle_layout(tmp_path):
    path = tmp_path / "fashion-mnist_test.csv"
    data.write_csv(path, np.full((1, 28, 28), 7, np.uint8), np.array([3], np.uint8))
    header, row = path.read_text().splitlines()
    assert header.startswith("label,pixel1,pixel2,") and row == "3," + ",".join(["7"] * 784)


_RAW, _GZ = "bad-idx-ubyte", "bad-idx-ubyte.gz"
_GZIPPED = gzip.compress(_idx_bytes(_images(3)))
MALFORMED_IDX = {
    "empty": (_RAW, b""),
    "unknown magic": (_RAW, _idx_bytes(_images(2), magic=0x00000804)),
    "truncated header": (_RAW, _idx_bytes(_images(2))[:10]),
    "truncated pixels": (_RAW, _idx_bytes(_images(2))[:-1]),
    "extra bytes": (_RAW, _idx_bytes(_images(2)) + b"\0\0"),
    "header count too large": (_RAW, struct.pack(">4I", 0x803, 3, 28, 28) + _images(2).tobytes()),
    "not 28x28": (_RAW, _idx_bytes(np.zeros((2, 27, 28), np.uint8))),
    "label above 9": (_GZ, gzip.compress(_idx_bytes(np.array([1, 10, 2], np.uint8)))),
    "truncated gzip": (_GZ, _GZIPPED[: len(_GZIPPED) // 2]),
    "corrupt gzip": (_GZ, _GZIPPED[:20] + bytes(b ^ 0xFF for b in _GZIPPED[20:40]) + _GZIPPED[40:]),
    "gzip name, raw content": (_GZ, _idx_bytes(_labels(3))),
}


@pytest.mark.parametrize("name, content", MALFORMED_IDX.values(), ids=MALFORMED_IDX.keys())
def test_malformed_idx_raises_one_line_data_error_naming_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    _assert_one_line_error_naming(tmp_path / name, data.read_idx)


def test_missing_idx_file_raises_data_error_naming_it(tmp_path):
    _assert_one_line_error_naming(tmp_path / "absent-idx3-ubyte.gz", data.read_idx)


def _csv(rows, header=True):
    head = ["label," + ",".join(f"pixel{i}" for i in range(1, 785))] if header else []
    return "\n".join(head + rows) + "\n"


GOOD_ROW = "1," + ",".join(["0"] * 784)
MALFORMED_CSV = {
    "empty file": ("", "empty"),
    "blank lines only": ("\n\n", "empty"),
    "missing header": (_csv([GOOD_ROW], header=False), "line 1"),
    "header only": (_csv([]), "no data rows"),
    "too few fields": (_csv([GOOD_ROW, "1,2,3"]), "line 3"),
    "too many fields": (_csv([GOOD_ROW + ",0"]), "line 2"),
    "non-numeric pixel": (_csv([GOOD_ROW, GOOD_ROW.replace(",0", ",x", 1)]), "line 3"),
    "non-numeric label": (_csv(["T-shirt" + GOOD_ROW[1:]]), "line 2"),
    "pixel above 255": (_csv([GOOD_ROW[:-1] + "256"]), "pixel784"),
    "pixel far above 255": (_csv([GOOD_ROW, GOOD_ROW[:-1] + "99999"]), "line 3"),
    "negative pixel": (_csv([GOOD_ROW.replace(",0", ",-1", 1)]), "line 2"),
    "label above 9": (_csv([GOOD_ROW, GOOD_ROW, "12" + GOOD_ROW[1:]]), "line 4"),
}


@pytest.mark.parametrize("content, where", MALFORMED_CSV.values(), ids=MALFORMED_CSV.keys())
def test_malformed_csv_raises_one_line_data_error_naming_file_and_place(tmp_path, content, where):
    path = tmp_path / "fashion-mnist_train.csv"
    path.write_text(content)
    assert where in _assert_one_line_error_naming(path, data.read_csv)


# ---------------------------------------------------------------- CSV in bounded memory


@pytest.mark.parametrize("chunk", [1000, 4099, 1 << 20], ids=["rows-cut-in-pieces", "odd-chunk", "one-chunk"])
def test_a_csv_reads_the_same_however_its_rows_fall_across_chunks(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(readers, "CHUNK_BYTES", chunk)
    path = tmp_path / "fashion-mnist_test.csv"
    data.write_csv(path, _images(30), _labels(30))
    images, labels = data.read_csv(path)
    assert np.array_equal(images, _images(30)), f"pixels differ with {chunk}-byte chunks"
    assert np.array_equal(labels, _labels(30)), f"labels differ with {chunk}-byte chunks"


@pytest.mark.parametrize(
    "rewrite",
    [lambda t: t.replace(b"\n", b"\r\n"), lambda t: t.replace(b",", b", "), lambda t: b"\xef\xbb\xbf" + t,
     lambda t: t.rstrip(b"\n"), lambda t: t + b"\n \n\t\n" * 1000],
    ids=["crlf", "spaces", "byte-order-mark", "no-final-newline", "blank-lines-at-the-end"],
)  # fmt: skip
def test_a_csv_in_another_legal_form_reads_the_same(tmp_path, monkeypatch, rewrite):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 4099)
    path = tmp_path / "fashion-mnist_test.csv"
    data.write_csv(path, _images(12), _labels(12))
    path.write_bytes(rewrite(path.read_bytes()))
    images, labels = data.read_csv(path)
    assert np.array_equal(images, _images(12)) and np.array_equal(labels, _labels(12))


def test_a_blank_line_between_rows_is_refused_at_its_line_even_after_a_chunk_of_blanks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1000)
    path = tmp_path / "rows.csv"
    path.write_text(_csv([GOOD_ROW, GOOD_ROW]) + "\n" * 5000 + GOOD_ROW + "\n")
    assert "line 4: 1 fields, expected 785" in _assert_one_line_error_naming(path, data.read_csv)


def test_a_line_longer_than_any_row_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1000)
    path = tmp_path / "one-line.csv.gz"
    path.write_bytes(gzip.compress(_csv([GOOD_ROW]).encode() + b"7" * 10_000_000))
    message = _assert_one_line_error_naming(path, data.read_csv)
    assert "line 3: longer than 65,536 bytes" in message, message


def _peak_bytes(read, path) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        read(path)
    except DataError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "tail, reads",
    [(b"\n" * 30_000_000, True), (b"1,2\n" * 6_000_000, False)],
    ids=["thirty-million-blank-lines", "six-million-short-lines"],
)
def test_millions_of_csv_lines_are_parsed_in_memory_far_below_their_size(tmp_path, monkeypatch, tail, reads):
    # Within the unpacked cap, yet splitting it into lines at once costs ten times its size.
    monkeypatch.setattr(readers, "CHUNK_BYTES", 1 << 20)
    text = _csv([GOOD_ROW]).encode() + tail
    path = tmp_path / "many-lines.csv.gz"
    path.write_bytes(gzip.compress(text, compresslevel=1))
    peak = _peak_bytes(data.read_csv, path)
    assert peak < len(text) / 2, f"peak {peak / 2**20:.0f} MiB for {len(text) / 2**20:.0f} MiB of text"
    if reads:
        assert data.read_csv(path)[0].shape == (1, 28, 28), "blank lines at the end are not rows"


def test_a_raw_file_beyond_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_UNPACKED_BYTES", 10_000)
    path = tmp_path / "big.csv"
    path.write_text(_csv([GOOD_ROW] * 10))
    assert "holds more than" in _assert_one_line_error_naming(path, data.read_csv)


# ---------------------------------------------------------------- only regular files are read


def _classes_file_reader(path):
    from helpers import write_blob_idx

    write_blob_idx(path.parent)
    data.load_dataset("fashion-mnist", path.parent)


READERS = {  # every reader of a file a user names, with a name it accepts
    "read_idx": ("x-idx3-ubyte", data.read_idx),
    "read_idx-gz": ("x-idx3-ubyte.gz", data.read_idx),
    "read_csv": ("x.csv", data.read_csv),
    "read_image_file-csv": ("x.csv", data.read_image_file),
    "read_image_file-idx": ("x-idx3-ubyte", data.read_image_file),
    "read_image_file-picture": ("x.png", data.read_image_file),
    "read_photo": ("x.jpg", data.read_photo),
    "prepare_image": ("x.png", data.prepare_image),
    "classes.txt": ("classes.txt", _classes_file_reader),
}


def _refused_without_hanging(read, path) -> str:
    import threading

    outcome = {}

    def attempt():
        try:
            read(path)
        except DataError as exc:
            outcome["error"] = str(exc)
        except BaseException as exc:  # reported below as what it is
            outcome["other"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), f"reading {path.name} blocked"
    assert "error" in outcome, f"reading {path.name}: {outcome.get('other', 'no error at all')!r}"
    return outcome["error"]


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_a_fifo_is_refused_in_one_line_by_every_reader(tmp_path, reader):
    import os

    name, read = reader
    os.mkfifo(tmp_path / name)
    message = _refused_without_hanging(read, tmp_path / name)
    assert f"{tmp_path / name}: a FIFO (named pipe)" in message and "\n" not in message, message


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_a_link_to_an_endless_device_is_refused_in_one_line_by_every_reader(tmp_path, reader):
    name, read = reader
    (tmp_path / name).symlink_to("/dev/zero")
    message = _refused_without_hanging(read, tmp_path / name)
    assert f"{tmp_path / name}: a character device" in message and "\n" not in message, message


def test_a_class_names_file_larger_than_a_thousand_long_names_is_refused_unread(tmp_path):
    from helpers import write_blob_idx

    write_blob_idx(tmp_path)
    (tmp_path / "classes.txt").write_text(("x" * 99 + "\n") * 100_000)  # 10 MB
    with pytest.raises(
        DataError, match=r"classes\.txt: more than 402,000 bytes, more than 1,000 class names"
    ):
        data.load_dataset("fashion-mnist", tmp_path)


# ---------------------------------------------------------------- images for prediction


def test_read_image_file_reads_a_grey_png_exactly(tmp_path):
    import matplotlib.pyplot as plt

    image = _images(1)[0]
    plt.imsave(tmp_path / "shirt.png", np.stack([image] * 3, axis=-1))  # RGB: no colormap rounding
    assert np.array_equal(data.read_image_file(tmp_path / "shirt.png"), image[None])


def test_read_image_file_reads_a_picture_of_any_size_as_it_is(tmp_path):
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "big.png", np.zeros((32, 40, 3), np.uint8))
    assert data.read_image_file(tmp_path / "big.png").shape == (1, 32, 40)


def test_read_image_file_ignores_the_csv_label_column(tmp_path):
    path = tmp_path / "to-predict.csv"
    path.write_text(_csv(["99" + GOOD_ROW[1:]]))
    assert data.read_image_file(path).shape == (1, 28, 28)


def test_read_image_file_reads_an_idx_images_file(tmp_path):
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", _images(4))
    assert np.array_equal(data.read_image_file(tmp_path / "t10k-images-idx3-ubyte.gz"), _images(4))


def test_read_image_file_rejects_an_idx_labels_file(tmp_path):
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", _labels(4))
    _assert_one_line_error_naming(tmp_path / "t10k-labels-idx1-ubyte.gz", data.read_image_file)


def test_read_image_file_rejects_an_unknown_file_type_and_a_broken_picture(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    _assert_one_line_error_naming(tmp_path / "photo.jpg", data.read_image_file)
    (tmp_path / "notes.docx").write_bytes(b"PK")
    assert "unsupported file type '.docx'" in _assert_one_line_error_naming(
        tmp_path / "notes.docx", data.read_image_file
    )


# ---------------------------------------------------------------- discovery


def test_candidate_dirs_lists_cache_then_system_package(places):
    assert data.candidate_dirs() == [("user cache", places["cache"]), ("system package", places["system"])]


def test_explicit_data_dir_is_the_only_candidate(places, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.candidate_dirs(tmp_path / "mine") == [("--data-dir", tmp_path / "mine")]


def test_explicit_data_dir_wins_over_environment_cache_and_system(places, tmp_path, monkeypatch):
    for directory in (places["cache"], places["system"], tmp_path / "env"):
        _write_idx_dir(directory)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.find_dataset(_write_csv_dir(tmp_path / "mine")) == (tmp_path / "mine", "csv")


def test_environment_variable_wins_over_cache(places, tmp_path, monkeypatch):
    _write_idx_dir(places["cache"])
    monkeypatch.setenv(data.ENV_VAR, str(_write_idx_dir(tmp_path / "env")))
    assert data.find_dataset() == (tmp_path / "env", "idx")


def test_cache_wins_over_system_package(places):
    _write_idx_dir(places["cache"])
    _write_idx_dir(places["system"])
    assert data.find_dataset() == (places["cache"], "idx")


def test_system_package_is_used_when_the_cache_is_empty(places):
    _write_idx_dir(places["system"])
    assert data.load_fashion_mnist(download=False).source.startswith("system package")


def test_raw_idx_directory_loads_the_same_arrays_as_gzipped(places, tmp_path):
    raw = data.load_fashion_mnist(_write_idx_dir(tmp_path / "raw", gz=False))
    gz = data.load_fashion_mnist(_write_idx_dir(tmp_path / "gz"))
    assert all(np.array_equal(getattr(raw, f), getattr(gz, f)) for f in ("train_images", "test_labels"))


def test_csv_directory_loads_the_same_arrays_as_idx(places, tmp_path):
    csv = data.load_fashion_mnist(_write_csv_dir(tmp_path / "csv"))
    idx = data.load_fashion_mnist(_write_idx_dir(tmp_path / "idx"))
    assert all(np.array_equal(getattr(csv, f), getattr(idx, f)) for f in ("train_images", "test_labels"))


def test_explicit_data_dir_without_dataset_is_an_error_not_a_fall_through(places, tmp_path):
    _write_idx_dir(places["system"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--data-dir .*empty"):
        data.load_fashion_mnist(tmp_path / "empty", download=False)


def test_environment_variable_without_dataset_is_an_error(places, tmp_path, monkeypatch):
    _write_idx_dir(places["system"])
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="CNNX_DATA .*nowhere.*does not exist"):
        data.load_fashion_mnist(download=False)


def test_incomplete_directory_error_names_the_missing_file(places, tmp_path):
    (_write_idx_dir(tmp_path / "part") / IDX_NAMES[3]).unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist(tmp_path / "part", download=False)


def test_nothing_found_lists_the_places_tried_and_the_three_fixes(places):
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(download=False)
    message = str(info.value)
    expected = [str(places["cache"]), str(places["system"]), "download disabled", "--data-dir", "CNNX_DATA"]
    expected += ["apt-get install dataset-fashion-mnist", "allow the download"]
    assert [part for part in expected if part not in message] == [] and "\n" not in message


def test_mismatched_image_and_label_counts_are_a_data_error(places, tmp_path):
    directory = _write_idx_dir(tmp_path / "d")
    data.write_idx(directory / IDX_NAMES[1], _labels(TRAIN_N - 1))
    with pytest.raises(DataError, match="60 images but train-labels-idx1-ubyte.gz has 59 labels"):
        data.load_fashion_mnist(directory)


@pytest.mark.parametrize("split", [0, 2], ids=["train", "test"])
def test_a_split_without_images_is_a_data_error_naming_its_file(places, tmp_path, split):
    directory = _write_idx_dir(tmp_path / "d")
    data.write_idx(directory / IDX_NAMES[split], np.zeros((0, 28, 28), np.uint8))
    data.write_idx(directory / IDX_NAMES[split + 1], np.zeros(0, np.uint8))
    with pytest.raises(DataError, match=f"{IDX_NAMES[split]}: holds no images"):
        data.load_fashion_mnist(directory)


def test_read_image_file_refuses_an_idx_file_without_images(tmp_path):
    data.write_idx(tmp_path / "none-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(DataError, match="holds no images"):
        data.read_image_file(tmp_path / "none-idx3-ubyte")


# ---------------------------------------------------------------- download


@pytest.fixture
def served(monkeypatch):
    """Gzipped synthetic files as a mirror would serve them, with their payload digests patched in."""
    payloads = {name: _idx_bytes(array) for name, array in _synthetic().items()}
    digests = {name: hashlib.sha256(payload).hexdigest() for name, payload in payloads.items()}
    monkeypatch.setattr(sources, "PAYLOAD_SHA256", digests)
    return {name: gzip.compress(payload) for name, payload in payloads.items()}


def _opener(files, down=(), check=None):
    calls = []

    def opener(url, timeout=None):
        calls.append(url)
        base, name = url.rsplit("/", 1)
        if base + "/" in down:
            raise urllib.error.URLError("unreachable")
        if check:
            check(name)
        return io.BytesIO(files[name])

    opener.calls = calls
    return opener


def test_download_with_good_checksums_is_cached_and_loaded(places, served):
    dataset = data.load_fashion_mnist(opener=_opener(served))
    assert np.array_equal(dataset.train_images, _images(TRAIN_N, 1)) and dataset.source.startswith(
        "downloaded"
    )


def test_download_leaves_exactly_the_four_files_in_the_cache(places, served):
    data.load_fashion_mnist(opener=_opener(served))
    assert sorted(p.name for p in places["cache"].iterdir()) == sorted(IDX_NAMES)


def test_download_is_invisible_under_its_final_name_until_verified(places, served):
    def check(name):
        assert not (places["cache"] / name).exists(), f"{name} appeared before it was verified"

    data.download_fashion_mnist(opener=_opener(served, check=check))


def test_cached_download_is_not_fetched_again(places, served):
    data.load_fashion_mnist(opener=_opener(served))
    again = _opener(served)
    data.load_fashion_mnist(opener=again)
    assert again.calls == []


def test_download_falls_back_to_the_next_mirror(places, served):
    opener = _opener(served, down=("http://mirror-a/",))
    data.load_fashion_mnist(opener=opener)
    assert opener.calls[:2] == ["http://mirror-a/" + IDX_NAMES[0], "http://mirror-b/" + IDX_NAMES[0]]


def test_wrong_checksum_names_file_and_both_digests(places, served, monkeypatch):
    monkeypatch.setitem(sources.PAYLOAD_SHA256, IDX_NAMES[0], "0" * 64)
    actual = hashlib.sha256(gzip.decompress(served[IDX_NAMES[0]])).hexdigest()
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(opener=_opener(served))
    assert all(part in str(info.value) for part in (IDX_NAMES[0], "0" * 64, actual))


def test_wrong_checksum_leaves_no_file_behind(places, served, monkeypatch):
    monkeypatch.setitem(sources.PAYLOAD_SHA256, IDX_NAMES[0], "0" * 64)
    with pytest.raises(DataError):
        data.load_fashion_mnist(opener=_opener(served))
    assert list(places["cache"].iterdir()) == []


def test_unreachable_mirrors_are_reported_in_the_not_found_message(places, served):
    with pytest.raises(DataError, match="tried user cache .* download failed .*mirror-b.*unreachable"):
        data.load_fashion_mnist(opener=_opener(served, down=sources.MIRRORS))


def test_a_download_says_which_file_is_coming_unless_quiet(places, served, capsys):
    data.load_fashion_mnist(opener=_opener(served, down=("http://mirror-a/",)))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"cnnx: downloading http://mirror-b/{name}" for name in IDX_NAMES], lines


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "not-quiet"])
def test_a_download_that_gets_no_byte_prints_no_downloading_line(places, served, capsys, quiet):
    with pytest.raises(DataError, match="download failed"):
        data.load_fashion_mnist(
            opener=_opener(served, down=("http://mirror-a/", "http://mirror-b/")), quiet=quiet
        )
    assert capsys.readouterr().err == "", "a line for a download that never started"


def test_a_quiet_download_prints_nothing(places, served, capsys):
    data.load_fashion_mnist(opener=_opener(served), quiet=True)
    assert capsys.readouterr().err == ""


def _recorded_as(monkeypatch, name, directory, files=IDX_NAMES):
    """Record the files of ``directory`` as data set ``name``'s published ones (payload or archive)."""
    source = sources.idx_source(name)
    if source.hashed == "payload":
        digests = {
            f: hashlib.sha256(gzip.decompress((directory / f).read_bytes())).hexdigest() for f in files
        }
    else:
        digests = {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in files}
    attribute = {
        "fashion-mnist": "PAYLOAD_SHA256",
        "mnist": "MNIST_ARCHIVE_SHA256",
        "kmnist": "KMNIST_ARCHIVE_SHA256",
    }
    monkeypatch.setattr(sources, attribute[name], digests)


@pytest.mark.parametrize(
    "asked, files_are", [("fashion-mnist", "mnist"), ("kmnist", "mnist"), ("mnist", "fashion-mnist")]
)
def test_a_folder_of_another_published_data_set_is_refused_in_one_line(
    places, tmp_path, monkeypatch, asked, files_are
):
    directory = _write_idx_dir(tmp_path / "folder")
    _recorded_as(monkeypatch, files_are, directory)
    with pytest.raises(DataError) as refused:
        data.load_dataset(asked, directory)
    message, titles = (
        str(refused.value),
        (sources.idx_source(asked).title, sources.idx_source(files_are).title),
    )
    assert f"--data-dir {directory} holds {titles[1]}, not {titles[0]}" in message, message
    assert f"pass --dataset {files_are}" in message and "\n" not in message, message


def test_a_csv_of_fashion_mnist_asked_for_as_mnist_is_refused(places, tmp_path, monkeypatch):
    _recorded_as(monkeypatch, "fashion-mnist", _write_idx_dir(tmp_path / "idx"))
    arrays = list(_synthetic().values())
    data.write_csv(tmp_path / "mnist_train.csv", arrays[0], arrays[1])
    data.write_csv(tmp_path / "mnist_test.csv", arrays[2], arrays[3])
    with pytest.raises(DataError, match="holds Fashion-MNIST, not MNIST"):
        data.load_dataset("mnist", tmp_path)


def test_a_folder_of_the_data_set_asked_for_or_of_none_published_loads(places, tmp_path, monkeypatch):
    directory = _write_idx_dir(tmp_path / "folder")
    assert len(data.load_dataset("mnist", directory).train_images) == TRAIN_N, "unpublished files load"
    _recorded_as(monkeypatch, "mnist", directory)
    assert len(data.load_dataset("mnist", directory).train_images) == TRAIN_N, "MNIST's own files load"


@pytest.mark.skipif(not data.SYSTEM_DIR.is_dir(), reason=f"{data.SYSTEM_DIR} missing")
def test_the_real_fashion_mnist_asked_for_as_mnist_is_refused():
    with pytest.raises(DataError, match="holds Fashion-MNIST, not MNIST: .*pass --dataset fashion-mnist"):
        data.load_dataset("mnist", data.SYSTEM_DIR)


# ---------------------------------------------------------------- subsets and scaling


def test_limit_gives_the_same_subset_every_time(places, tmp_path):
    directory = _write_idx_dir(tmp_path / "d")
    first, second = (data.load_fashion_mnist(directory, limit=25) for _ in range(2))
    assert np.array_equal(first.train_images, second.train_images)


def test_limit_is_class_balanced_with_a_sixth_as_many_test_images(places, tmp_path):
    subset = data.load_fashion_mnist(_write_idx_dir(tmp_path / "d"), limit=30)
    counts = (np.bincount(subset.train_labels, minlength=10).tolist(), len(subset.test_labels))
    assert counts == ([3] * 10, 5)


def test_balanced_subset_fills_up_from_other_classes_when_one_runs_out():
    labels = np.array([0, 0] + [1] * 20 + [2] * 20, np.uint8)
    assert np.bincount(labels[data.balanced_subset(labels, 12)]).tolist() == [2, 5, 5]


def test_limit_larger_than_the_set_keeps_everything(places, tmp_path):
    subset = data.load_fashion_mnist(_write_idx_dir(tmp_path / "d"), limit=10_000)
    assert (len(subset.train_labels), len(subset.test_labels)) == (TRAIN_N, TEST_N)


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_a_limit_that_is_not_a_positive_integer_is_a_config_error(places, limit):
    with pytest.raises(ConfigError):
        data.load_fashion_mnist(limit=limit, download=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scale_pixels_returns_the_requested_dtype_with_a_channel_axis(dtype):
    scaled = data.scale_pixels(_images(3), dtype)
    assert (scaled.dtype, scaled.shape) == (np.dtype(dtype), (3, 1, 28, 28))


def test_scale_pixels_maps_0_and_255_to_the_ends_of_the_unit_interval():
    scaled = data.scale_pixels(np.array([[[0, 128, 255]]], np.uint8))
    assert scaled.ravel().tolist() == [0.0, np.float32(128 / 255), 1.0]


def test_class_names_are_the_ten_fashion_mnist_classes_in_label_order():
    assert (len(data.CLASS_NAMES), data.CLASS_NAMES[0], data.CLASS_NAMES[9]) == (
        10,
        "T-shirt/top",
        "Ankle boot",
    )


# ---------------------------------------------------------------- the real data set

needs_real_data = pytest.mark.skipif(
    not data.SYSTEM_DIR.is_dir(), reason=f"{data.SYSTEM_DIR} missing (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="module")
def real():
    return data.load_fashion_mnist(data.SYSTEM_DIR, download=False)


@needs_real_data
def test_real_data_has_60000_training_and_10000_test_images(real):
    assert (real.train_images.shape, real.test_images.shape) == ((60000, 28, 28), (10000, 28, 28))


@needs_real_data
def test_real_data_has_6000_and_1000_images_per_class(real):
    counts = (set(np.bincount(real.train_labels).tolist()), set(np.bincount(real.test_labels).tolist()))
    assert counts == ({6000}, {1000})


@needs_real_data
def test_real_data_converted_to_kaggle_csv_loads_identically(real, tmp_path):
    data.write_csv(tmp_path / "fashion-mnist_train.csv", real.train_images[:2000], real.train_labels[:2000])
    data.write_csv(tmp_path / "fashion-mnist_test.csv", real.test_images[:500], real.test_labels[:500])
    csv = data.load_fashion_mnist(tmp_path, download=False)
    pairs = [(csv.train_images, real.train_images[:2000]), (csv.train_labels, real.train_labels[:2000])]
    pairs += [(csv.test_images, real.test_images[:500]), (csv.test_labels, real.test_labels[:500])]
    assert all(np.array_equal(got, want) for got, want in pairs)
