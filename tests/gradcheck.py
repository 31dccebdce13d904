"""Finite-difference gradient checks for any layer or model on any backend (float64)."""

from __future__ import annotations

import numpy as np

from helpers import numerical_gradient, rel_error


def check_gradients(module, x_host, rng, *, max_coords=None, eps=1e-6):
    """Compare backward() with central differences of L = sum(forward(x)[0] * G) for a fixed random G.

    Returns {"x": err, "<param>": err, ...}. With ``max_coords`` only that many randomly chosen
    coordinates of each array are differenced (a whole CNN has too many to do them all).
    """
    backend = module.backend
    x_dev = backend.to_device(x_host, module.dtype)
    y, saved = module.forward(x_dev, train=True)
    g = rng.standard_normal(y.shape)
    g_dev = backend.to_device(g, module.dtype)
    dx, grads = module.backward(saved, g_dev)
    analytic = {"x": backend.to_host(dx)}
    analytic.update({name: backend.to_host(grads[name]) for name, _, _ in module.named_parameters()})

    def loss_at(x_now):
        out, _ = module.forward(backend.to_device(x_now, module.dtype), train=True)
        return float(np.sum(backend.to_host(out) * g))

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
