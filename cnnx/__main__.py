"""``python -m cnnx`` runs the command-line interface."""

from cnnx.cli import main

main()
