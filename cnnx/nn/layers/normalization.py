"""Batch normalisation over dense features (BatchNorm1D) and over image channels (BatchNorm2D)."""

from __future__ import annotations

from cnnx.errors import ConfigError

from .. import functional as F
from ..registry import Number, Size, register_layer
from ..shards import ShardSet
from .base import Layer

FIELDS = {
    "num_features": Size(),
    "momentum": Number(0, 1),
    "eps": Number(0, 1, low_open=True, high_open=True),
}


def _param_shapes(config) -> dict:
    """gamma and beta, one number per feature each."""
    return {"gamma": (config["num_features"],), "beta": (config["num_features"],)}


def _features_shape(config, input_shape) -> tuple[int, ...]:
    """BatchNorm1D keeps (features,) inputs of its size."""
    if input_shape != (config["num_features"],):
        raise ConfigError(
            f"BatchNorm1D({config['num_features']}) does not fit an input of shape {input_shape}"
        )
    return input_shape


def _channels_shape(config, input_shape) -> tuple[int, ...]:
    """BatchNorm2D keeps (C, H, W) inputs of its channels."""
    if len(input_shape) != 3 or input_shape[0] != config["num_features"]:
        raise ConfigError(
            f"BatchNorm2D({config['num_features']}) does not fit an input of shape {input_shape}"
        )
    return input_shape


class _BatchNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per feature (a channel of an image).

    Training normalises with the batch's own mean and (biased) variance and moves the buffers
    ``running_mean`` and ``running_var`` towards them: ``running = (1 - momentum) * running + momentum *
    batch``, with the unbiased variance, as PyTorch does. Evaluation normalises with the running
    averages. Both buffers are saved with the model and restored on resuming. Training needs more than
    one value per feature: a batch of one (of 1x1 images for BatchNorm2D) is a ConfigError.

    Mathematics: docs/math.md#batch-normalisation, docs/math.md#batch-norm-backward
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, *, backend=None,
                 dtype="float32"):  # fmt: skip
        super().__init__(backend=backend, dtype=dtype)
        self.num_features, self.momentum, self.eps = int(num_features), float(momentum), float(eps)
        shapes = self.param_shapes()
        self.params["gamma"] = self.xp.ones(shapes["gamma"], dtype=self.dtype)
        self.params["beta"] = self._zeros(shapes["beta"])
        self.buffers["running_mean"] = self._zeros((self.num_features,))
        self.buffers["running_var"] = self.xp.ones((self.num_features,), dtype=self.dtype)

    # A subclass says how its input becomes a contiguous (N, positions, features) array, and back.
    def _groups(self, x):
        raise NotImplementedError

    def _ungroup(self, groups, shape):
        raise NotImplementedError

    def _sample_sums(self, g, h=None, fused=None, counted=False):
        """Per-sample, per-feature sums of ``g`` (or of ``g * h``) over every position, (N, features),
        cut over the backend's threads by samples. Each sample's sum is taken on its own (a product with
        a vector of ones, or an einsum), which gives the same numbers however the batch is cut, into
        shards or over threads; the batch's sum then adds the samples' sums in sample order (see
        :meth:`cnnx.nn.shards.ShardSet.batch_sum`): shorter runs of float32 additions than one sum over
        every row. ``fused(s)``, when given, runs on each part first (an elementwise pass that writes
        ``h``). ``counted``: each row ends with one more number, the sample's count of positions."""
        xp, n, features = self.xp, g.shape[0], g.shape[2]
        sums = xp.empty((n, features + counted), dtype=g.dtype)
        if counted:
            sums[:, features] = g.shape[1]
        ones = xp.ones((g.shape[1],), dtype=g.dtype)

        def part(s):
            if fused is not None:
                fused(s)
            into = sums[s, :features] if counted else sums[s]
            into[...] = xp.matmul(ones, g[s]) if h is None else xp.einsum("npc,npc->nc", g[s], h[s])

        self.backend.split_batch(part, n, g.size * (1 if fused is None else 2))
        return sums

    def _tiled(self, v, g):
        """``v`` (one number per feature) repeated for every position of a sample: the elementwise passes
        then run over (N, positions * features) with long inner loops, where NumPy's broadcasting of a
        (features,) vector would run loops of only ``features`` numbers (about twice as slow)."""
        return self.xp.tile(v, g.shape[1])

    def forward(self, x, train=True, draws=None):
        ys, saved = self.forward_shards([x], train, ShardSet.whole(x.shape[0], draws))
        return ys[0], (saved[0] if train else None)

    def backward(self, saved, dy, need_dx=True):
        dxs, grads = self.backward_shards([saved], [dy], need_dx, ShardSet.whole(dy.shape[0]))
        return dxs[0], grads[0]

    def forward_shards(self, xs, train, shards):
        """The shards of one batch normalised with the whole batch's statistics (synchronised batch
        norm): each worker's per-sample sums meet the others' in :meth:`ShardSet.batch_sum`, so the mean
        and variance are those of the whole batch, to the bit, however it is cut."""
        gs = [self._groups(x) for x in xs]  # (rows, positions, features) each, contiguous
        for g in gs:
            if g.shape[2] != self.num_features:
                raise ValueError(
                    f"{type(self).__name__} expects {self.num_features} features, got {g.shape[2]}"
                )
        if not train:
            gamma, beta = self.params["gamma"], self.params["beta"]
            scale = gamma / self.xp.sqrt(self.buffers["running_var"] + self.eps)
            shift = beta - self.buffers["running_mean"] * scale
            tiles = [self._tiled(v, gs[0]) for v in (scale, shift)] if gs else None
            return [self._evaluate(g, x.shape, *tiles) for g, x in zip(gs, xs, strict=True)], None
        xp, like = self.xp, self.params["gamma"]
        # Each sample's row carries its count of positions after its sums, so that a worker with no
        # shard of this batch (it still meets the others, twice) learns the batch's count too.
        counted = xp.zeros((self.num_features + 1,), dtype=like.dtype)
        sums = shards.batch_sum(xp, [self._sample_sums(g, counted=True) for g in gs], counted)
        # Samples x positions; a worker with no shard reads it from the sums (exact: far below 2 ** 24).
        m = shards.n * gs[0].shape[1] if gs else int(self.backend.to_host(sums[-1:])[0])
        if m < 2:
            shape = (shards.n, *xs[0].shape[1:]) if xs else (shards.n, "...")
            raise ConfigError(
                f"{type(self).__name__} cannot normalise a training batch with one value per feature "
                f"(input {shape}): use a batch size of 2 or more"
            )
        mean = sums[:-1] / m
        normed = [xp.empty_like(g) for g in gs]  # x - mean until the variance is known, then normalised
        mean_t = self._tiled(mean, gs[0]) if gs else None

        def centred(g, out):
            flat, into = g.reshape(g.shape[0], -1), out.reshape(g.shape[0], -1)
            return lambda s: xp.subtract(flat[s], mean_t, out=into[s])

        squares = [self._sample_sums(c, c, fused=centred(g, c)) for g, c in zip(gs, normed, strict=True)]
        var = shards.batch_sum(xp, squares, like) / m
        inv_std = 1 / xp.sqrt(var + self.eps)
        tiles = (
            [self._tiled(v, gs[0]) for v in (inv_std, self.params["gamma"], self.params["beta"])]
            if gs
            else []
        )
        ys = [self._normalise(c, x.shape, *tiles) for c, x in zip(normed, xs, strict=True)]
        if shards.leader:  # the running averages are written once where the workers share them
            keep = 1 - self.momentum
            self.buffers["running_mean"][...] = keep * self.buffers["running_mean"] + self.momentum * mean
            unbiased = var * (m / (m - 1))
            self.buffers["running_var"][...] = keep * self.buffers["running_var"] + self.momentum * unbiased
        return ys, [(c, inv_std) for c in normed]

    def _evaluate(self, g, shape, scale_t, shift_t):
        """x * scale + shift with the running averages' scale and shift, tiled."""
        xp, n = self.xp, g.shape[0]
        flat, y = g.reshape(n, -1), xp.empty((n, g[0].size), dtype=g.dtype)

        def evaluate(s):
            xp.multiply(flat[s], scale_t, out=y[s])
            y[s] += shift_t

        self.backend.split_batch(evaluate, n, g.size)
        return self._ungroup(y, shape)

    def _normalise(self, centred, shape, inv_std_t, gamma_t, beta_t):
        """gamma * centred * inv_std + beta (tiled); ``centred`` becomes the normalised values (kept for
        the backward)."""
        xp, n = self.xp, centred.shape[0]
        normed, y = centred.reshape(n, -1), xp.empty((n, centred[0].size), dtype=centred.dtype)

        def scale(s):
            normed[s] *= inv_std_t
            xp.multiply(normed[s], gamma_t, out=y[s])
            y[s] += beta_t

        self.backend.split_batch(scale, n, 3 * centred.size)
        return self._ungroup(y, shape)

    def backward_shards(self, saved, dys, need_dx, shards):
        """Each shard's gradients of gamma and beta are its own samples' sums; the input gradient needs
        the whole batch's, which the workers meet for (see :meth:`forward_shards`)."""
        xp, like = self.xp, self.params["gamma"]
        gs = [self._groups(dy) for dy in dys]
        dbetas = [self._sample_sums(g) for g in gs]
        dgammas = [self._sample_sums(g, normed) for g, (normed, _) in zip(gs, saved, strict=True)]
        grads = [
            {"gamma": dg.sum(axis=0), "beta": db.sum(axis=0)} for dg, db in zip(dgammas, dbetas, strict=True)
        ]
        if not need_dx:
            return [None] * len(dys), grads
        both = shards.batch_sum(xp, [xp.concatenate([dg, db], axis=1) for dg, db in zip(dgammas, dbetas,
                                                                                           strict=True)],
                                xp.concatenate([like, like]))  # fmt: skip
        dgamma, dbeta = both[: self.num_features], both[self.num_features :]
        if not dys:
            return [], grads
        # d/dx of gamma * (x - mean) * inv_std, with mean and var taken from the batch itself:
        # k * (m * dy - dbeta - normed * dgamma) with k = gamma * inv_std / m (inv_std: the batch's).
        m, inv_std = shards.n * gs[0].shape[1], saved[0][1]
        k = self.params["gamma"] * inv_std / m
        tiles = [self._tiled(v, gs[0]) for v in (k * m, k * dgamma, k * dbeta)]
        return [self._input_grad(g, normed, dy.shape, *tiles)
                for g, (normed, _), dy in zip(gs, saved, dys, strict=True)], grads  # fmt: skip

    def _input_grad(self, g, normed, shape, a_t, b_t, c_t):
        """a * dy - c - normed * b, the tiled factors of the formula above."""
        xp, n = self.xp, g.shape[0]
        flat, dx = g.reshape(n, -1), xp.empty((n, g[0].size), dtype=g.dtype)
        normed = normed.reshape(n, -1)

        def part(s):
            xp.multiply(flat[s], a_t, out=dx[s])
            dx[s] -= c_t
            dx[s] -= normed[s] * b_t

        self.backend.split_batch(part, n, 4 * g.size)
        return self._ungroup(dx, shape)

    def config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


@register_layer(fields=FIELDS, param_shapes=_param_shapes, output_shape=_features_shape)
class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, features) inputs, per feature (after a Dense layer).

    Mathematics: docs/math.md#batchnorm1d
    """

    def _groups(self, x):
        if x.ndim != 2:
            raise ValueError(f"BatchNorm1D expects inputs (N, {self.num_features}), got {tuple(x.shape)}")
        return self.xp.ascontiguousarray(x)[:, None, :]

    def _ungroup(self, groups, shape):
        return groups.reshape(shape)


@register_layer(fields=FIELDS, param_shapes=_param_shapes, output_shape=_channels_shape)
class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, per channel, over the batch and every pixel. Computed
    on channels-last rows: the result keeps the layers' NHWC memory.

    Mathematics: docs/math.md#batchnorm2d
    """

    def _groups(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2D expects inputs (N, C, H, W), got {tuple(x.shape)}")
        n, c, h, w = x.shape
        return self.xp.ascontiguousarray(F.to_nhwc(x)).reshape(n, h * w, c)

    def _ungroup(self, groups, shape):
        n, c, h, w = shape
        return F.to_nchw(groups.reshape(n, h, w, c))
