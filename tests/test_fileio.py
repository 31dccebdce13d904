"""cnnx.fileio: what a user names is opened only when it is a regular file; files are written atomically.

The refusals run in a child process with a time limit wherever the thing refused could block the
reader (a FIFO without a writer) or never end (/dev/zero), so that a regression fails the test instead
of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cnnx.errors import CheckpointError, DataError
from cnnx.fileio import atomic_write, check_regular, open_regular

LIMIT_S = 60  # a safety net against a hang, not a measure of speed


def _not_regular(tmp_path, kind: str):
    """A path to something that is not a regular file, of ``kind``."""
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "link-to-a-directory":
        path.symlink_to(tmp_path)
    return path


NOT_REGULAR = {
    "fifo": "a FIFO (named pipe), not a regular",
    "link-to-dev-zero": "a character device, not a regular",
    "directory": "a directory, not a regular",
    "link-to-a-directory": "a directory, not a regular",
    "missing": "no such",
}


def _open_in_a_child(path, mode: str) -> subprocess.CompletedProcess:
    """open_regular(path, mode) in a fresh interpreter: prints the error line, or OPENED."""
    code = textwrap.dedent(f"""
        from cnnx.errors import DataError
        from cnnx.fileio import open_regular
        try:
            with open_regular({str(path)!r}, {mode!r}, what="picture") as handle:
                handle.read(16)
            print("OPENED")
        except DataError as exc:
            print(exc)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT_S)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize(
    "kind, mode", [*((kind, "rb") for kind in NOT_REGULAR), ("fifo", "r")], ids=lambda v: v
)
def test_open_regular_refuses_what_is_not_a_regular_file_in_one_line_without_blocking(tmp_path, kind, mode):
    path = _not_regular(tmp_path, kind)
    done = _open_in_a_child(path, mode)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 1, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    assert lines[0].startswith(f"{path}: ") and NOT_REGULAR[kind] in lines[0], lines[0]


def test_open_regular_names_the_kind_of_file_the_caller_reads(tmp_path):
    with pytest.raises(DataError, match="no such picture$"):
        open_regular(tmp_path / "absent.png", what="picture")


def test_open_regular_raises_the_error_class_the_caller_gives(tmp_path):
    with pytest.raises(CheckpointError, match="a directory, not a regular model file"):
        open_regular(tmp_path, error=CheckpointError, what="model file")


def test_open_regular_reads_a_regular_file_in_binary_and_in_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("héllo\n".encode())
    with open_regular(path) as raw, open_regular(path, "r", encoding="utf-8") as text:
        read = (raw.read(), text.read())
    assert read == ("héllo\n".encode(), "héllo\n"), read


def test_open_regular_follows_a_link_to_a_regular_file(tmp_path):
    (tmp_path / "real").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with open_regular(tmp_path / "link") as handle:
        assert handle.read() == b"data"


def test_open_regular_hands_back_a_file_that_blocks_as_usual(tmp_path):
    # The file is opened with O_NONBLOCK (for a FIFO's sake) and set back to blocking once it is known
    # to be regular: nothing later sees a non-blocking descriptor.
    (tmp_path / "real").write_bytes(b"data")
    with open_regular(tmp_path / "real") as handle:
        assert os.get_blocking(handle.fileno()), "open_regular left the file non-blocking"


@pytest.mark.parametrize("mode", ["wb", "a", "r+"])
def test_open_regular_only_reads(tmp_path, mode):
    with pytest.raises(ValueError, match="mode must be"):
        open_regular(tmp_path / "x", mode)


def test_check_regular_returns_the_path_of_a_regular_file_and_refuses_a_directory(tmp_path):
    (tmp_path / "real").write_bytes(b"")
    assert check_regular(tmp_path / "real") == tmp_path / "real"
    with pytest.raises(DataError, match="a directory"):
        check_regular(tmp_path)


def test_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert path.read_bytes() == b"old" and leftovers == ["out.bin"], (path.read_bytes(), leftovers)
