"""Writing the cnnx model file: one NumPy ``.npz`` archive of plain arrays and a JSON header.

Members (each a stored, uncompressed ``.npy``):

- ``__cnnx__``: the header, a JSON string: format, version, name, dtype, input shape, the architecture
  (nested layer descriptions), what the inputs and outputs mean (``data``, see
  :mod:`cnnx.nn.datainfo`: the data set, its class names, the image shape and the pixel scaling) when
  the model knows it, and, for a training checkpoint, its ``meta``;
- ``param/<name>``: every parameter, ``buffer/<name>``: every buffer, in the model's dtype;
- ``rng/<name>``: every layer's random stream, its state packed as six uint64 numbers;
- a checkpoint adds ``optim/...`` arrays (the optimizer's state).

Names are the model's nested names (``param/4.body.0.W``). Reading is the other half and lives in
:mod:`cnnx.io.modelfile`, which trusts nothing in the file. Version 1 files (cnnx 0.1: flat
architectures, parameters only) and version 2 (no ``data``, image inputs only) are still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np  # host: files are written on the host

from cnnx.fileio import atomic_write

from .random import pack_state

FORMAT = "cnnx-model"
FORMAT_VERSION = 3  # 3: the data field, and inputs of one or two dimensions (flat features)
HEADER_KEY = "__cnnx__"
PARAM_PREFIX = "param/"
BUFFER_PREFIX = "buffer/"
STREAM_PREFIX = "rng/"
OPTIM_PREFIX = "optim/"


def header(model) -> dict:
    """The JSON header of ``model``'s file."""
    fields = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": model.name,
        "dtype": str(model.dtype),
        "input_shape": list(model.input_shape),
        "architecture": model.architecture(),
    }
    if model.data_info is not None:
        fields["data"] = model.data_info.to_json()
    return fields


def model_arrays(model) -> dict[str, np.ndarray]:  # host
    """Every parameter, buffer and stream of ``model`` as host arrays under their member names."""
    to_host = model.backend.to_host
    arrays = {PARAM_PREFIX + name: to_host(param) for name, param, _ in model.named_parameters()}
    arrays.update((BUFFER_PREFIX + name, to_host(value)) for name, value in model.named_buffers())
    arrays.update((STREAM_PREFIX + name, pack_state(rng)) for name, rng in model.named_streams())
    return arrays


def write_model(model, path, extra: dict | None = None, meta: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; ``extra`` arrays (named ``optim/...``) and ``meta`` JSON
    ride along."""
    path = Path(path)
    arrays = model_arrays(model)
    arrays.update(extra or {})
    arrays[HEADER_KEY] = np.array(json.dumps(header(model) | ({"meta": meta} if meta else {})))  # host
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)  # host
    return path
