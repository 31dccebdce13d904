"""Finding where a training run stopped being finite, without slowing down the steps that stay finite.

The normal step reads nothing back: the fit loop notices a non-finite loss only at its periodic loss
read-back. Then, and only then, :class:`Snapshot` (device copies of the weights and optimizer state,
taken at the last read-back that was still finite) lets the loop replay the batches since then with
:func:`checked_step`, which reads every activation, gradient and updated weight back to the host and
names the first layer where a NaN or an infinity appears.

In skip mode, :func:`step_is_finite` reduces the loss and every gradient to one flag on the device and
reads that flag back once per step (one synchronisation a step, and one extra pass over the gradients):
that is the price of never applying a bad update.
"""

from __future__ import annotations

from cnnx.errors import DivergenceError
from cnnx.nn.losses import softmax_cross_entropy
from cnnx.nn.random import generator_from_state, pack_state


def step_is_finite(model, loss) -> bool:
    """Whether ``loss`` and every gradient of ``model`` are finite; one host read-back."""
    xp = model.xp
    ok = xp.isfinite(loss)
    for _, _, grad in model.named_parameters():
        if grad is not None:
            ok = ok & xp.isfinite(grad).all()
    return bool(model.backend.to_host(ok))


def _finite(backend, array) -> bool:
    return bool(backend.to_host(backend.xp.isfinite(array).all()))


def _name(i: int, layer) -> str:
    return f"layer {i} ({type(layer).__name__})"


def _first_bad_weight(model) -> tuple[int, object, str] | None:
    """(index, layer, parameter name) of the first top-level layer with a non-finite weight, or None."""
    for i, layer in enumerate(model.layers):
        for name, param, _ in layer.named_parameters(f"{i}."):
            if not _finite(model.backend, param):
                return i, layer, name
    return None


def check_weights(model) -> None:
    """DivergenceError naming the first layer whose weights are not all finite."""
    bad = _first_bad_weight(model)
    if bad is not None:
        raise DivergenceError(f"the weights of {_name(bad[0], bad[1])} ({bad[2]}) are not finite")


def checked_step(model, optimizer, x, labels, *, update: bool = True) -> str | None:
    """One training step that checks every intermediate value on the host, in the order they are
    computed; returns where the first non-finite value appeared, or None when the whole step stayed
    finite (the update applied only when ``update``). Slow by design: for diagnosis only."""
    backend = model.backend
    bad = _first_bad_weight(model)
    if bad is not None:
        return f"the weights of {_name(bad[0], bad[1])} ({bad[2]}) were already not finite"
    h, saved = x, []
    for i, layer in enumerate(model.layers):
        h, kept = layer.forward(h, True)
        saved.append(kept)
        if not _finite(backend, h):
            return f"{_name(i, layer)} forward output"
    loss, dy = softmax_cross_entropy(model.xp, h, labels)
    if not _finite(backend, loss):
        return "the loss (softmax cross-entropy of finite logits)"
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        dy, grads = layer.backward(saved[i], dy)
        layer.set_grads(grads)
        for key, _, grad in layer.named_parameters(f"{i}."):
            if grad is not None and not _finite(backend, grad):
                return f"{_name(i, layer)} gradient of {key}"
        if not _finite(backend, dy):
            return f"{_name(i, layer)} backward output"
    if not update:
        return None
    optimizer.step()
    bad = _first_bad_weight(model)
    if bad is not None:
        return f"{_name(bad[0], bad[1])} ({bad[2]}) after the {optimizer.name} update"
    return None


class Snapshot:
    """Device copies of a model's weights and layer buffers, its layers' random stream states and its
    optimizer's state, at one batch of an epoch. Taking one is a device-to-device copy (no
    synchronisation) and a few host numbers per stream; restoring puts it all back, so a replay draws
    the same random numbers as the steps it replays."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.batch = None

    def take(self, batch: int) -> None:
        self.batch = batch
        self.params = [param.copy() for _, param, _ in self.model.named_parameters()]
        self.buffers = [value.copy() for _, value in self.model.named_buffers()]
        self.streams = [pack_state(rng) for _, rng in self.model.named_streams()]
        self.steps = self.optimizer.steps
        self.state = {
            slot: {name: value.copy() for name, value in table.items()}
            for slot, table in self.optimizer.state.items()
        }

    def restore(self) -> None:
        for (_, param, _), saved in zip(self.model.named_parameters(), self.params, strict=True):
            param[...] = saved
        for (_, value), saved in zip(self.model.named_buffers(), self.buffers, strict=True):
            value[...] = saved
        for (_, rng), saved in zip(self.model.named_streams(), self.streams, strict=True):
            rng.bit_generator.state = generator_from_state(saved).bit_generator.state
        self.optimizer.steps = self.steps
        self.optimizer.state = {
            slot: {name: value.copy() for name, value in table.items()} for slot, table in self.state.items()
        }
