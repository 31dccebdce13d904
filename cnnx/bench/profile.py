"""``cnnx bench --profile``: where a training step's time goes, layer by layer.

cnnx's layers are timed as :func:`cnnx.training.train_step` runs them: in the model's running order (a
ReLU followed by a max pooling runs after it, on a quarter of the values), and backward down to the first
layer with parameters, which computes only its own gradients (no input gradient, which training never
needs). With ``compare="torch"`` the PyTorch twin of :class:`~cnnx.bench.timing.TorchRunner` (same
architecture, same weights) is timed the same way, module by module, through forward and backward hooks,
and each row shows both: the place to look when a preset trains slower than PyTorch.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

from cnnx.backends import get_backend
from cnnx.checks import plural

from .benchmark import EPOCH_IMAGES, _check_settings
from .memory import check_batch_fits, out_of_memory_as_error
from .timing import CnnxRunner, TorchRunner, machine_info, synthetic_batches


def _layer_label(layer) -> str:
    """The layer's type and its size settings, short: "Conv2D 1->32 3x3", "Dense 1600->128"."""
    config = layer.config()
    if "in_channels" in config:
        kernel = "x".join(map(str, config["kernel_size"]))
        return f"{layer.layer_type} {config['in_channels']}->{config['out_channels']} {kernel}"
    if "in_features" in config:
        return f"{layer.layer_type} {config['in_features']}->{config['out_features']}"
    sizes = [str(value) for value in config.values() if isinstance(value, int)]
    return " ".join([layer.layer_type, "/".join(sizes)]) if sizes else layer.layer_type


def profile_layers(
    model: str = "seed",
    batch_size: int = 128,
    *,
    device="cpu",
    dtype: str = "float32",
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 1,
    seed: int = 0,
    lr: float = 1e-3,
    compare: str | None = None,
) -> dict:
    """Milliseconds of each layer's forward and backward, the loss and the Adam step; with
    ``compare="torch"`` the same for the PyTorch twin, in ``torch_forward_ms`` and ``torch_backward_ms``.

    Each of ``repeats`` runs takes the median of ``steps`` steps after ``warmup``; each piece then
    reports its best run, which on a shared machine is the closest to its undisturbed cost (a median
    over runs would still count the runs another process slowed down). The two frameworks' runs
    alternate. The device is synchronised around every timed piece, so on a GPU the pieces add up to
    more than a free-running step. A layer that a training step never runs backward through (a
    Flatten in front of the first Dense) has None there.
    """
    _check_settings(model, (batch_size,), dtype, steps, warmup, repeats, compare)
    backend = get_backend(device)
    ours = CnnxRunner(model, backend, dtype, seed, lr)
    check_batch_fits(ours.model, batch_size)
    twin = TorchRunner(ours, machine_info()["blas"]["threads"] or 1) if compare else None
    layers = ours.model.layers
    keys = [(part, i) for part in ("forward", "backward") for i in range(len(layers))]
    keys += [("loss", 0), ("optimizer", 0)]
    frameworks = [("cnnx", ours, _cnnx_run)] + ([("torch", twin, _torch_run)] if twin is not None else [])
    best = {name: dict.fromkeys(keys, math.inf) for name, _, _ in frameworks}
    with out_of_memory_as_error(batch_size, backend):
        batches = synthetic_batches(batch_size, ours.model.input_shape, ours.model.output_shapes()[-1][0],
                                    seed)  # fmt: skip
        for repeat in range(repeats):
            for name, runner, run in frameworks if repeat % 2 == 0 else frameworks[::-1]:  # neither first
                times = run(runner, batches, steps, warmup, keys)
                for key, values in times.items():
                    if values:
                        best[name][key] = min(best[name][key], statistics.median(values) * 1e3)

    def ms(name, key):
        value = best[name][key]
        return None if math.isinf(value) else value

    rows = []
    for i, layer in enumerate(layers):
        row = {"layer": f"{i:>2} {_layer_label(layer)}", "forward_ms": ms("cnnx", ("forward", i)),
               "backward_ms": ms("cnnx", ("backward", i))}  # fmt: skip
        if twin is not None:
            row["torch_forward_ms"] = ms("torch", ("forward", i))
            row["torch_backward_ms"] = ms("torch", ("backward", i))
        rows.append(row)
    result = {
        "model": model,
        "batch_size": batch_size,
        "device": backend.describe(),
        "dtype": dtype,
        "steps": steps,
        "repeats": repeats,
        "compare": compare,
        "layers": rows,
    }
    for name, _, _ in frameworks:
        prefix = "" if name == "cnnx" else f"{name}_"
        result[f"{prefix}loss_ms"] = ms(name, ("loss", 0))
        result[f"{prefix}optimizer_ms"] = ms(name, ("optimizer", 0))
        total = sum(ms(name, key) or 0.0 for key in keys)
        result[f"{prefix}step_ms"] = total
        result[f"{prefix}seconds_per_epoch"] = EPOCH_IMAGES / batch_size * total / 1e3
    if twin is not None:
        result["torch"] = {"version": twin.torch.__version__, "threads": twin.threads, "device": twin.device}
    return result


def _cnnx_run(runner: CnnxRunner, batches, steps: int, warmup: int, keys) -> dict:
    """One run of cnnx steps, each piece timed on its own: {key: [seconds, ...]}."""
    from cnnx.nn.losses import softmax_cross_entropy

    backend, model = runner.backend, runner.model
    xp, times = model.xp, {key: [] for key in keys}
    row = {id(layer): i for i, layer in enumerate(model.layers)}  # the table keeps the declared order
    order = model.running_order()
    trained = [j for j, layer in enumerate(order) if layer.has_parameters()]
    first = trained[0] if trained else 0
    lowest = first if trained else 1  # the lowest layer a training backward visits (it skips its dx)

    def timed(key, step, work):
        backend.synchronize()
        start = time.perf_counter()
        out = work()
        backend.synchronize()
        if step >= warmup:
            times[key].append(time.perf_counter() - start)
        return out

    with backend.parallel_region():  # as cnnx train's epochs run (see NumpyBackend)
        for step in range(warmup + steps):
            x, labels = batches[step % len(batches)]
            h, labels = backend.to_device(x, runner.dtype), backend.to_device(labels)
            saved = []
            for layer in order:
                forward = lambda layer=layer, h=h: layer.forward(h, True)  # noqa: E731
                h, kept = timed(("forward", row[id(layer)]), step, forward)
                saved.append(kept)
            _, grad = timed(("loss", 0), step, lambda h=h, y=labels: softmax_cross_entropy(xp, h, y))
            for j in range(len(order) - 1, lowest - 1, -1):
                layer, kept = order[j], saved[j]
                backward = lambda layer=layer, s=kept, g=grad, d=j > first: layer.backward(s, g, d)  # noqa: E731
                grad, grads = timed(("backward", row[id(layer)]), step, backward)
                layer.set_grads(grads)
            timed(("optimizer", 0), step, runner.optimizer.step)
    return times


def _torch_run(runner: TorchRunner, batches, steps: int, warmup: int, keys) -> dict:
    """One run of PyTorch steps with each top-level module timed by hooks: {key: [seconds, ...]}.

    A module's forward is the time between its forward pre-hook and forward hook; its backward the time
    between its full backward pre-hook (the gradient of its output is ready) and its full backward hook
    (the gradients of its input are computed). The input of the first module with parameters needs no
    gradient, as in a training step, so PyTorch calls that module's backward hook before the weight
    gradient is made: its backward is timed up to the end of ``loss.backward()`` instead. The loss row
    is the cross-entropy's forward; its backward lies between the hooks.
    """
    torch, model, optimizer = runner.torch, runner.model, runner.optimizer
    times, starts, step_now = {key: [] for key in keys}, {}, [0]

    def start(key):
        runner.synchronize()
        starts[key] = time.perf_counter()

    def stop(key):
        runner.synchronize()
        if step_now[0] >= warmup and key in starts:
            times[key].append(time.perf_counter() - starts.pop(key))

    modules = list(model)
    bottom = next((i for i, m in enumerate(modules) if any(True for _ in m.parameters())), 0)
    handles = []
    for i, module in enumerate(modules):
        handles += [
            module.register_forward_pre_hook(lambda m, args, i=i: start(("forward", i))),
            module.register_forward_hook(lambda m, args, out, i=i: stop(("forward", i))),
            module.register_full_backward_pre_hook(lambda m, grad_out, i=i: start(("backward", i))),
        ]
        if i > bottom:
            handles.append(
                module.register_full_backward_hook(lambda m, grad_in, grad_out, i=i: stop(("backward", i)))
            )
    try:
        with warnings.catch_warnings():
            # PyTorch warns that the bottom module's hooks see no input gradient: known, handled above.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for step in range(warmup + steps):
                step_now[0] = step
                x, labels = batches[step % len(batches)]
                x, labels = runner._to_device(x), runner._to_device(labels)
                optimizer.zero_grad(set_to_none=True)
                logits = model(x)
                start(("loss", 0))
                loss = torch.nn.functional.cross_entropy(logits, labels)
                stop(("loss", 0))
                loss.backward()
                stop(("backward", bottom))
                start(("optimizer", 0))
                optimizer.step()
                stop(("optimizer", 0))
    finally:
        for handle in handles:
            handle.remove()
    return times


def format_profile(profile: dict) -> str:
    """The per-layer table of :func:`profile_layers`, with PyTorch's columns when it was compared."""

    def cell(value):
        return f"{'-':>8}" if value is None else f"{value:>8.2f}"

    torch = profile.get("compare") is not None
    lines = [
        f"per-layer profile: {profile['model']}, batch {profile['batch_size']}, {profile['device']}, "
        f"{profile['dtype']}; ms, the best of the medians of {plural(profile['repeats'], 'run')} of "
        f"{plural(profile['steps'], 'step')}",
        f"{'layer':<24} {'forward':>8} {'backward':>8}"
        + (f" {'torch fw':>8} {'torch bw':>8}" if torch else ""),
    ]
    for row in profile["layers"]:
        line = f"{row['layer']:<24} {cell(row['forward_ms'])} {cell(row['backward_ms'])}"
        if torch:
            line += f" {cell(row['torch_forward_ms'])} {cell(row['torch_backward_ms'])}"
        lines.append(line)
    for label, key in (("loss", "loss_ms"), ("optimizer (Adam)", "optimizer_ms")):
        lines.append(
            f"{label:<24} {cell(profile[key])}"
            + (f" {'':>8} {cell(profile['torch_' + key])}" if torch else "")
        )
    lines.append(f"{'sum':<24} {profile['step_ms']:>8.2f}  -> {profile['seconds_per_epoch']:.1f} s per epoch")
    if torch:
        lines.append(
            f"{'torch sum':<24} {profile['torch_step_ms']:>8.2f}  -> "
            f"{profile['torch_seconds_per_epoch']:.1f} s per epoch (PyTorch {profile['torch']['version']}, "
            f"{plural(profile['torch']['threads'], 'thread')}; its loss backward and the hooks' own cost "
            "are not in the rows)"
        )
    return "\n".join(lines)
