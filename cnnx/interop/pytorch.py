"""PyTorch weights both ways: :func:`to_torch` gives a ``torch.nn.Module`` that computes what a cnnx model
computes, with the same weights and buffers; :func:`from_torch` reads a module made of the supported
types back into a cnnx model. :func:`mirror` is the one mapping of a cnnx layer to its PyTorch module,
which ``cnnx bench --compare torch`` uses too.

The layouts that differ: cnnx's Dense keeps W as (in, out) for ``x @ W``, PyTorch's Linear (out, in);
cnnx's GRU keeps W_i (D, 3H) and W_h (H, 3H), PyTorch's (3H, D) and (3H, H), with the same gate order
[r, z, n] and the reset gate on ``h W_hn + b_hn`` in both. Batch norm's momentum and epsilon mean the
same in both. cnnx's GlobalAvgPool2D gives (N, C): ``AdaptiveAvgPool2d(1)`` then ``Flatten``. A GRU
reading images row by row and a Residual have no module of their own in PyTorch: :func:`torch_classes`
defines ``RowGRU`` and ``Residual``, which :func:`from_torch` reads back.

torch is imported only inside these functions: it is never a dependency of cnnx.
"""

from __future__ import annotations

import numpy as np  # host: weights cross between the libraries on the host

from cnnx.errors import ConfigError

from .naming import state_by_name

_CLASSES: dict = {}


def _torch():
    try:
        import torch
    except ImportError:
        raise ConfigError(
            "PyTorch interop needs PyTorch, which is not installed (pip install torch)"
        ) from None
    return torch


def torch_classes(torch):
    """``{"Residual": ..., "RowGRU": ...}``: the two modules PyTorch lacks, defined once per process."""
    if not _CLASSES:

        class Residual(torch.nn.Module):
            """``body(x) + shortcut(x)``, the shortcut the identity when it is None (cnnx's Residual)."""

            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body, self.shortcut = body, shortcut

            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

        class RowGRU(torch.nn.Module):
            """A batch-first GRU giving its final hidden state; an image batch (N, C, R, W) is read as R
            steps of C*W numbers, as cnnx's GRU reads it."""

            def __init__(self, gru):
                super().__init__()
                self.gru = gru

            def forward(self, x):
                if x.dim() == 4:
                    x = x.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)
                return self.gru(x)[1][-1]

        _CLASSES.update(Residual=Residual, RowGRU=RowGRU)
    return _CLASSES


# ---------------------------------------------------------------- cnnx to PyTorch


def _parameter(torch, array, to_host, transpose: bool = False):
    host = np.asarray(to_host(array))
    return torch.nn.Parameter(torch.from_numpy((host.T if transpose else host).copy()))


def _conv2d(torch, layer, to_host):
    module = torch.nn.Conv2d(layer.in_channels, layer.out_channels, (layer.kh, layer.kw), stride=layer.stride,
                             padding=layer.pads, bias=layer.bias)  # fmt: skip
    module.weight = _parameter(torch, layer.params["W"], to_host)
    if layer.bias:
        module.bias = _parameter(torch, layer.params["b"], to_host)
    return module


def _dense(torch, layer, to_host):
    module = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    module.weight = _parameter(torch, layer.params["W"], to_host, transpose=True)
    if layer.bias:
        module.bias = _parameter(torch, layer.params["b"], to_host)
    return module


def _batch_norm(torch, layer, to_host):
    kind = torch.nn.BatchNorm2d if layer.layer_type == "BatchNorm2D" else torch.nn.BatchNorm1d
    module = kind(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    module.weight = _parameter(torch, layer.params["gamma"], to_host)
    module.bias = _parameter(torch, layer.params["beta"], to_host)
    for name in ("running_mean", "running_var"):
        setattr(module, name, torch.from_numpy(np.asarray(to_host(layer.buffers[name])).copy()))
    return module


def _gru(torch, layer, to_host):
    gru = torch.nn.GRU(layer.input_size, layer.hidden_size, batch_first=True)
    gru.weight_ih_l0 = _parameter(torch, layer.params["W_i"], to_host, transpose=True)
    gru.weight_hh_l0 = _parameter(torch, layer.params["W_h"], to_host, transpose=True)
    gru.bias_ih_l0 = _parameter(torch, layer.params["b_i"], to_host)
    gru.bias_hh_l0 = _parameter(torch, layer.params["b_h"], to_host)
    return torch_classes(torch)["RowGRU"](gru)


def _residual(torch, layer, to_host):
    shortcut = None if layer.shortcut is None else mirror(layer.shortcut, to_host, torch)
    return torch_classes(torch)["Residual"](mirror(layer.body, to_host, torch), shortcut)


MIRRORS = {
    "Conv2D": _conv2d,
    "Dense": _dense,
    "MaxPool2D": lambda torch, layer, to_host: torch.nn.MaxPool2d(layer.k, layer.stride),
    "AvgPool2D": lambda torch, layer, to_host: torch.nn.AvgPool2d(layer.k, layer.stride),
    "GlobalAvgPool2D": lambda torch, layer, to_host: torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ),  # fmt: skip
    "ReLU": lambda torch, layer, to_host: torch.nn.ReLU(),
    "Flatten": lambda torch, layer, to_host: torch.nn.Flatten(),
    "Dropout": lambda torch, layer, to_host: torch.nn.Dropout(layer.p),
    "BatchNorm1D": _batch_norm,
    "BatchNorm2D": _batch_norm,
    "Residual": _residual,
    "GRU": _gru,
    "Sequential": lambda torch, layer, to_host: torch.nn.Sequential(
        *(mirror(c, to_host, torch) for c in layer.layers)
    ),  # fmt: skip
}


def mirror(layer, to_host, torch=None):
    """The PyTorch module that computes what the cnnx ``layer`` computes, with copies of its weights and
    buffers (``to_host`` moves an array of its backend to the host). ConfigError (one line) for a
    layer type without a counterpart."""
    torch = _torch() if torch is None else torch
    make = MIRRORS.get(layer.layer_type)
    if make is None:
        raise ConfigError(f"no PyTorch counterpart for a {layer.layer_type} layer "
                          f"(there are for {', '.join(sorted(MIRRORS))})")  # fmt: skip
    return make(torch, layer, to_host)


def to_torch(model):
    """A ``torch.nn.Sequential`` (in evaluation mode, on the CPU, in the model's dtype) with the model's
    weights and buffers, whose output equals ``model(x)``. The model is not changed."""
    torch = _torch()
    module = torch.nn.Sequential(*(mirror(layer, model.backend.to_host, torch) for layer in model.layers))
    return module.to(getattr(torch, str(model.dtype))).eval()


# ---------------------------------------------------------------- PyTorch to cnnx


class _Reading:
    """Layer descriptions read from modules, and each one's weights (keyed by the description's id)."""

    def __init__(self, torch):
        self.torch, self.weights = torch, {}

    def layer(self, kind: str, config: dict, **arrays) -> dict:
        description = {"type": kind, "config": config}
        self.weights[id(description)] = {
            k: v.detach().cpu().numpy().astype(np.float64) for k, v in arrays.items()
        }
        return description

    def sequence(self, modules, where: str) -> list[dict]:
        """The descriptions of ``modules`` in order; ``AdaptiveAvgPool2d(1)`` then ``Flatten`` is one
        GlobalAvgPool2D, and an Identity is nothing."""
        nn, out, modules = self.torch.nn, [], list(modules)
        i = 0
        while i < len(modules):
            module = modules[i]
            pooled = isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
            if pooled and i + 1 < len(modules) and self._flattens(modules[i + 1]):
                out.append(self.layer("GlobalAvgPool2D", {}))
                i += 2
                continue
            if not isinstance(module, nn.Identity):
                out.append(self.one(module, f"{where}{i}"))
            i += 1
        return out

    def _flattens(self, module) -> bool:
        return isinstance(module, self.torch.nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1)

    def one(self, module, where: str) -> dict:
        nn, classes = self.torch.nn, torch_classes(self.torch)
        if isinstance(module, nn.Sequential):
            layers = self.sequence(module, where + ".")
            return layers[0] if len(layers) == 1 else self.layer("Sequential", {"layers": layers})
        if isinstance(module, classes["Residual"]):
            shortcut = None if module.shortcut is None else self.one(module.shortcut, where + ".shortcut")
            return self.layer(
                "Residual", {"body": self.one(module.body, where + ".body"), "shortcut": shortcut}
            )
        read = _READERS.get(type(module).__name__) if type(module).__module__.startswith("torch.nn") else None
        if isinstance(module, classes["RowGRU"]):
            read = _read_gru
        if read is None:
            kind = f"{type(module).__module__}.{type(module).__name__}"
            raise ConfigError(f"from_torch: no cnnx layer for {kind} "
                              f"(at {where})")  # fmt: skip
        return read(self, module, where)


def _fail(module, where: str, what: str):
    raise ConfigError(f"from_torch: {type(module).__name__} at {where}: {what} has no cnnx counterpart")


def _same_pair(value, module, where, what):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or pair[0] != pair[1]:
        _fail(module, where, f"{what} {value}")
    return pair[0]


def _read_conv(reading, module, where):
    if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros":
        _fail(module, where, "a grouped, dilated or non-zero-padded convolution")
    kh, kw = module.kernel_size
    stride = _same_pair(module.stride, module, where, "stride")
    if module.padding == "same":
        padding = "same"
    elif module.padding == "valid":
        padding = 0
    else:
        padding = _same_pair(module.padding, module, where, "padding")
        if stride == 1 and kh == kw and kh % 2 and kh > 1 and padding == (kh - 1) // 2:
            padding = "same"  # what keeps the size, as cnnx names it
    arrays = {"W": module.weight} | ({"b": module.bias} if module.bias is not None else {})
    config = {"in_channels": module.in_channels, "out_channels": module.out_channels, "kernel_size": [kh, kw],
              "stride": stride, "padding": padding, "bias": module.bias is not None}  # fmt: skip
    return reading.layer("Conv2D", config, **arrays)


def _read_pool(kind):
    def read(reading, module, where):
        if _same_pair(module.padding, module, where, "padding") or module.ceil_mode:
            _fail(module, where, "padded or ceil-mode pooling")
        if kind == "MaxPool2D" and (_same_pair(module.dilation, module, where, "dilation") != 1
                                    or module.return_indices):  # fmt: skip
            _fail(module, where, "dilated pooling or returned indices")
        k = _same_pair(module.kernel_size, module, where, "kernel_size")
        stride = k if module.stride is None else _same_pair(module.stride, module, where, "stride")
        return reading.layer(kind, {"kernel_size": k, "stride": stride})

    return read


def _read_linear(reading, module, where):
    arrays = {"W": module.weight.T} | ({"b": module.bias} if module.bias is not None else {})
    config = {"in_features": module.in_features, "out_features": module.out_features,
              "bias": module.bias is not None}  # fmt: skip
    return reading.layer("Dense", config, **arrays)


def _read_batch_norm(reading, module, where):
    if not module.affine or not module.track_running_stats or module.momentum is None:
        _fail(module, where, "batch norm without affine parameters, running statistics or a momentum")
    kind = "BatchNorm2D" if isinstance(module, reading.torch.nn.BatchNorm2d) else "BatchNorm1D"
    config = {
        "num_features": module.num_features,
        "momentum": float(module.momentum),
        "eps": float(module.eps),
    }
    statistics = {"running_mean": module.running_mean, "running_var": module.running_var}
    return reading.layer(kind, config, gamma=module.weight, beta=module.bias, **statistics)


def _read_gru(reading, module, where):
    gru = module.gru
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias or not gru.batch_first or gru.proj_size:
        _fail(gru, where, "a GRU of more layers, both directions, no bias or projections")
    arrays = {
        "W_i": gru.weight_ih_l0.T,
        "W_h": gru.weight_hh_l0.T,
        "b_i": gru.bias_ih_l0,
        "b_h": gru.bias_hh_l0,
    }
    return reading.layer("GRU", {"input_size": gru.input_size, "hidden_size": gru.hidden_size}, **arrays)


def _read_flatten(reading, module, where):
    if not reading._flattens(module):
        _fail(module, where, f"flattening dims {module.start_dim} to {module.end_dim}")
    return reading.layer("Flatten", {})


_READERS = {
    "Conv2d": _read_conv,
    "MaxPool2d": _read_pool("MaxPool2D"),
    "AvgPool2d": _read_pool("AvgPool2D"),
    "Linear": _read_linear,
    "BatchNorm1d": _read_batch_norm,
    "BatchNorm2d": _read_batch_norm,
    "ReLU": lambda reading, module, where: reading.layer("ReLU", {}),
    "Dropout": lambda reading, module, where: reading.layer("Dropout", {"p": float(module.p)}),
    "Flatten": _read_flatten,
}


def from_torch(module, *, input_shape=None, dtype: str = "float32", backend=None, name: str = "torch"):
    """A cnnx Sequential computing what ``module`` computes in evaluation, with copies of its weights and
    running statistics. ``module``: a ``torch.nn.Sequential`` (or one module) of Conv2d, MaxPool2d,
    AvgPool2d, AdaptiveAvgPool2d(1) then Flatten, Linear, Flatten, ReLU, Dropout, BatchNorm1d/2d,
    Identity, and :func:`torch_classes`' Residual and RowGRU (what :func:`to_torch` makes).
    ``input_shape``: one sample's (default (1, 28, 28)). ConfigError (one line) naming a module that
    has no cnnx counterpart."""
    from cnnx.errors import CnnxError
    from cnnx.nn.model import build_from_architecture

    torch = _torch()
    reading = _Reading(torch)
    with torch.no_grad():
        children = module if isinstance(module, torch.nn.Sequential) else [module]
        architecture = reading.sequence(children, "")
    if not architecture:
        raise ConfigError("from_torch: the module has no layer cnnx could build")
    try:
        shape = (1, 28, 28) if input_shape is None else tuple(input_shape)
        model = build_from_architecture(
            architecture, backend=backend, dtype=dtype, input_shape=shape, name=name
        )
    except CnnxError as exc:
        raise ConfigError(f"from_torch: {exc}") from None
    state = model.state_dict()
    state.update(state_by_name(architecture, lambda d: reading.weights[id(d)]))
    model.load_state_dict(state)
    return model
