"""A cnnx model from an ONNX file: :func:`from_onnx` and ``cnnx import model.onnx -o model.npz``.

An ONNX file is untrusted input, read with the discipline of cnnx's own model files:

- the file's size is capped before it is read, and it is parsed as a protobuf only (nothing in it is
  run: no custom operator, no function, no runtime);
- every tensor's claimed size is checked before any of its bytes are turned into an array, against
  the registry's parameter cap, and its bytes must be exactly as many as its shape says;
- external data is read only from a plain file inside the model's own folder, never through a
  symbolic link or a path that leaves it (``../../etc/passwd`` is refused);
- the graph must be acyclic, have one data input and one output, and use only the operations below;
  anything else is one line naming the node and what it does.

The file is read and its tensors checked by :mod:`cnnx.interop.onnx_file`; each node is read into
layer descriptions (the same a model file holds) by :mod:`cnnx.interop.onnx_layers`; the model is
built here through the registry, which checks the descriptions as it checks a model file's, and the
weights are loaded by name.
Operations, with their attributes as cnnx can honour them: ``Conv``, ``MaxPool``, ``AveragePool``,
``GlobalAveragePool``, ``Gemm``, ``MatMul`` (with an ``Add`` of its bias), ``Flatten``, ``Reshape``
(to a flat batch), ``Relu``, ``Dropout``, ``BatchNormalization``, ``Add`` of two branches of one value
(a Residual; nested ones too), ``GRU`` (forward, ``linear_before_reset=1``) with the ``Transpose``,
``Reshape`` and ``Squeeze`` around it, ``Identity`` and ``Constant``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnx.errors import CheckpointError, CnnxError

from .naming import state_by_name
from .onnx_file import (
    MAX_NODES,
    MAX_TENSORS,
    check_used,
    label,
    node_attributes,
    opset_of,
    ordered_nodes,
    read_model_proto,
    tensor_array,
)
from .onnx_layers import READERS, Reader, Value


def _input(graph, reader: Reader) -> tuple[str, tuple]:
    """The graph's one data input and its per-sample shape (fixed sizes after an open batch size)."""
    inputs = [value for value in graph.input if value.name not in reader.constants]
    if len(inputs) != 1:
        raise CheckpointError(
            f"{reader.where}: the graph has {len(inputs)} data inputs; cnnx models take one"
        )
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if (
        tensor.elem_type not in (1, 11)
        or len(dims) not in (2, 3, 4)
        or any(d is None or d < 1 for d in dims[1:])
    ):
        raise CheckpointError(f"{reader.where}: the input {inputs[0].name!r} must be float (N, features), "
                              "(N, steps, features) or (N, C, H, W) with fixed sizes after N")  # fmt: skip
    return inputs[0].name, tuple(dims[1:])


def _constants(proto, reader: Reader) -> None:
    graph = proto.graph
    if len(graph.initializer) > MAX_TENSORS or len(graph.node) > MAX_NODES:
        raise CheckpointError(f"{reader.where}: {len(graph.node):,} nodes and {len(graph.initializer):,} "
                              f"tensors; cnnx reads up to {MAX_NODES:,} and {MAX_TENSORS:,}")  # fmt: skip
    for tensor in graph.initializer:
        reader.constants[tensor.name] = tensor_array(tensor, reader.folder)


def read_graph(proto, where: str, folder: Path) -> tuple[list, tuple, Reader]:
    """The architecture (layer descriptions), the input shape and the reader (with each description's
    weights) of a checked ModelProto."""
    reader = Reader(where, folder, opset_of(proto, where))
    _constants(proto, reader)
    graph = proto.graph
    name, shape = _input(graph, reader)
    reader.values[name] = Value((), shape)
    if len(graph.output) != 1:
        raise CheckpointError(f"{where}: the graph has {len(graph.output)} outputs; cnnx models give one")
    for node in ordered_nodes(graph, where):
        try:
            _read_node(reader, node)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # what no check foresaw
            reader.fail(node, f"malformed ({type(exc).__name__}: {exc})")
    out = graph.output[0].name
    value = reader.values.get(out)
    if value is None or value.kind not in ("data", "matmul") or len(value.shape) != 1 or not value.chain:
        raise CheckpointError(
            f"{where}: the output {out!r} must be the logits (N, classes) of layers on the input"
        )
    check_used(graph, out, where)
    return list(value.chain), shape, reader


def _read_node(reader: Reader, node) -> None:
    if node.domain not in ("", "ai.onnx"):
        reader.fail(
            node, f"operations of the domain {node.domain!r} are not read (nothing in the file is run)"
        )
    if node.op_type == "Constant":
        attributes = {a.name: a for a in node.attribute}
        if "value" not in attributes or len(node.output) != 1:
            reader.fail(node, "only a tensor-valued Constant is read")
        reader.constants[node.output[0]] = tensor_array(attributes["value"].t, reader.folder)
        return
    read = READERS.get(node.op_type)
    if read is None:
        known = ", ".join(sorted(READERS))
        raise CheckpointError(f"{reader.where}: unsupported ONNX operation {node.op_type!r} (node "
                              f"{label(node)!r}); cnnx reads {known} and Constant")  # fmt: skip
    if node.op_type == "Identity" and node.input and node.input[0] in reader.constants:
        reader.constants[node.output[0]] = reader.constants[node.input[0]]
        return
    produced = read(reader, node, node_attributes(node))
    produced = produced if isinstance(produced, list) else [produced]
    for name, value in zip(node.output, produced, strict=False):
        if name and value is not None:
            reader.values[name] = value


def _data_info(proto, classes: int, shape: tuple):
    from cnnx.nn.datainfo import DataInfo, check_data_info

    props = {entry.key: entry.value for entry in proto.metadata_props}
    try:
        names = json.loads(props.get("cnnx.classes", "null"))
        info = {"dataset": props.get("cnnx.dataset") or "onnx", "classes": names,
                "image_shape": list(shape) if len(shape) == 3 else None,
                "scaling": props.get("cnnx.scaling", "pixels/255"), "data_dir": None}  # fmt: skip
        if not isinstance(names, list) or len(names) != classes:
            raise ValueError
        return check_data_info(info)
    except (ValueError, CnnxError):  # no metadata, or metadata that does not fit: class numbers
        return DataInfo("onnx", tuple(str(k) for k in range(classes)), shape if len(shape) == 3 else None)


def from_onnx(path, *, dtype: str = "float32", backend=None):
    """A cnnx Sequential from the ONNX file at ``path``, with its weights, buffers and (from the file's
    metadata, when cnnx wrote it) class names. CheckpointError in one line for a file that is malformed,
    hostile, or made of operations cnnx does not have."""
    from cnnx.nn.model import build_from_architecture

    path = Path(path)
    proto = read_model_proto(path)
    architecture, shape, reader = read_graph(proto, str(path), path.resolve().parent)
    props = {entry.key: entry.value for entry in proto.metadata_props}
    name = props.get("cnnx.model") or "onnx"
    plain = isinstance(name, str) and len(name) <= 64 and name.replace("-", "").replace("_", "").isalnum()
    name = name if plain else "onnx"
    try:
        model = build_from_architecture(
            architecture, backend=backend, dtype=dtype, input_shape=shape, name=name
        )
    except CnnxError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    state = model.state_dict()
    state.update(state_by_name(architecture, lambda d: reader.weights[id(d)][1]))
    model.load_state_dict(state)
    model.data_info = _data_info(proto, model.output_shapes()[-1][0], shape)
    return model
