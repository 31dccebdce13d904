"""The ``cnnx`` command line (click): one small module per command, each a thin layer over the packages
below (training, io, data, bench, experiments).

A problem the user can fix (a :class:`~cnnx.errors.CnnxError`, or the operating system refusing a file)
ends the command with one line, ``cnnx: error: <message>``, on stderr and exit status 1; click's own
usage errors keep click's message and exit status 2. Anything else is a bug and shows its traceback.

Output goes through :func:`cnnx.fileio.echo`: when its reader goes away (``cnnx train ... | head -2``),
printing stops and the work goes on; a command whose work succeeded exits with status 0 all the same.
"""

from __future__ import annotations

import sys
import time

import click

from cnnx.errors import CnnxError
from cnnx.fileio import echo, reader_gone, silence
from cnnx.version import __version__

from .augmentations import augmentations
from .bench import bench
from .check_layer import check_layer
from .evaluate import evaluate
from .experiment import experiment
from .explain import explain
from .info import info
from .interop import export, import_model
from .predict import predict
from .serve import serve
from .train import train

# Under mpiexec, how long a rank but the speaker waits before it says an error of its own: when every
# rank fails alike (a bad setting), the speaker's abort ends it first, and the user reads one line.
SPEAKER_FIRST_SECONDS = 1.0


class UserError(click.ClickException):
    """A CnnxError on its way out: one line on stderr, exit status 1. Under ``mpiexec`` the rank that
    speaks for all (rank 0, or the one a :class:`~cnnx.backends.mpi.RankStalled` names) says it and
    ends every rank; another rank says its own error, after a moment, with its number."""

    exit_code = 1

    def __init__(self, message: str, speaker: int = 0):
        super().__init__(message)
        self.speaker = speaker

    def show(self, file=None) -> None:
        from cnnx.backends.mpi import world

        try:
            place = world()
        except CnnxError:  # mpiexec started this process, but MPI cannot be used: the error says why
            place = None
        if place is None:
            echo(f"cnnx: error: {self.message}", err=True)
            return
        if place.rank == self.speaker:
            echo(f"cnnx: error: {self.message}", err=True)
        else:
            time.sleep(SPEAKER_FIRST_SECONDS)
            echo(f"cnnx: error: rank {place.rank}: {self.message}", err=True)
        place.abort(self.exit_code)  # the others may be waiting for this rank: end them all now


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


class CnnxGroup(click.Group):
    """A click group that turns user-fixable errors into :class:`UserError`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            # Output cut short by its reader (`cnnx evaluate | head`) is not an error; another pipe is.
            gone = [stream for stream in (sys.stdout, sys.stderr) if reader_gone(stream)]
            if not gone:
                raise UserError(_one_line(exc)) from None
            for stream in gone:
                silence(stream)
            return None
        except (CnnxError, OSError) as exc:
            raise UserError(_one_line(exc), getattr(exc, "speaker", 0)) from None


@click.group(cls=CnnxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnx")
def cli() -> None:
    """cnnx: a from-scratch CNN for Fashion-MNIST on the CPU (NumPy) or a CUDA GPU (CuPy)."""


_COMMANDS = (train, evaluate, predict, serve, explain, check_layer, export, import_model, info, bench,
             experiment, augmentations)  # fmt: skip
for _command in _COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``cnnx`` console script and ``python -m cnnx``."""
    try:
        cli(prog_name="cnnx")
    except Exception:  # a bug: its traceback, and under mpiexec no rank left waiting for this one
        from cnnx.backends.mpi import started_world

        place = started_world()
        if place is None:
            raise
        import traceback

        traceback.print_exc()
        place.abort(1)
