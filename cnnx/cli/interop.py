"""``cnnx export RUN --format onnx`` and ``cnnx import MODEL.onnx -o MODEL.npz``: a model out to ONNX and
in from it, through :mod:`cnnx.interop`."""

from __future__ import annotations

from pathlib import Path

import click

from cnnx.checks import plural
from cnnx.fileio import echo

from .options import check_output_file, import_option, load_classifier, model_file

OUT_HELP = "Where to write it (default: model.onnx in RUN, or MODEL.onnx beside a model file)."


@click.command(short_help="Write a trained model as an ONNX file.")
@click.argument("run", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "kind", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="The file format (ONNX, opset 17).")  # fmt: skip
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help=OUT_HELP)  # fmt: skip
@import_option()
def export(run, kind, out):
    """Write the model of RUN (a run directory: its best.npz when it kept one, else model.npz; or a
    model file) as an ONNX graph. The graph takes what cnnx predict feeds the model: float32 pixels
    in [0, 1] (uint8 / 255), NCHW, any batch size, as the input "pixels"; it gives the logits as
    "logits". Its metadata names the scaling and the class names. Needs pip install 'cnnx[onnx]'."""
    from cnnx.interop import to_onnx

    path = model_file(run)
    model = load_classifier(path, "cpu")
    if out is None:
        out = Path(run) / "model.onnx" if Path(run).is_dir() else path.with_suffix(".onnx")
    check_output_file(out)
    to_onnx(model, out)
    size = plural(out.stat().st_size, "byte")
    echo(f"{model.name} ({plural(model.parameter_count(), 'parameter')}) as ONNX: {out} ({size})")


@click.command("import", short_help="Make a cnnx model file from an ONNX file.")
@click.argument("source", metavar="MODEL.onnx", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE",
              help="The cnnx model file to write (.npz).")  # fmt: skip
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="The model's floating-point type.")  # fmt: skip
def import_model(source, out, dtype):
    """Build a cnnx model from an ONNX graph of convolutions, pooling, dense layers, ReLU, dropout,
    batch norm, residual adds and a GRU (as cnnx export writes them, or PyTorch's exporter for the
    convolutional ones), and write it as a cnnx model file that evaluate, predict and explain read.
    The file is untrusted: its size and every tensor's are capped, external data is read only from
    its own folder, and any other operation is refused with its name."""
    from cnnx.interop import from_onnx

    check_output_file(out)
    model = from_onnx(source, dtype=dtype)
    model.save(out)
    counts = f"{plural(len(model.layers), 'layer')}, {plural(model.parameter_count(), 'parameter')}"
    echo(f"{source}: {counts}, input {'x'.join(map(str, model.input_shape))}; written to {out}")
