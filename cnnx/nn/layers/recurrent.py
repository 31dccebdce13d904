"""A gated recurrent unit (GRU) over sequences, or over images read row by row."""

from __future__ import annotations

import math

from cnnx.errors import ConfigError

from ..registry import INIT, Size, register_layer
from .base import Layer


def _sigmoid(xp, a):
    """1 / (1 + exp(-a)), written through tanh so that no exp overflows for large |a|."""
    return 0.5 * (1 + xp.tanh(0.5 * a))


def _param_shapes(d: int, h: int) -> dict:
    """W_i (D, 3H) and W_h (H, 3H), their columns in gate order [r, z, n], then b_i and b_h (3H,)."""
    return {"W_i": (d, 3 * h), "W_h": (h, 3 * h), "b_i": (3 * h,), "b_h": (3 * h,)}


def _output_shape(config, input_shape) -> tuple[int]:
    """(H,) for (T, D) sequences or (C, R, W) images read row by row (D = C*W), D being input_size."""
    if len(input_shape) == 3:
        c, _, w = input_shape
        size = c * w
    elif len(input_shape) == 2:
        size = input_shape[1]
    else:
        raise ConfigError(f"GRU expects (T, D) sequences or (C, H, W) images, got {input_shape}")
    if size != config["input_size"]:
        raise ConfigError(f"GRU input_size {config['input_size']} does not fit inputs of shape {input_shape}")
    return (config["hidden_size"],)


@register_layer(
    fields={"input_size": Size(), "hidden_size": Size(), "init": INIT},
    param_shapes=lambda c: _param_shapes(c["input_size"], c["hidden_size"]),
    output_shape=_output_shape,
    # Besides the output: the input as a sequence (a copy), then every step's input products (T, 3H).
    scratch=lambda c, shape, _: math.prod(shape) + math.prod(shape) // c["input_size"] * 3 * c["hidden_size"],
)
class GRU(Layer):
    """A GRU that reads a sequence and gives its final hidden state: (N, T, D) -> (N, H).

    An image batch (N, C, R, W) is read as R steps of C*W numbers: a 28x28 grey image is 28 rows of
    28 pixels. With h_0 = 0 and, at each step t, the input x_t (PyTorch's convention, where the reset
    gate scales the hidden part of the candidate after its product):

        r_t = sigmoid(x_t W_ir + b_ir + h_{t-1} W_hr + b_hr)             reset gate
        z_t = sigmoid(x_t W_iz + b_iz + h_{t-1} W_hz + b_hz)             update gate
        n_t = tanh(x_t W_in + b_in + r_t * (h_{t-1} W_hn + b_hn))        candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Parameters: ``W_i`` (D, 3H) and ``W_h`` (H, 3H), their columns in gate order [r, z, n], and the
    biases ``b_i``, ``b_h`` (3H,). The input products of every step are one matrix product before the
    loop; backpropagation through time runs the steps backwards.

    Mathematics: docs/math.md#gru, docs/math.md#gru-backpropagation-through-time
    """

    def __init__(self, input_size: int, hidden_size: int, *, init: str = "xavier", rng=None, backend=None,
                 dtype="float32"):  # fmt: skip
        super().__init__(backend=backend, dtype=dtype)
        self.input_size, self.hidden_size, self.init = int(input_size), int(hidden_size), init
        shapes = self.param_shapes()
        self.params["W_i"] = self._new_weight(shapes["W_i"], init, rng)
        self.params["W_h"] = self._new_weight(shapes["W_h"], init, rng)
        self.params["b_i"] = self._zeros(shapes["b_i"])
        self.params["b_h"] = self._zeros(shapes["b_h"])

    def _sequence(self, x):
        """(N, T, D) from the input: a sequence batch as it is, an image batch row by row."""
        if x.ndim == 4:
            n, c, rows, w = x.shape
            x = x.transpose(0, 2, 1, 3).reshape(n, rows, c * w)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"GRU expects (N, T, {self.input_size}) or images with C*W = {self.input_size}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
        return x

    def forward(self, x, train=True, draws=None):
        xp, shape = self.xp, x.shape
        seq = self._sequence(x)
        n, steps, d = seq.shape
        hs = self.hidden_size
        w_h, b_h = self.params["W_h"], self.params["b_h"]
        inputs = seq.reshape(n * steps, d) @ self.params["W_i"] + self.params["b_i"]
        inputs = inputs.reshape(n, steps, 3 * hs)  # every step's input products, in one matrix product
        h = xp.zeros((n, hs), dtype=self.dtype)
        history = []
        previous = xp.empty((steps, n, hs), dtype=self.dtype) if train else None  # h_{t-1} of every step
        for t in range(steps):
            hidden = h @ w_h + b_h  # (N, 3H)
            r = _sigmoid(xp, inputs[:, t, :hs] + hidden[:, :hs])
            z = _sigmoid(xp, inputs[:, t, hs : 2 * hs] + hidden[:, hs : 2 * hs])
            candidate = xp.tanh(inputs[:, t, 2 * hs :] + r * hidden[:, 2 * hs :])
            if train:
                previous[t] = h
                history.append((r, z, candidate, hidden[:, 2 * hs :]))
            h = (1 - z) * candidate + z * h
        return h, ((seq, previous, history, shape) if train else None)

    def backward(self, saved, dy, need_dx=True):
        xp = self.xp
        seq, previous, history, shape = saved
        n, steps, d = seq.shape
        hs = self.hidden_size
        w_h = self.params["W_h"]
        d_inputs = xp.empty((n, steps, 3 * hs), dtype=self.dtype)
        d_hidden = xp.empty((steps, n, 3 * hs), dtype=self.dtype)  # what reaches h_{t-1} W_h + b_h
        dh = dy
        for t in reversed(range(steps)):
            r, z, candidate, hidden_n = history[t]
            d_candidate = dh * (1 - z) * (1 - candidate * candidate)  # through tanh
            dz = dh * (previous[t] - candidate) * z * (1 - z)  # through the update gate's sigmoid
            dr = d_candidate * hidden_n * r * (1 - r)  # through the reset gate's sigmoid
            d_inputs[:, t, :hs], d_inputs[:, t, hs : 2 * hs], d_inputs[:, t, 2 * hs :] = dr, dz, d_candidate
            d_hidden[t, :, :hs], d_hidden[t, :, hs : 2 * hs] = dr, dz
            xp.multiply(d_candidate, r, out=d_hidden[t, :, 2 * hs :])
            dh = dh * z + d_hidden[t] @ w_h.T
        # The weight gradients of every step at once: one product over all (step, sample) rows.
        flat_h, flat = d_hidden.reshape(steps * n, 3 * hs), d_inputs.reshape(n * steps, 3 * hs)
        grads = {"W_h": previous.reshape(steps * n, hs).T @ flat_h, "b_h": flat_h.sum(axis=0),
                 "W_i": seq.reshape(n * steps, d).T @ flat, "b_i": flat.sum(axis=0)}  # fmt: skip
        if not need_dx:
            return None, grads
        dx = (flat @ self.params["W_i"].T).reshape(n, steps, d)
        if len(shape) == 4:
            n, c, rows, w = shape
            dx = dx.reshape(n, rows, c, w).transpose(0, 2, 1, 3)
        return dx, grads

    def config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "init": self.init}
