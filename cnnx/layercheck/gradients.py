"""Finite-difference gradient checks for any layer or model on any backend (float64), and the one number
that says how far two arrays are apart. ``cnnx check-layer`` and the tests share them."""

from __future__ import annotations

import numpy as np  # host: the differences are taken on the host, in float64


def rel_error(a, b) -> float:
    """max |a - b| / max(|a|, |b|, tiny): one number that says how far two arrays are apart."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6, indices=None) -> np.ndarray:
    """Central differences of the scalar function f at x (float64, host), one coordinate at a time.

    With ``indices`` (flat positions into x) only those coordinates are differenced and the result is
    the vector of their partial derivatives; without, the whole gradient in x's shape.
    """
    flat = x.reshape(-1)
    picks = range(flat.size) if indices is None else indices
    partials = np.zeros(len(picks), dtype=np.float64)
    for n, i in enumerate(picks):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        partials[n] = (up - down) / (2 * eps)
    return partials.reshape(x.shape) if indices is None else partials


def check_gradients(module, x_host, rng, *, max_coords=None, eps=1e-6) -> dict[str, float]:
    """Compare backward() with central differences of L = sum(forward(x)[0] * G) for a fixed random G.

    Returns {"x": err, "<param>": err, ...}. With ``max_coords`` only that many randomly chosen
    coordinates of each array are differenced (a whole CNN has too many to do them all). Every forward
    starts from the random streams' state of the first, so a stochastic layer (dropout) draws the same
    mask each time and its loss is a function of x and the parameters alone.
    """
    backend = module.backend
    streams = {name: rng_.bit_generator.state for name, rng_ in module.named_streams()}

    def forward(x_now):
        for name, stream in module.named_streams():
            stream.bit_generator.state = streams[name]
        return module.forward(backend.to_device(x_now, module.dtype), train=True)

    y, saved = forward(x_host)
    g = rng.standard_normal(y.shape)
    dx, grads = module.backward(saved, backend.to_device(g, module.dtype))
    analytic = {"x": backend.to_host(dx)}
    analytic.update({name: backend.to_host(grads[name]) for name, _, _ in module.named_parameters()})

    def loss_at(x_now):
        return float(np.sum(backend.to_host(forward(x_now)[0]) * g))

    errors = {}
    x_work = np.array(x_host, dtype=np.float64)
    errors["x"] = _compare(lambda: loss_at(x_work), x_work, analytic["x"], rng, max_coords, eps, lambda: None)
    for name, param, _ in list(module.named_parameters()):
        host = backend.to_host(param).astype(np.float64)

        def write_back(host=host, param=param):
            param[...] = backend.to_device(host, module.dtype)

        errors[name] = _compare(
            lambda: loss_at(x_work), host, analytic[name], rng, max_coords, eps, write_back
        )
        write_back()
    return errors


def _compare(f, array, analytic, rng, max_coords, eps, sync):
    def f_synced():
        sync()
        return f()

    if max_coords is None or array.size <= max_coords:
        numeric = numerical_gradient(f_synced, array, eps)
        return rel_error(analytic, numeric)
    picks = rng.choice(array.size, size=max_coords, replace=False)
    numeric = numerical_gradient(f_synced, array, eps, indices=picks)
    sync()
    return rel_error(analytic.reshape(-1)[picks], numeric)
