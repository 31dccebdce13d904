"""Files on disk, both ways.

- Writing: a file is written to a temporary name beside the target, flushed to disk, then renamed over
  it, so a crash at any moment leaves either the old file or the new one, never half of one.
- Reading what a user names (a model file, a picture, a data file, a TOML file): only a regular file is
  opened. A FIFO would block the reader for ever and a device such as ``/dev/zero`` never ends, so
  :func:`open_regular` opens without blocking and checks what it opened before a byte is read.
- Printing: a reader of the standard output that goes away (``cnnx train ... | head -2``) must not stop
  the work. :func:`echo` and :func:`unless_closed` then point the stream at ``os.devnull`` for the rest
  of the process, and the work goes on; nothing more is printed.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
import tempfile
from pathlib import Path

from .errors import DataError

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def open_regular(path, mode: str = "rb", *, error=DataError, what: str = "file", encoding=None):
    """Open ``path`` for reading, refusing anything but a regular file (after following symbolic links):
    a directory, a FIFO, a socket or a device is one ``error`` line naming the path. The file is opened
    with ``O_NONBLOCK`` (a FIFO without a writer would otherwise hang the open) and checked with
    ``fstat`` on the opened descriptor, so a swap between the check and the read cannot slip one in.
    ``mode`` is "rb" or "r" (text, with ``encoding``)."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_regular reads; mode must be 'rb' or 'r', not {mode!r}")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise error(f"{path}: {_kind_name(kind)}, not a regular {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, mode, encoding=encoding) if mode == "r" else os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def check_regular(path, *, error=DataError, what: str = "file") -> Path:
    """``path`` when it names a regular file (see :func:`open_regular`); the same one-line errors."""
    with open_regular(path, error=error, what=what):
        return Path(path)


def stale_temporaries(path) -> list[Path]:
    """Temporary files that :func:`atomic_write` left beside ``path`` when its process was killed (a
    SIGKILL gives it no chance to clean up). They are never mistaken for ``path`` itself: readers open
    the final name only."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def echo(message: str = "", *, err: bool = False) -> None:
    """Print ``message`` and a newline (``click.echo``) on stdout, or stderr with ``err``, unless the
    stream's reader has gone: see :func:`unless_closed`."""
    import click  # imported where printing happens, as the command line already has it

    with unless_closed(sys.stderr if err else sys.stdout):
        click.echo(message, err=err)


@contextlib.contextmanager
def unless_closed(stream):
    """Run a block that writes to ``stream`` (sys.stdout or sys.stderr). When the stream's reader has gone
    (a pipe closed early: BrokenPipeError), the block ends there, quietly, and :func:`silence` points the
    stream elsewhere."""
    try:
        yield
    except BrokenPipeError:
        silence(stream)


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at ``os.devnull``: its reader has gone, and later writes,
    Python's flush at exit included, must go nowhere instead of failing."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # no descriptor behind it (a test's captured output): nothing to point elsewhere
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe whose reader has closed it (every write would fail with EPIPE)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # pragma: no cover - Windows: no poll, and no such pipes to ask
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))
