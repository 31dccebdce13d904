"""Where Fashion-MNIST lives: the places searched, the file layouts, and the verified download."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import zlib
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


# ---------------------------------------------------------------- discovery


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/cnnx/fashion-mnist`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnx" / "fashion-mnist"


def candidate_dirs(data_dir=None) -> list[tuple[str, Path]]:
    """The places searched, in order, as (label, directory); an explicit choice is the only place."""
    if data_dir is not None:
        return [("--data-dir", Path(data_dir).expanduser())]
    if os.environ.get(ENV_VAR):
        return [(ENV_VAR, Path(os.environ[ENV_VAR]).expanduser())]
    return [("user cache", cache_dir()), ("system package", SYSTEM_DIR)]


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


def _layout(directory: Path) -> str | None:
    if all(_idx_paths(directory).values()):
        return "idx"
    if all(_is_file(directory / name) for name in CSV_FILES.values()):
        return "csv"
    return None


def _describe(directory: Path) -> str:
    """Why ``directory`` is not usable, in a few words."""
    if not _is_dir(directory):
        return "does not exist"
    idx_missing = [name for name, path in _idx_paths(directory).items() if path is None]
    csv_missing = [name for name in CSV_FILES.values() if not _is_file(directory / name)]
    for missing, total in ((idx_missing, len(PAYLOAD_SHA256)), (csv_missing, len(CSV_FILES))):
        if len(missing) < total:
            return "incomplete, lacks " + ", ".join(missing)
    return "no Fashion-MNIST files"


def _find(data_dir) -> tuple[str, Path, str] | None:
    for label, directory in candidate_dirs(data_dir):
        layout = _layout(directory)
        if layout:
            return label, directory, layout
    return None


def find_dataset(data_dir=None) -> tuple[Path, str] | None:
    """The first candidate directory holding a complete layout, as (directory, "idx" | "csv"), or None."""
    found = _find(data_dir)
    return found[1:] if found else None


# ---------------------------------------------------------------- download


class _DownloadUnavailable(DataError):
    """No mirror could be reached; the caller folds this into the 'nothing found' message."""


def _copy_verified(response, handle, name: str, expected: str) -> None:
    """Stream ``response`` into ``handle`` while hashing the decompressed payload; DataError if it differs."""
    digest, unzip = hashlib.sha256(), zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: expect a gzip header
    try:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            handle.write(chunk)
            digest.update(unzip.decompress(chunk))
        digest.update(unzip.flush())
    except zlib.error as exc:
        raise DataError(f"{name}: the download is not valid gzip data ({exc})") from exc
    if not unzip.eof:
        raise DataError(f"{name}: the download ended before the end of the gzip stream")
    if digest.hexdigest() != expected:
        raise DataError(f"{name}: SHA-256 mismatch: expected {expected}, downloaded {digest.hexdigest()}")


def download_fashion_mnist(directory=None, *, opener=None) -> Path:
    """Fetch the official IDX files missing from ``directory`` (default: the cache), each verified.

    ``opener(url, timeout=...)`` returns a readable, closable response (default ``urllib.request.urlopen``).
    A file is renamed into place only after its decompressed SHA-256 matches ``PAYLOAD_SHA256``.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    opener = opener or urllib.request.urlopen
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{directory}: cannot create the download folder ({exc.strerror or exc})") from exc
    for name, expected in PAYLOAD_SHA256.items():
        target = directory / name
        if _is_file(target):  # only verified downloads are ever renamed into place
            continue
        failures = []
        for base in MIRRORS:
            print(f"cnnx: downloading {base}{name}", file=sys.stderr)
            try:
                # A DataError from the check propagates and atomic_write deletes the temporary file.
                with atomic_write(target) as handle, opener(base + name, timeout=60) as response:
                    _copy_verified(response, handle, name, expected)
                break
            except OSError as exc:  # URLError, HTTPError, timeouts, a full disk: try the next mirror
                failures.append(f"{base}{name}: {getattr(exc, 'reason', None) or exc}")
        else:
            raise _DownloadUnavailable("download failed (" + "; ".join(failures) + ")")
    return directory
