"""An ONNX file read as untrusted input: its size capped before it is parsed, every tensor's claimed
size checked before any array is made, external data only from plain files inside the model's own
folder, and the graph put in an order where every node follows what it reads (a cycle is refused).
:mod:`cnnx.interop.onnx_import` builds the model from what this gives."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np  # host: the file's tensors are read on the host

from cnnx.errors import CheckpointError
from cnnx.nn.registry import MAX_LAYERS, MAX_PARAMETERS

MAX_FILE_BYTES = 4 * MAX_PARAMETERS + (64 << 20)  # float32 parameters at the cap, and room for the graph
MAX_NODES = 4 * MAX_LAYERS  # a layer may take a few nodes (a GRU takes four)
MAX_TENSORS = 4096
MAX_DIMS = 8
MIN_OPSET, MAX_OPSET = 7, 23
DTYPES = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32}  # ONNX's FLOAT, DOUBLE, INT64, INT32


def _onnx():
    try:
        import onnx
    except ImportError:
        raise CheckpointError("reading ONNX files needs the onnx package: pip install 'cnnx[onnx]'") from None
    return onnx


# ---------------------------------------------------------------- the file and its tensors


def read_model_proto(path):
    """The file's ``ModelProto``, parsed after its size is checked; CheckpointError in one line."""
    onnx, path = _onnx(), Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise CheckpointError(f"{path}: not a file")
        if size > MAX_FILE_BYTES:
            raise CheckpointError(f"{path}: {size:,} bytes, more than an ONNX file may have here "
                                  f"({MAX_FILE_BYTES:,})")  # fmt: skip
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:  # protobuf's DecodeError, or a RuntimeError from its C++ parser
        raise CheckpointError(f"{path}: not an ONNX file (truncated or corrupt)") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise CheckpointError(f"{path}: not an ONNX model (no graph, or a graph without nodes)")
    return proto


def tensor_array(tensor, folder: Path) -> np.ndarray:
    """A TensorProto's values as a host array, checked before anything is allocated: its type, its
    claimed size against the cap, its bytes against its shape, and external data inside ``folder``."""
    name = tensor.name or "(unnamed)"
    dtype = DTYPES.get(tensor.data_type)
    if dtype is None:
        raise CheckpointError(f"tensor {name!r} has data type {tensor.data_type}, which cnnx does not read "
                              "(float32, float64, int64, int32)")  # fmt: skip
    dims = list(tensor.dims)
    if len(dims) > MAX_DIMS or any(d < 0 for d in dims):
        raise CheckpointError(f"tensor {name!r} has a malformed shape {dims}")
    count = math.prod(dims)
    if count > MAX_PARAMETERS:
        claimed = count * np.dtype(dtype).itemsize
        raise CheckpointError(f"tensor {name!r} claims {count:,} values ({claimed:,} "
                              f"bytes), more than the {MAX_PARAMETERS:,} a model may have")  # fmt: skip
    nbytes = count * np.dtype(dtype).itemsize
    if tensor.data_location == 1:  # EXTERNAL
        raw = _external_bytes(tensor, folder, nbytes)
    elif tensor.raw_data:
        raw = tensor.raw_data
    else:
        typed = {np.float32: tensor.float_data, np.float64: tensor.double_data, np.int64: tensor.int64_data,
                 np.int32: tensor.int32_data}[dtype]  # fmt: skip
        if len(typed) != count:
            raise CheckpointError(f"tensor {name!r} holds {len(typed):,} values where its shape {dims} "
                                  f"needs {count:,}")  # fmt: skip
        return np.asarray(typed, dtype=dtype).reshape(dims)
    if len(raw) != nbytes:
        raise CheckpointError(
            f"tensor {name!r} holds {len(raw):,} bytes where its shape {dims} needs {nbytes:,}"
        )
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(dims)


def _external_bytes(tensor, folder: Path, nbytes: int) -> bytes:
    name = tensor.name or "(unnamed)"
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts or "\0" in location:
        raise CheckpointError(f"tensor {name!r} keeps its data at {location!r}, outside the model's folder: "
                              "refused")  # fmt: skip
    target = folder / relative
    try:
        inside = os.path.realpath(target).startswith(os.path.realpath(folder) + os.sep)
        if not inside or target.is_symlink() or not target.is_file():
            raise CheckpointError(f"tensor {name!r}: its data file {location!r} is not a plain file in the "
                                  "model's folder")  # fmt: skip
        offset, length = int(entries.get("offset", 0)), int(entries.get("length", nbytes))
        if offset < 0 or length != nbytes or offset + length > target.stat().st_size:
            raise CheckpointError(f"tensor {name!r}: {location!r} does not hold {nbytes:,} bytes at "
                                  f"offset {offset:,}")  # fmt: skip
        with open(target, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"tensor {name!r}: cannot read {location!r} ({exc})") from None


# ---------------------------------------------------------------- the graph, checked


def node_attributes(node) -> dict:
    onnx = _onnx()
    found = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        found[attribute.name] = value
    return found


def label(node) -> str:
    return node.name or node.op_type


def ordered_nodes(graph, where: str) -> list:
    """The nodes in an order where each comes after what it reads; CheckpointError for a cycle, a
    value written twice, or a node reading a value nothing gives."""
    given = {value.name for value in graph.input} | {t.name for t in graph.initializer} | {""}
    writer = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name and (name in writer or name in given):
                raise CheckpointError(f"{where}: the value {name!r} is written twice")
            writer[name] = index
    for node in graph.node:
        for name in node.input:
            if name not in given and name not in writer:
                raise CheckpointError(
                    f"{where}: node {node.name or node.op_type!r} reads {name!r}, which nothing gives"
                )
    order, state = [], {}
    for start in range(len(graph.node)):  # depth first, without recursion (a long chain is fine)
        stack = [(start, 0)]
        while stack:
            index, step = stack.pop()
            if step == 0:
                if state.get(index) == "done":
                    continue
                if state.get(index) == "open":
                    raise CheckpointError(
                        f"{where}: the graph has a cycle through node {label(graph.node[index])!r}"
                    )
                state[index] = "open"
            inputs = [writer[n] for n in graph.node[index].input if n in writer]
            if step < len(inputs):
                stack.append((index, step + 1))
                child = inputs[step]
                if state.get(child) == "open":
                    raise CheckpointError(
                        f"{where}: the graph has a cycle through node {label(graph.node[child])!r}"
                    )
                if state.get(child) != "done":
                    stack.append((child, 0))
                continue
            state[index] = "done"
            order.append(graph.node[index])
    return order


def opset_of(proto, where: str) -> int:
    versions = {entry.domain: entry.version for entry in proto.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        raise CheckpointError(
            f"{where}: opset {version} of the default domain; cnnx reads {MIN_OPSET} to {MAX_OPSET}"
        )
    return version


def check_used(graph, out: str, where: str) -> None:
    """Every node leads to the output: a branch that ends nowhere is a graph cnnx would misread."""
    needed, writers = {out}, {name: node for node in graph.node for name in node.output if name}
    stack = [out]
    while stack:
        node = writers.get(stack.pop())
        for name in node.input if node is not None else ():
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
    for node in graph.node:
        if not any(name in needed for name in node.output):
            raise CheckpointError(f"{where}: node {node.name or node.op_type!r} does not lead to the output")
