"""The ONNX operations cnnx reads, each into layer descriptions: a :class:`Reader` keeps what every value
of the graph is in cnnx's terms (:class:`Value`), and :data:`READERS` maps an operation to the function
that reads one node of it, checking every attribute it cannot honour."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # host: the file's tensors are read on the host

from cnnx.errors import CheckpointError

from .onnx_export import GATES_TO_ONNX


@dataclass(frozen=True)
class Value:
    """What a value of the graph is, in cnnx's terms: the graph's input passed through ``chain`` (layer
    descriptions, shared by identity between the branches of a fork), its per-sample ``shape``, and
    ``kind``: "data", or a step between layers ("pooled": a global average before its flattening;
    "rows": an image transposed row first; "seq" (T, N, D) and "nseq" (N, T, D): sequences for a GRU;
    "state": a GRU's (1, N, H) final state; "matmul": a Dense without its bias yet)."""

    chain: tuple
    shape: tuple
    kind: str = "data"


@dataclass
class Reader:
    """The state of reading one graph: values by name, constants by name, the weights of each layer
    description (by the description's id), and where to say errors happened."""

    where: str
    folder: Path
    opset: int
    values: dict = field(default_factory=dict)
    constants: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)

    def fail(self, node, message: str):
        raise CheckpointError(f"{self.where}: node {node.name or node.op_type!r} ({node.op_type}): {message}")

    def layer(self, node, kind: str, config: dict, **arrays) -> dict:
        description = {"type": kind, "config": config}
        self.weights[id(description)] = (description, arrays)
        return description

    def const(self, node, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            self.fail(node, f"its {what} must be a constant of the file")
        return self.constants[name]

    def data(self, node, index: int = 0, kinds=("data", "matmul")) -> Value:
        name = node.input[index] if index < len(node.input) else ""
        if name in self.constants or name not in self.values:
            self.fail(node, f"input {index} must be a value computed from the model's input")
        value = self.values[name]
        if value.kind not in kinds:
            self.fail(node, f"cannot follow what its input is ({_kind_words(value.kind)})")
        return value


def _kind_words(kind: str) -> str:
    return {"pooled": "a global average not yet flattened", "rows": "an image transposed for a GRU",
            "seq": "a sequence", "nseq": "a sequence", "state": "a GRU's final state",
            "matmul": "a product waiting for its bias", "data": "a tensor"}.get(kind, kind)  # fmt: skip


def _ints(values, node, reader, what):
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        reader.fail(node, f"{what} must be whole numbers")


def _square(node, reader, attributes, key, default):
    values = _ints(attributes.get(key, default), node, reader, key)
    if len(values) != 2 or values[0] != values[1]:
        reader.fail(node, f"{key} {values}: cnnx's layers take one size for both axes")
    return values[0]


def _plain_windows(node, reader, attributes):
    if any(_ints(attributes.get("pads", [0, 0, 0, 0]), node, reader, "pads")):
        reader.fail(node, "padded pooling has no cnnx counterpart")
    if attributes.get("ceil_mode", 0) or any(d != 1 for d in attributes.get("dilations", [1, 1])):
        reader.fail(node, "ceil mode and dilated pooling have no cnnx counterpart")
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        reader.fail(node, f"auto_pad {attributes['auto_pad']} has no cnnx counterpart")
    if attributes.get("storage_order", 0):
        reader.fail(node, "storage_order 1 (a column-major index output) has no cnnx counterpart")


def _pooled_size(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


def _conv(reader, node, a):
    x = reader.data(node)
    weights = reader.const(node, node.input[1], "weights")
    if weights.ndim != 4 or len(x.shape) != 3 or weights.shape[1] != x.shape[0]:
        reader.fail(node, f"weights of shape {weights.shape} do not fit inputs of shape {x.shape}")
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
        reader.fail(node, "grouped and dilated convolutions have no cnnx counterpart")
    f, c, kh, kw = weights.shape
    stride = _square(node, reader, a, "strides", [1, 1])
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and stride == 1 and kh % 2 and kw % 2:
        top, left, bottom, right = (kh - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kw - 1) // 2
    elif auto in ("NOTSET", "VALID"):
        pads = _ints(a.get("pads", [0, 0, 0, 0]), node, reader, "pads")
        if len(pads) != 4:
            reader.fail(node, f"pads {pads}: a 2-D convolution takes four")
        top, left, bottom, right = pads
    else:
        reader.fail(node, f"auto_pad {auto} at stride {stride} has no cnnx counterpart")
    if (top, left) != (bottom, right):
        reader.fail(node, f"pads {[top, left, bottom, right]}: cnnx pads each side alike")
    if stride == 1 and (top, left) == ((kh - 1) // 2, (kw - 1) // 2) and kh % 2 and kw % 2 and kh > 1:
        padding = "same"  # what keeps the size, as cnnx names it
    elif top == left:
        padding = top
    else:
        reader.fail(node, f"pads {[top, left, bottom, right]}: cnnx pads rows and columns alike, or 'same'")
    bias = len(node.input) > 2 and node.input[2] != ""
    arrays = {"W": weights}
    if bias:
        arrays["b"] = reader.const(node, node.input[2], "bias").reshape(-1)
    config = {"in_channels": c, "out_channels": f, "kernel_size": [kh, kw], "stride": stride,
              "padding": padding, "bias": bias}  # fmt: skip
    ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if padding == "same" else (padding, padding)
    shape = (f, (x.shape[1] + 2 * ph - kh) // stride + 1, (x.shape[2] + 2 * pw - kw) // stride + 1)
    return Value(x.chain + (reader.layer(node, "Conv2D", config, **arrays),), shape)


def _window_pool(kind):
    def read(reader, node, a):
        x = reader.data(node)
        if len(x.shape) != 3:
            reader.fail(node, f"pools images, not values of shape {x.shape}")
        _plain_windows(node, reader, a)
        k = _square(node, reader, a, "kernel_shape", [])
        stride = _square(node, reader, a, "strides", [1, 1])
        shape = (x.shape[0], _pooled_size(x.shape[1], k, stride), _pooled_size(x.shape[2], k, stride))
        return Value(x.chain + (reader.layer(node, kind, {"kernel_size": k, "stride": stride}),), shape)

    return read


def _global_pool(reader, node, a):
    x = reader.data(node)
    if len(x.shape) != 3:
        reader.fail(node, f"pools images, not values of shape {x.shape}")
    return Value(x.chain + (reader.layer(node, "GlobalAvgPool2D", {}),), (x.shape[0],), "pooled")


def _flat(reader, node, x: Value) -> Value:
    if x.kind == "pooled":
        return Value(x.chain, x.shape)  # cnnx's global average is (N, C) already
    if len(x.shape) == 1:
        return x
    return Value(x.chain + (reader.layer(node, "Flatten", {}),), (math.prod(x.shape),))


def _flatten(reader, node, a):
    x = reader.data(node, kinds=("data", "matmul", "pooled"))
    if a.get("axis", 1) != 1:
        reader.fail(node, f"axis {a['axis']}: cnnx flattens all but the batch axis")
    return _flat(reader, node, x)


def _reshape(reader, node, a):
    x = reader.data(node, kinds=("data", "matmul", "pooled", "rows", "state"))
    target = [int(v) for v in reader.const(node, node.input[1], "shape").reshape(-1)]
    size = math.prod(x.shape)
    if x.kind == "rows":  # (R, N, C, W) -> (R, N, C*W)
        rows, c, w = x.shape
        if len(target) == 3 and target[0] == rows and target[1] in (0, -1) and target[2] == c * w:
            return Value(x.chain, (rows, c * w), "seq")
    elif x.kind == "state":
        if len(target) == 2 and target[0] in (-1,) and target[1] == x.shape[0]:
            return Value(x.chain, x.shape)
    elif len(target) == 2 and (target[0] in (0, -1) and target[1] in (-1, size)):
        return _flat(reader, node, x)
    elif (
        len(x.shape) == 3
        and x.shape[0] == 1
        and target[1:] == [x.shape[1], x.shape[2]]
        and target[0] in (0, -1)
    ):
        return Value(x.chain, x.shape[1:], "nseq")  # one channel's rows as a sequence: the GRU reads them so
    reader.fail(node, f"a reshape to {target} of values of shape {x.shape} has no cnnx counterpart")


def _transpose(reader, node, a):
    x = reader.data(node, kinds=("data", "nseq"))
    perm = _ints(a.get("perm", []), node, reader, "perm")
    if len(x.shape) == 3 and x.kind == "data" and perm == [2, 0, 1, 3]:
        return Value(x.chain, (x.shape[1], x.shape[0], x.shape[2]), "rows")
    if len(x.shape) == 2 and perm == [1, 0, 2]:
        return Value(x.chain, x.shape, "seq")
    reader.fail(node, f"a transpose {perm} of values of shape {x.shape} has no cnnx counterpart")


def _squeeze(reader, node, a):
    x = reader.data(node, kinds=("state", "pooled"))
    if reader.opset >= 13:
        axes = (
            []
            if len(node.input) < 2
            else [int(v) for v in reader.const(node, node.input[1], "axes").reshape(-1)]
        )
    else:
        axes = _ints(a.get("axes", []), node, reader, "axes")
    if x.kind == "state" and axes == [0] or x.kind == "pooled" and sorted(axes) in ([2, 3], [-2, -1]):
        return Value(x.chain, x.shape)
    reader.fail(node, f"a squeeze of axes {axes} here has no cnnx counterpart")


def _gemm(reader, node, a):
    x = reader.data(node)
    weights = reader.const(node, node.input[1], "weights")
    if len(x.shape) != 1 or weights.ndim != 2:
        reader.fail(node, f"takes a flat batch and a matrix, got shapes {x.shape} and {weights.shape}")
    if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        reader.fail(node, "transA, alpha and beta other than 0, 1 and 1 have no cnnx counterpart")
    weights = weights.T if a.get("transB", 0) else weights
    if weights.shape[0] != x.shape[0]:
        reader.fail(node, f"weights of shape {weights.shape} do not fit inputs of {x.shape[0]} features")
    arrays = {"W": weights}
    bias = len(node.input) > 2 and node.input[2] != ""
    if bias:
        arrays["b"] = _bias(reader, node, reader.const(node, node.input[2], "bias"), weights.shape[1])
    config = {"in_features": weights.shape[0], "out_features": weights.shape[1], "bias": bias}
    return Value(x.chain + (reader.layer(node, "Dense", config, **arrays),), (weights.shape[1],))


def _bias(reader, node, bias, out):
    if bias.size != out or bias.ndim > 2:
        reader.fail(node, f"a bias of shape {bias.shape} does not fit {out} outputs")
    return bias.reshape(out)


def _matmul(reader, node, a):
    x = reader.data(node)
    weights = reader.const(node, node.input[1], "weights")
    if len(x.shape) != 1 or weights.ndim != 2 or weights.shape[0] != x.shape[0]:
        reader.fail(
            node, f"takes a flat batch and a matrix that fits it, got shapes {x.shape} and {weights.shape}"
        )
    config = {"in_features": weights.shape[0], "out_features": weights.shape[1], "bias": False}
    return Value(x.chain + (reader.layer(node, "Dense", config, W=weights),), (weights.shape[1],), "matmul")


def _add(reader, node, a):
    names = list(node.input)
    if len(names) != 2:
        reader.fail(node, "adds two values")
    constant = [n in reader.constants for n in names]
    if any(constant):
        x = reader.data(node, constant.index(False), kinds=("matmul",))
        dense = x.chain[-1]
        arrays = dict(reader.weights[id(dense)][1])
        arrays["b"] = _bias(reader, node, reader.constants[names[constant.index(True)]], x.shape[0])
        fused = reader.layer(node, "Dense", {**dense["config"], "bias": True}, **arrays)
        return Value(x.chain[:-1] + (fused,), x.shape)
    first, second = reader.data(node, 0, ("data", "matmul")), reader.data(node, 1, ("data", "matmul"))
    shared = 0
    while shared < min(len(first.chain), len(second.chain)) and first.chain[shared] is second.chain[shared]:
        shared += 1
    body, shortcut = list(first.chain[shared:]), list(second.chain[shared:])
    if not body:
        body, shortcut = shortcut, body
    if not body or first.shape != second.shape:
        reader.fail(node, "adds two branches of one value that give the same shape (a residual block)")
    config = {
        "body": _one(reader, node, body),
        "shortcut": _one(reader, node, shortcut) if shortcut else None,
    }
    return Value(first.chain[:shared] + (reader.layer(node, "Residual", config),), first.shape)


def _one(reader, node, chain: list) -> dict:
    return chain[0] if len(chain) == 1 else reader.layer(node, "Sequential", {"layers": chain})


def _relu(reader, node, a):
    x = reader.data(node)
    return Value(x.chain + (reader.layer(node, "ReLU", {}),), x.shape)


def _dropout(reader, node, a):
    x = reader.data(node)
    if len(node.output) > 1 and node.output[1]:
        reader.fail(node, "its mask output has no cnnx counterpart")
    if (
        len(node.input) > 2
        and node.input[2]
        and bool(reader.const(node, node.input[2], "training mode").any())
    ):
        reader.fail(node, "dropout in training mode at inference has no cnnx counterpart")
    p = a.get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1]:
        p = reader.const(node, node.input[1], "ratio").reshape(-1)
        p = float(p[0]) if p.size == 1 else reader.fail(node, "its ratio must be one number")
    return Value(x.chain + (reader.layer(node, "Dropout", {"p": _short(p)}),), x.shape)


def _short(value: float) -> float:
    """A float32 number of the file as the shortest decimal that gives it (1e-05, not 9.99999975e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True))


def _batch_norm(reader, node, a):
    x = reader.data(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        reader.fail(node, "batch norm in training mode has no cnnx counterpart at inference")
    if len(node.input) != 5:
        reader.fail(node, "takes its input, scale, bias, mean and variance")
    what = ("scale", "bias", "mean", "variance")
    scale, shift, mean, var = (
        reader.const(node, n, w).reshape(-1) for n, w in zip(node.input[1:], what, strict=True)
    )
    channels = x.shape[0]
    if not all(t.size == channels for t in (scale, shift, mean, var)):
        reader.fail(node, f"its scale, bias, mean and variance must have {channels} values each")
    kind = "BatchNorm2D" if len(x.shape) == 3 else "BatchNorm1D" if len(x.shape) == 1 else None
    if kind is None:
        reader.fail(node, f"normalizes images or flat batches, not values of shape {x.shape}")
    momentum = float(f"{1.0 - _short(a.get('momentum', 0.9)):.7g}")
    config = {"num_features": channels, "momentum": momentum, "eps": _short(a.get("epsilon", 1e-5))}
    description = reader.layer(
        node, kind, config, gamma=scale, beta=shift, running_mean=mean, running_var=var
    )
    return Value(x.chain + (description,), x.shape)


def _gru(reader, node, a):
    x = reader.data(node, kinds=("seq", "nseq"))
    layout = a.get("layout", 0)
    if (x.kind == "seq") != (layout == 0):
        reader.fail(node, f"layout {layout} does not fit how its input was arranged")
    if a.get("direction", "forward") != "forward" or "clip" in a:
        reader.fail(node, "only a forward GRU without clipping has a cnnx counterpart")
    if a.get("activations", ["Sigmoid", "Tanh"])[:2] != ["Sigmoid", "Tanh"]:
        reader.fail(node, f"activations {a['activations']}: cnnx's GRU uses Sigmoid and Tanh")
    if a.get("linear_before_reset", 0) != 1:
        reader.fail(node, "linear_before_reset=0 (the reset gate applied before the hidden product) has no "
                    "cnnx counterpart: cnnx's GRU, as PyTorch's, needs linear_before_reset=1")  # fmt: skip
    if any(name for name in node.input[4:]):
        reader.fail(node, "sequence lengths and an initial state have no cnnx counterpart")
    hidden, size = _ints([a.get("hidden_size", 0)], node, reader, "hidden_size")[0], x.shape[1]
    w = reader.const(node, node.input[1], "W")
    r = reader.const(node, node.input[2], "R")
    b = (
        reader.const(node, node.input[3], "B")
        if len(node.input) > 3 and node.input[3]
        else np.zeros((1, 6 * hidden))
    )
    expected = {"W": (1, 3 * hidden, size), "R": (1, 3 * hidden, hidden), "B": (1, 6 * hidden)}
    for what, array in (("W", w), ("R", r), ("B", b)):
        if hidden < 1 or array.shape != expected[what]:
            reader.fail(node, f"{what} has shape {array.shape} where hidden_size {hidden} and inputs of "
                        f"{size} "
                        f"need {expected[what]}")  # fmt: skip
    arrays = {"W_i": _gates_from_onnx(w[0].T, hidden), "W_h": _gates_from_onnx(r[0].T, hidden),
              "b_i": _gates_from_onnx(b[0, : 3 * hidden], hidden),
              "b_h": _gates_from_onnx(b[0, 3 * hidden :], hidden)}  # fmt: skip
    description = reader.layer(node, "GRU", {"input_size": size, "hidden_size": hidden}, **arrays)
    return [None, Value(x.chain + (description,), (hidden,), "state")]


def _gates_from_onnx(array: np.ndarray, hidden: int) -> np.ndarray:
    """The last axis's blocks from ONNX's gate order [z, r, n] back to cnnx's [r, z, n]."""
    blocks = [None] * 3
    for k, g in enumerate(GATES_TO_ONNX):
        blocks[g] = array[..., k * hidden : (k + 1) * hidden]
    return np.concatenate(blocks, axis=-1)


def _identity(reader, node, a):
    return reader.values[node.input[0]]


READERS = {
    "Conv": _conv, "MaxPool": _window_pool("MaxPool2D"), "AveragePool": _window_pool("AvgPool2D"),
    "GlobalAveragePool": _global_pool, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Squeeze": _squeeze, "Gemm": _gemm, "MatMul": _matmul, "Add": _add, "Relu": _relu, "Dropout": _dropout,
    "BatchNormalization": _batch_norm, "GRU": _gru, "Identity": _identity,
}  # fmt: skip
