"""Models in and out of cnnx: ONNX files and PyTorch modules, both ways.

- :func:`to_onnx` writes a model as an ONNX graph that starts from what ``predict`` feeds it (float
  pixels in [0, 1], NCHW, any batch size); :func:`from_onnx` builds a cnnx model from such a graph,
  treating the file as untrusted input (``cnnx/interop/onnx_export.py``, ``onnx_import.py``).
- :func:`to_torch` returns a ``torch.nn.Module`` with the same weights, buffers and evaluation output;
  :func:`from_torch` reads one made of the supported types back (``cnnx/interop/pytorch.py``, whose
  mapping ``cnnx bench --compare torch`` uses too).

``onnx`` (the ``cnnx[onnx]`` extra) and ``torch`` are optional: each is imported only inside the
functions that need it, so this package imports without either.
"""

from __future__ import annotations

__all__ = ["from_onnx", "from_torch", "register_onnx", "to_onnx", "to_torch"]


def to_onnx(model, path=None, **options):
    """See :func:`cnnx.interop.onnx_export.to_onnx`."""
    from .onnx_export import to_onnx as export

    return export(model, path, **options)


def from_onnx(path, **options):
    """See :func:`cnnx.interop.onnx_import.from_onnx`."""
    from .onnx_import import from_onnx as build

    return build(path, **options)


def register_onnx(layer_type: str):
    """See :func:`cnnx.interop.onnx_export.register_onnx`: a decorator for a user's mapping."""
    from .onnx_export import register_onnx as register

    return register(layer_type)


def to_torch(model):
    """See :func:`cnnx.interop.pytorch.to_torch`."""
    from .pytorch import to_torch as convert

    return convert(model)


def from_torch(module, **options):
    """See :func:`cnnx.interop.pytorch.from_torch`."""
    from .pytorch import from_torch as convert

    return convert(module, **options)
