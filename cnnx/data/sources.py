"""Where the IDX data sets live (Fashion-MNIST, MNIST, KMNIST): the places searched, the file layouts,
and the verified download."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_write

ENV_VAR = "CNNX_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
# S3 website endpoints speak plain HTTP only; integrity comes from the SHA-256 check, not the transport.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
IDX_FILES = {  # split -> (images, labels), as published
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
# SHA-256 of the decompressed IDX payload of each official file. The payload, not the .gz, because
# Debian re-compressed the archives: its .gz MD5s differ from the ones in the zalandoresearch/fashion-mnist
# README (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) while the content is byte-identical, so one
# digest accepts upstream's archives, Debian's and an unpacked copy. Computed from the files of
# dataset-fashion-mnist 0.0~git20200523.55506a9-1; their payload MD5s (f4a8712d..., 9018921c...,
# 8181f547..., 15d48437...) equal those that loaders which first check the README's archive MD5s publish.
PAYLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# MNIST and KMNIST are published as the same four IDX names. Their SHA-256 digests are those of the .gz
# archives as served, the figures TensorFlow Datasets records for these URLs (its url_checksums/mnist.txt
# and kmnist.txt): no digest of the decompressed payload is published for them, and no Debian package
# re-compresses them. The archive sizes are from the same records.
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
MNIST_ARCHIVE_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}  # archives of 9,912,422, 28,881, 1,648,877 and 4,542 bytes
KMNIST_MIRRORS = (
    "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
)
KMNIST_ARCHIVE_SHA256 = {
    "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
    "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
    "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
    "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
}  # archives of 18,165,135, 29,497, 3,041,136 and 5,120 bytes
# Kuzushiji-MNIST's ten classes are ten hiragana (Clanuwat et al., 2018), named here in romaji.
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


@dataclass(frozen=True)
class IdxSource:
    """A data set published as the four IDX files: where it is searched and where it is fetched from.

    ``hashed`` says what ``sha256`` digests: "payload" (the decompressed IDX bytes, which any
    re-compression keeps) or "archive" (the .gz file as served)."""

    name: str  # the --dataset name
    title: str
    mirrors: tuple[str, ...]
    sha256: dict
    hashed: str
    system_dir: Path | None = None  # where a system package installs it
    package: str | None = None  # that Debian package
    class_names: tuple[str, ...] | None = None  # None: Fashion-MNIST's own (cnnx.data.CLASS_NAMES)
    env_var: str | None = None  # a variable that names its folder

    @property
    def csv_files(self) -> dict[str, str]:
        """The Kaggle CSV layout's file names (``fashion-mnist_train.csv``, ``mnist_test.csv``, ...)."""
        return CSV_FILES if self.name == "fashion-mnist" else {s: f"{self.name}_{s}.csv" for s in CSV_FILES}


IDX_DATASETS = ("fashion-mnist", "mnist", "kmnist")


def idx_source(name: str = "fashion-mnist") -> IdxSource:
    """The :class:`IdxSource` of data set ``name`` (one of :data:`IDX_DATASETS`). Fashion-MNIST's is
    built from this module's names when asked, so a test that patches ``MIRRORS`` patches it."""
    if name == "fashion-mnist":
        return IdxSource(name, "Fashion-MNIST", MIRRORS, PAYLOAD_SHA256, "payload", SYSTEM_DIR,
                         "dataset-fashion-mnist", env_var=ENV_VAR)  # fmt: skip
    if name == "mnist":
        return IdxSource(name, "MNIST", MNIST_MIRRORS, MNIST_ARCHIVE_SHA256, "archive",
                         class_names=tuple(str(d) for d in range(10)))  # fmt: skip
    if name == "kmnist":
        return IdxSource(name, "KMNIST", KMNIST_MIRRORS, KMNIST_ARCHIVE_SHA256, "archive",
                         class_names=KMNIST_CLASSES)  # fmt: skip
    raise ValueError(f"no IDX data set named {name!r}: choose one of {', '.join(IDX_DATASETS)}")


# ---------------------------------------------------------------- discovery


def cache_dir(name: str = "fashion-mnist") -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/cnnx/<data set>`` (default ``~/.cache/cnnx/fashion-mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnx" / name


def candidate_dirs(data_dir=None, name: str = "fashion-mnist") -> list[tuple[str, Path]]:
    """The places searched, in order, as (label, directory); an explicit choice is the only place. For
    Fashion-MNIST: ``data_dir``, else ``$CNNX_DATA``, else the user cache, then the system package; for
    the others, ``data_dir`` else the user cache."""
    source = idx_source(name)
    if data_dir is not None:
        return [("--data-dir", Path(data_dir).expanduser())]
    if source.env_var and os.environ.get(source.env_var):
        return [(source.env_var, Path(os.environ[source.env_var]).expanduser())]
    return _default_places(name)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a folder we may not enter: treat as absent
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _idx_paths(directory: Path) -> dict[str, Path | None]:
    """Each official IDX name -> its file in ``directory`` (gzipped preferred over raw) or None."""
    found = {}
    for name in (name for pair in IDX_FILES.values() for name in pair):
        gz, raw = directory / name, directory / name.removesuffix(".gz")
        found[name] = gz if _is_file(gz) else raw if _is_file(raw) else None
    return found


def _layout(directory: Path, name: str = "fashion-mnist") -> str | None:
    if all(_idx_paths(directory).values()):
        return "idx"
    if all(_is_file(directory / file) for file in idx_source(name).csv_files.values()):
        return "csv"
    return None


def _describe(directory: Path, name: str = "fashion-mnist") -> str:
    """Why ``directory`` is not usable, in a few words."""
    if not _is_dir(directory):
        return "does not exist"
    source = idx_source(name)
    idx_missing = [file for file, path in _idx_paths(directory).items() if path is None]
    csv_missing = [file for file in source.csv_files.values() if not _is_file(directory / file)]
    for missing, total in ((idx_missing, len(source.sha256)), (csv_missing, len(source.csv_files))):
        if len(missing) < total:
            return "incomplete, lacks " + ", ".join(missing)
    return f"no {source.title} files"


@dataclass(frozen=True)
class Search:
    """Where data set ``name`` is looked for and what each place holds: the one answer that the loader
    acts on and ``cnnx info`` reports. ``places`` are (label, directory, layout or None), in order;
    ``explicit`` says the first was chosen (``--data-dir`` or the variable), so nothing else is tried."""

    name: str
    places: tuple[tuple[str, Path, str | None], ...]
    explicit: bool

    @property
    def found(self) -> tuple[str, Path, str] | None:
        """The first place holding a complete layout, as (label, directory, layout), or None."""
        return next(((label, path, layout) for label, path, layout in self.places if layout), None)

    def states(self) -> list[tuple[str, Path, str]]:
        """Each place as (label, directory, what it holds: "found (idx)", "does not exist", ...)."""
        return [(label, path, f"found ({layout})" if layout else _describe(path, self.name))
                for label, path, layout in self.places]  # fmt: skip

    def not_there(self) -> str:
        """Why an explicit choice holds no data set, in one line, with where a copy is if one is."""
        source, (label, directory, _) = idx_source(self.name), self.places[0]
        csv = source.csv_files
        message = (
            f"{label} {directory} has no {source.title} ({_describe(directory, self.name)}): expected the "
            f"four IDX files (train-images-idx3-ubyte[.gz], ...) or {csv['train']} and {csv['test']}"
        )
        for other, path in _default_places(self.name):
            if _layout(path, self.name):
                undo = f"unset {label}" if label == source.env_var else "leave out --data-dir"
                return f"{message}; the {other} {path} has it ({undo} to use it)"
        return message

    def tried(self) -> str:
        """Every place and what is wrong with it, for the message when nothing was found."""
        return ", ".join(f"{label} {path} ({state})" for label, path, state in self.states())


def search(data_dir=None, name: str = "fashion-mnist") -> Search:
    """Look for data set ``name`` in :func:`candidate_dirs` and say what each place holds."""
    places = tuple((label, path, _layout(path, name)) for label, path in candidate_dirs(data_dir, name))
    return Search(name, places, explicit=places[0][0] in ("--data-dir", idx_source(name).env_var))


def _default_places(name: str) -> list[tuple[str, Path]]:
    """The places searched when nothing is chosen: the user cache, then the system package if any."""
    source = idx_source(name)
    places = [("user cache", cache_dir(name))]
    return places + [("system package", source.system_dir)] if source.system_dir else places


def _find(data_dir, name: str = "fashion-mnist") -> tuple[str, Path, str] | None:
    return search(data_dir, name).found


def find_dataset(data_dir=None, name: str = "fashion-mnist") -> tuple[Path, str] | None:
    """The first candidate directory holding a complete layout, as (directory, "idx" | "csv"), or None."""
    found = _find(data_dir, name)
    return found[1:] if found else None


def recognise(payload_sha256: dict[str, str], archive_sha256: dict[str, str]) -> list[tuple[str, str]]:
    """Which published data sets a folder's files are, from their digests (file name -> SHA-256 of the
    IDX payload, and of the .gz as stored where there is one): (data set, a file that matched) for each."""
    found = []
    for name in IDX_DATASETS:
        source = idx_source(name)
        digests = payload_sha256 if source.hashed == "payload" else archive_sha256
        known = set(source.sha256.values())
        found += [(name, file) for file, digest in digests.items() if digest in known][:1]
    return found


# ---------------------------------------------------------------- download


class _DownloadUnavailable(DataError):
    """No mirror could be reached; the caller folds this into the 'nothing found' message."""


def _copy_verified(response, handle, name: str, expected: str, hashed: str = "payload", arrived=None) -> None:
    """Stream ``response`` into ``handle`` while hashing the decompressed payload (or, for ``hashed=
    "archive"``, the bytes as served) and checking that it is one whole gzip stream; DataError if not.
    ``arrived()``, if given, is called once the first bytes are in."""
    digest, unzip = hashlib.sha256(), zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header
    try:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            if arrived is not None:  # the first bytes: now the download is worth a line
                arrived()
                arrived = None
            handle.write(chunk)
            payload = unzip.decompress(chunk)
            digest.update(chunk if hashed == "archive" else payload)
        tail = unzip.flush()
        if hashed != "archive":
            digest.update(tail)
    except zlib.error as exc:
        raise DataError(f"{name}: the download is not valid gzip data ({exc})") from exc
    if not unzip.eof:
        raise DataError(f"{name}: the download ended before the end of the gzip stream")
    if digest.hexdigest() != expected:
        raise DataError(f"{name}: SHA-256 mismatch: expected {expected}, downloaded {digest.hexdigest()}")


def download_fashion_mnist(directory=None, *, opener=None, quiet: bool = False) -> Path:
    """Fetch Fashion-MNIST's official IDX files missing from ``directory`` (default: the cache), each
    verified against ``PAYLOAD_SHA256``: see :func:`download`."""
    return download("fashion-mnist", directory, opener=opener, quiet=quiet)


def download(name: str, directory=None, *, opener=None, quiet: bool = False) -> Path:
    """Fetch data set ``name``'s official IDX files missing from ``directory`` (default: its cache).

    ``opener(url, timeout=...)`` returns a readable, closable response (default ``urllib.request.urlopen``).
    A file is renamed into place only after its SHA-256 (of the decompressed payload or of the archive,
    see :class:`IdxSource`) matches the recorded one; the mirrors are tried in order. A line on stderr
    says which file is coming, once its first bytes arrive (never with ``quiet``, never for a mirror
    that cannot be reached).
    """
    source = idx_source(name)
    directory = Path(directory) if directory is not None else cache_dir(name)
    opener = opener or urllib.request.urlopen
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{directory}: cannot create the download folder ({exc.strerror or exc})") from exc
    for file, expected in source.sha256.items():
        target = directory / file
        if _is_file(target):  # only verified downloads are ever renamed into place
            continue
        failures = []
        for base in source.mirrors:
            url = base + file
            arrived = None if quiet else lambda url=url: print(f"cnnx: downloading {url}", file=sys.stderr)
            try:
                # A DataError from the check propagates and atomic_write deletes the temporary file.
                with atomic_write(target) as handle, opener(url, timeout=60) as response:
                    _copy_verified(response, handle, file, expected, source.hashed, arrived)
                break
            except OSError as exc:  # URLError, HTTPError, timeouts, a full disk: try the next mirror
                failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        else:
            raise _DownloadUnavailable("download failed (" + "; ".join(failures) + ")")
    return directory
