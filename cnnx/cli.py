"""The ``cnnx`` command line (click)."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnx")
def cli():
    """cnnx: a from-scratch CNN for Fashion-MNIST on the CPU (NumPy) or a CUDA GPU (CuPy)."""


def main():
    cli()
