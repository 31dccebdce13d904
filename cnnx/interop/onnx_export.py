"""A cnnx model as an ONNX graph: :func:`to_onnx` and ``cnnx export RUN --format onnx``.

The graph starts from what ``predict`` feeds the model: float32 pixels in [0, 1] (uint8 / 255), NCHW,
shaped (N, *input_shape) with the batch size N left open, and ends in the logits (N, classes). Each
layer type has one mapping in :data:`EXPORTERS` (a user's is registered beside their layer with
:func:`register_onnx`), which adds its nodes to a :class:`GraphBuilder`:

- Conv2D: ``Conv`` with its stride and symmetric pads ('same' is (k - 1) / 2 on each side);
- MaxPool2D, AvgPool2D: ``MaxPool``, ``AveragePool`` (floor mode, no padding); GlobalAvgPool2D:
  ``GlobalAveragePool`` then ``Flatten``, since cnnx's gives (N, C);
- Dense: ``Gemm`` with W as stored (in, out), or ``MatMul`` without a bias; Flatten: ``Flatten``;
- ReLU: ``Relu``; Dropout: ``Dropout`` with its ratio and no training mode, the identity in inference;
- BatchNorm1D/2D: ``BatchNormalization`` on the running statistics (ONNX's momentum is 1 - cnnx's);
- Residual: its body and shortcut from the same input, then ``Add``; Sequential: its layers in turn;
- GRU: the image's rows as a sequence (``Transpose``, ``Reshape``) into ONNX's ``GRU`` with
  ``linear_before_reset=1`` (the reset gate multiplies ``h W_hn + b_hn``, as cnnx's does), its gates
  reordered from cnnx's [r, z, n] to ONNX's [z, r, n], then ``Squeeze`` of the final state.

The ``onnx`` package (the ``cnnx[onnx]`` extra) is imported only when a graph is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np  # host: a graph's tensors are host arrays

from cnnx.errors import ConfigError

OPSET = 17  # Squeeze's axes as an input (13), GRU's layout (14), everything here on every runtime since 2022
INPUT, OUTPUT = "pixels", "logits"
INPUT_DOC = "float32 pixels in [0, 1] (uint8 pixels / 255), NCHW: (N, C, H, W)"
DOC = f"input {INPUT}: {INPUT_DOC}; output {OUTPUT}: the logits"

EXPORTERS: dict = {}


def register_onnx(layer_type: str):
    """Register ``function(graph, layer, x, shape) -> name`` as the ONNX mapping of ``layer_type``: it
    adds the layer's nodes to ``graph`` (a :class:`GraphBuilder`) reading the value named ``x``, whose
    per-sample shape is ``shape``, and returns the name of its output. Put it beside the layer::

        @register_onnx("LeakyReLU")
        def _leaky(graph, layer, x, shape):
            return graph.node("LeakyRelu", [x], alpha=layer.slope)
    """

    def register(function):
        EXPORTERS[layer_type] = function
        return function

    return register


class GraphBuilder:
    """The nodes and constants of the graph being written; names are made unique with a counter."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers, self._count = onnx, [], [], 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attributes) -> str | list[str]:
        """Add one ``op`` node; returns its output's name (or the names, with ``outputs`` > 1)."""
        names = [self.fresh(op.lower()) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, names, name=self.fresh(op), **attributes))
        return names[0] if outputs == 1 else names

    def constant(self, array, hint: str = "w", dtype=np.float32) -> str:
        """A constant tensor (host copy in ``dtype``) as an initializer; returns its name."""
        name = self.fresh(hint)
        values = np.array(array, dtype=dtype, order="C")  # 0-d stays 0-d (ascontiguousarray would not)
        self.initializers.append(self.onnx.numpy_helper.from_array(values, name))
        return name


def _host(layer, name: str, table: str = "params") -> np.ndarray:
    return np.asarray(layer.backend.to_host(getattr(layer, table)[name]), np.float64)


def add_layer(graph: GraphBuilder, layer, x: str, shape: tuple) -> str:
    """The nodes of ``layer`` on the value ``x`` (per-sample ``shape``); returns its output's name."""
    kind = layer.layer_type
    export = EXPORTERS.get(kind)
    if export is None:
        raise ConfigError(f"no ONNX mapping for a {kind} layer: register one with "
                          "@cnnx.interop.register_onnx beside the layer")  # fmt: skip
    return export(graph, layer, x, tuple(shape))


@register_onnx("Sequential")
def _sequential(graph, layer, x, shape):
    for child in layer.layers:
        x, shape = add_layer(graph, child, x, shape), child.output_shape(shape)
    return x


@register_onnx("Conv2D")
def _conv(graph, layer, x, shape):
    ph, pw = layer.pads
    inputs = [x, graph.constant(_host(layer, "W"), "conv_W")]
    if layer.bias:
        inputs.append(graph.constant(_host(layer, "b"), "conv_b"))
    return graph.node("Conv", inputs, kernel_shape=[layer.kh, layer.kw], strides=[layer.stride] * 2,
                      pads=[ph, pw, ph, pw])  # fmt: skip


@register_onnx("MaxPool2D")
def _max_pool(graph, layer, x, shape):
    return graph.node("MaxPool", [x], kernel_shape=[layer.k] * 2, strides=[layer.stride] * 2)


@register_onnx("AvgPool2D")
def _avg_pool(graph, layer, x, shape):
    return graph.node("AveragePool", [x], kernel_shape=[layer.k] * 2, strides=[layer.stride] * 2)


@register_onnx("GlobalAvgPool2D")
def _global_pool(graph, layer, x, shape):
    return graph.node("Flatten", [graph.node("GlobalAveragePool", [x])], axis=1)


@register_onnx("Dense")
def _dense(graph, layer, x, shape):
    weights = graph.constant(_host(layer, "W"), "dense_W")
    if not layer.bias:
        return graph.node("MatMul", [x, weights])
    return graph.node("Gemm", [x, weights, graph.constant(_host(layer, "b"), "dense_b")])


@register_onnx("Flatten")
def _flatten(graph, layer, x, shape):
    return graph.node("Flatten", [x], axis=1)


@register_onnx("ReLU")
def _relu(graph, layer, x, shape):
    return graph.node("Relu", [x])


@register_onnx("Dropout")
def _dropout(graph, layer, x, shape):
    ratio = graph.constant(np.array(layer.p), "dropout_ratio")
    return graph.node("Dropout", [x, ratio])  # no training_mode input: the identity in inference


def _batch_norm(graph, layer, x, shape):
    tensors = [_host(layer, "gamma"), _host(layer, "beta"), _host(layer, "running_mean", "buffers"),
               _host(layer, "running_var", "buffers")]  # fmt: skip
    names = [graph.constant(t, hint) for t, hint in zip(tensors, ("bn_scale", "bn_B", "bn_mean", "bn_var"),
                                                          strict=True)]  # fmt: skip
    return graph.node("BatchNormalization", [x, *names], epsilon=layer.eps, momentum=1.0 - layer.momentum)


register_onnx("BatchNorm1D")(_batch_norm)
register_onnx("BatchNorm2D")(_batch_norm)


@register_onnx("Residual")
def _residual(graph, layer, x, shape):
    body = add_layer(graph, layer.body, x, shape)
    shortcut = x if layer.shortcut is None else add_layer(graph, layer.shortcut, x, shape)
    return graph.node("Add", [body, shortcut])


GATES_TO_ONNX = (1, 0, 2)  # ONNX's gate k is cnnx's gate GATES_TO_ONNX[k]: [z, r, n] from [r, z, n]


def gates_to_onnx(array: np.ndarray, hidden: int) -> np.ndarray:
    """The last axis's three blocks of ``hidden`` in ONNX's gate order."""
    blocks = [array[..., g * hidden : (g + 1) * hidden] for g in GATES_TO_ONNX]
    return np.concatenate(blocks, axis=-1)


@register_onnx("GRU")
def _gru(graph, layer, x, shape):
    h = layer.hidden_size
    if len(shape) == 3:  # (N, C, R, W) -> (R, N, C*W): the rows are the steps
        c, rows, w = shape
        x = graph.node("Transpose", [x], perm=[2, 0, 1, 3])
        x = graph.node("Reshape", [x, graph.constant(np.array([rows, 0, c * w]), "seq_shape", np.int64)])
    else:  # (N, T, D) -> (T, N, D)
        x = graph.node("Transpose", [x], perm=[1, 0, 2])
    w_i = gates_to_onnx(_host(layer, "W_i"), h).T[None]  # (1, 3H, D)
    w_h = gates_to_onnx(_host(layer, "W_h"), h).T[None]  # (1, 3H, H)
    bias = np.concatenate([gates_to_onnx(_host(layer, "b_i"), h), gates_to_onnx(_host(layer, "b_h"), h)])
    inputs = [
        x,
        graph.constant(w_i, "gru_W"),
        graph.constant(w_h, "gru_R"),
        graph.constant(bias[None], "gru_B"),
    ]
    final = graph.node("GRU", inputs, outputs=2, hidden_size=h, linear_before_reset=1)[1]
    graph.nodes[-1].output[0] = ""  # Y, every step's state, is not needed: only the final one, Y_h
    return graph.node("Squeeze", [final, graph.constant(np.array([0]), "axes", np.int64)])


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'cnnx[onnx]'") from None
    return onnx


def build_graph(model):
    """The ``onnx.ModelProto`` of ``model`` (a cnnx Sequential), checked by ``onnx.checker``."""
    onnx = _onnx()
    from cnnx.version import __version__

    graph = GraphBuilder(onnx)
    shape = tuple(model.input_shape)
    last = add_layer(graph, model, INPUT, shape)
    classes = model.output_shapes()[-1]
    last = graph.node("Identity", [last]) if last == INPUT else last
    graph.nodes[-1].output[0] = OUTPUT  # the last node writes the graph's output by its public name
    floats = onnx.TensorProto.FLOAT
    inputs = [onnx.helper.make_tensor_value_info(INPUT, floats, ["N", *shape])]
    outputs = [onnx.helper.make_tensor_value_info(OUTPUT, floats, ["N", *classes])]
    body = onnx.helper.make_graph(graph.nodes, model.name, inputs, outputs, graph.initializers,
                                  doc_string=DOC)  # fmt: skip
    proto = onnx.helper.make_model(body, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="cnnx", producer_version=__version__)  # fmt: skip
    proto.ir_version = min(proto.ir_version, 9)  # runtimes of 2023 on read IR 9 with opset 17
    onnx.helper.set_model_props(proto, _metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _metadata(model) -> dict:
    info = model.data_info
    classes = [str(k) for k in range(model.output_shapes()[-1][0])] if info is None else list(info.classes)
    return {
        "cnnx.input": INPUT_DOC,
        "cnnx.scaling": "pixels/255" if info is None else info.scaling,
        "cnnx.classes": json.dumps(classes),
        "cnnx.dataset": "" if info is None else info.dataset,
        "cnnx.model": model.name,
    }


def to_onnx(model, path=None):
    """Write ``model`` as an ONNX file at ``path`` (returns the path), or return the serialized bytes
    when ``path`` is None. ConfigError (one line) for a layer type without an ONNX mapping."""
    data = build_graph(model).SerializeToString()
    if path is None:
        return data
    from cnnx.fileio import atomic_write

    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(data)
    return path
