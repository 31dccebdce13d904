"""Batch normalisation over dense features (BatchNorm1D) and over image channels (BatchNorm2D)."""

from __future__ import annotations

from cnnx.errors import ConfigError

from .. import functional as F
from ..registry import Number, Size, register_layer
from .base import Layer

FIELDS = {"num_features": Size(), "momentum": Number(0, 1), "eps": Number(0, 1, high_open=True)}


class _BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per feature (a channel of an image).

    Training normalises with the batch's own mean and (biased) variance and moves the buffers
    ``running_mean`` and ``running_var`` towards them: ``running = (1 - momentum) * running + momentum *
    batch``, with the unbiased variance, as PyTorch does. Evaluation normalises with the running
    averages. Both buffers are saved with the model and restored on resuming. Training needs more than
    one value per feature: a batch of one (of 1x1 images for BatchNorm2D) is a ConfigError.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, *, backend=None,
                 dtype="float32"):  # fmt: skip
        super().__init__(backend=backend, dtype=dtype)
        if not FIELDS["num_features"].ok(num_features):
            raise ValueError(f"{type(self).__name__} num_features must be {FIELDS['num_features'].what}")
        for name, value in (("momentum", momentum), ("eps", eps)):
            if not FIELDS[name].ok(value) or (name == "eps" and value <= 0):
                raise ValueError(f"{type(self).__name__} {name} must be {FIELDS[name].what}, got {value!r}")
        self.num_features, self.momentum, self.eps = int(num_features), float(momentum), float(eps)
        self.params["gamma"] = self.xp.ones((self.num_features,), dtype=self.dtype)
        self.params["beta"] = self._zeros((self.num_features,))
        self.buffers["running_mean"] = self._zeros((self.num_features,))
        self.buffers["running_var"] = self.xp.ones((self.num_features,), dtype=self.dtype)
        self.saved = None

    # A subclass says how its input becomes rows of features and back.
    def _rows(self, x):
        raise NotImplementedError

    def _unrows(self, rows, shape):
        raise NotImplementedError

    def forward(self, x, train=True):
        rows = self._rows(x)  # (M, features)
        if rows.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} features, got {rows.shape[1]}"
            )
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            m = rows.shape[0]
            if m < 2:
                raise ConfigError(
                    f"{type(self).__name__} cannot normalise a training batch with one value per feature "
                    f"(input {tuple(x.shape)}): use a batch size of 2 or more"
                )
            mean = rows.mean(axis=0)
            centred = rows - mean
            var = (centred * centred).mean(axis=0)
            inv_std = 1 / self.xp.sqrt(var + self.eps)
            normed = centred * inv_std
            keep = 1 - self.momentum
            self.buffers["running_mean"][...] = keep * self.buffers["running_mean"] + self.momentum * mean
            unbiased = var * (m / (m - 1))
            self.buffers["running_var"][...] = keep * self.buffers["running_var"] + self.momentum * unbiased
            self.saved = (normed, inv_std, x.shape)
        else:
            inv_std = 1 / self.xp.sqrt(self.buffers["running_var"] + self.eps)
            normed = (rows - self.buffers["running_mean"]) * inv_std
            self.saved = None
        return self._unrows(normed * gamma + beta, x.shape)

    def backward(self, dy):
        normed, inv_std, shape = self.saved
        self.saved = None
        rows = self._rows(dy)
        m = rows.shape[0]
        dbeta = rows.sum(axis=0)
        dgamma = (rows * normed).sum(axis=0)
        self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
        # d/dx of gamma * (x - mean) * inv_std, with mean and var taken from the batch itself.
        dx = (self.params["gamma"] * inv_std / m) * (m * rows - dbeta - normed * dgamma)
        return self._unrows(dx, shape)

    def config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


@register_layer(fields=FIELDS, parameters=lambda c: 2 * c["num_features"])
class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, features) inputs, per feature (after a Dense layer)."""

    def _rows(self, x):
        if x.ndim != 2:
            raise ValueError(f"BatchNorm1D expects inputs (N, {self.num_features}), got {tuple(x.shape)}")
        return x

    def _unrows(self, rows, shape):
        return rows

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.num_features,):
            raise ConfigError(
                f"BatchNorm1D({self.num_features}) does not fit an input of shape {input_shape}"
            )
        return tuple(input_shape)


@register_layer(fields=FIELDS, parameters=lambda c: 2 * c["num_features"])
class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel, over the batch and every pixel. Computed
    on channels-last rows: the result keeps the layers' NHWC memory."""

    def _rows(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2D expects inputs (N, C, H, W), got {tuple(x.shape)}")
        return F.to_nhwc(x).reshape(-1, x.shape[1])

    def _unrows(self, rows, shape):
        n, c, h, w = shape
        return F.to_nchw(rows.reshape(n, h, w, c))

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.num_features:
            raise ConfigError(
                f"BatchNorm2D({self.num_features}) does not fit an input of shape {input_shape}"
            )
        return tuple(input_shape)
