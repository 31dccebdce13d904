"""The checks of ``cnnx check-layer``, each a function of a :class:`~cnnx.layercheck.examples.Subject`
that returns its rows of the report.

Every check builds fresh layers of its own, so no check sees what another did to a layer. A check whose
layer raises is a failed row that names the exception: the layer under test is the user's code.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # host: every comparison is made on the host

from .gradients import check_gradients, rel_error
from .strict import StrictBackend

FINITE_DIFFERENCES = 1e-6  # float64 central differences against backward: relative error
# float32 against float64: a few float32 roundings (2^-24 each) through a small layer's sums and
# nonlinearities stay far below this; a wrong cast or an accumulation in the wrong dtype does not.
SINGLE_PRECISION = 1e-5
ROUNDING = 2.0**-24  # moving float64 values to float32 rounds each to the nearest: at most half an ulp
SAME_MATHS = 1e-12  # the strict backend computes with NumPy, maybe in another order (whole-batch paths)
# CPU against GPU, both float64: CUDA's reductions and transcendental functions round differently from
# NumPy's by a few ulps, far below this; a kernel that computes something else is far above it.
DEVICES = 1e-10
MAX_COORDINATES = 400  # per array: an array larger than this is differenced at that many random places


@dataclass(frozen=True)
class Row:
    """One line of the report: a check, its result (pass, fail or not run), the measured error and the
    bound it must stay under (None: it must be exact), and a note (why it failed or did not run)."""

    check: str
    result: str
    error: float | None = None
    bound: float | None = None
    note: str = ""


def judged(check: str, error: float, bound: float | None, note: str = "") -> Row:
    """A row that passes when ``error`` is under ``bound`` (exactly zero when ``bound`` is None)."""
    ok = error == 0 if bound is None else error < bound
    return Row(check, "pass" if ok else "fail", error, bound, note)


def failed(check: str, exc: BaseException, bound: float | None = None) -> Row:
    """The row of a check whose layer raised ``exc``: one line naming it."""
    text = " ".join(str(exc).split()) or "(no message)"
    return Row(check, "fail", None, bound, f"{type(exc).__name__}: {text}"[:200])


def _run(layer, x_host, dy_host=None):  # host in, host out
    """Training forward and backward of ``layer`` on host arrays: (y, dx, grads), all host float64.
    ``dy`` defaults to a fixed random array of y's shape."""
    backend = layer.backend
    y, saved = layer.forward(backend.to_device(x_host, layer.dtype), train=True)
    if dy_host is None:
        dy_host = np.random.default_rng(11).standard_normal(y.shape)  # host
    dx, grads = layer.backward(saved, backend.to_device(dy_host, layer.dtype))
    as_host = lambda a: backend.to_host(a).astype(np.float64)  # noqa: E731
    return as_host(y), as_host(dx), {key: as_host(value) for key, value in grads.items()}


def gradients(subject) -> list[Row]:
    """Float64 central differences of the input and of every parameter against the layer's backward."""
    rng = np.random.default_rng(1)
    try:
        errors = check_gradients(subject.build(), subject.inputs(), rng, max_coords=MAX_COORDINATES)
    except Exception as exc:  # noqa: BLE001 - the layer under test failed: a row says how
        return [failed("gradients (float64, finite differences)", exc, FINITE_DIFFERENCES)]
    return [judged(f"gradient of {'the input' if name == 'x' else name} (finite differences)", error,
                   FINITE_DIFFERENCES) for name, error in errors.items()]  # fmt: skip


def single_precision(subject) -> list[Row]:
    """float32 against float64 on the same float32 weights and inputs: forward, input and parameter
    gradients."""
    names = ("float32 forward vs float64", "float32 backward vs float64")
    try:
        wide, narrow = subject.build(dtype="float64"), subject.build(dtype="float32")
        narrow.load_state_dict(wide.state_dict())  # rounded to float32 ...
        wide.load_state_dict(narrow.state_dict())  # ... and the same rounded values in float64
        x = subject.inputs().astype(np.float32)  # host
        y64, dx64, g64 = _run(wide, x)
        y32, dx32, g32 = _run(narrow, x)
    except Exception as exc:  # noqa: BLE001
        return [failed(name, exc, SINGLE_PRECISION) for name in names]
    backward = max([rel_error(dx32, dx64), *(rel_error(g32[k], g64[k]) for k in g64)])
    return [judged(names[0], rel_error(y32, y64), SINGLE_PRECISION),
            judged(names[1], backward, SINGLE_PRECISION)]  # fmt: skip


def _model(layer, subject):
    from cnnx.nn.model import Sequential

    return Sequential([layer], input_shape=subject.input_shape, name="layercheck")


def _state_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts (inf when their names or shapes differ)."""
    if set(a) != set(b) or any(np.shape(a[k]) != np.shape(b[k]) for k in a):
        return float("inf")
    diffs = [np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max(initial=0.0) for k in a]
    return float(max(diffs, default=0.0))


def save_load(subject) -> list[Row]:
    """The layer in a model written by cnnx's model-file writer and read back by ``cnnx.io.load_model``:
    the same weights, buffers and streams, and the same outputs in training and evaluation."""
    from cnnx.io import load_model

    check = "save and load (model file)"
    try:
        model = _model(subject.build(), subject)
        with tempfile.TemporaryDirectory(prefix="cnnx-layercheck-") as folder:
            loaded = load_model(model.save(Path(folder) / "layer.npz"))
        error = _state_difference(model.state_dict(), loaded.state_dict())
        x = subject.inputs()
        for train in (False, True):
            ys = [m.backend.to_host(m.forward(m.backend.to_device(x, m.dtype), train)[0])
                  for m in (model, loaded)]  # fmt: skip
            error = max(error, float(np.abs(ys[0] - ys[1]).max(initial=0.0)))
    except Exception as exc:  # noqa: BLE001
        return [failed(check, exc)]
    return [judged(check, error, None)]


def dtype_move(subject) -> list[Row]:
    """float64 -> float32 (``Sequential.to``): every value within float32 rounding of the original, the
    streams unchanged, the arrays float32."""
    check = "float64 -> float32 move"
    try:
        model = _model(subject.build(), subject)
        moved = model.to(dtype="float32")
        before, after = model.state_dict(), moved.state_dict()
        streams = {name for name, _ in model.named_streams()}
        arrays = [name for name, _, _ in moved.named_parameters()] + [n for n, _ in moved.named_buffers()]
        wrong = [n for n in arrays if before[n].dtype.kind == "f" and after[n].dtype != np.float32]
        if set(before) != set(after) or any(not np.array_equal(before[s], after[s]) for s in streams):
            return [Row(check, "fail", None, ROUNDING, "the streams or the names changed")]
        if wrong:
            return [Row(check, "fail", None, ROUNDING, f"{wrong[0]} is not float32 after the move")]
        error = 0.0
        for name in set(before) - streams:
            exact, rounded = before[name].astype(np.float64), after[name].astype(np.float64)
            scale = np.maximum(np.abs(exact), np.finfo(np.float32).tiny)
            error = max(error, float((np.abs(rounded - exact) / scale).max(initial=0.0)))
    except Exception as exc:  # noqa: BLE001
        return [failed(check, exc, ROUNDING)]
    # Half an ulp at most: a value exactly half-way rounds to even, which is still half an ulp.
    return [judged(check, error, ROUNDING * (1 + 1e-9))]


def streams(subject) -> list[Row]:
    """Random streams: two layers built alike draw alike, and a layer given another's state (streams
    included) draws what that one draws next (a resumed run)."""
    names = ("streams: built alike draw alike", "streams: restored state resumes")
    x1, x2 = subject.inputs(2), subject.inputs(3)
    try:
        a, b = subject.build(seed=7), subject.build(seed=7)
        alike = _state_difference(a.state_dict(), b.state_dict())
        for x in (x1, x2):
            alike = max(alike, float(np.abs(_run(a, x)[0] - _run(b, x)[0]).max(initial=0.0)))
    except Exception as exc:  # noqa: BLE001
        return [failed(name, exc) for name in names]
    try:
        first, second = subject.build(seed=7), subject.build(seed=8)
        _run(first, x1)  # moves the streams (and a batch norm's averages) on
        second.load_state_dict(first.state_dict())
        resumed = float(np.abs(_run(first, x2)[0] - _run(second, x2)[0]).max(initial=0.0))
    except Exception as exc:  # noqa: BLE001
        return [judged(names[0], alike, None), failed(names[1], exc)]
    count = sum(1 for _ in a.named_streams())
    note = f"{count} stream{'s' * (count != 1)}"
    return [judged(names[0], alike, None, note), judged(names[1], resumed, None, note)]


def strict(subject) -> list[Row]:
    """Forward and backward on the strict backend (no hidden reads from the device), and the same
    numbers as NumPy's."""
    check = "strict backend (no hidden device reads)"
    try:
        reference = subject.build()
        layer = subject.build(backend=StrictBackend())
        layer.load_state_dict(reference.state_dict())
        expected, got = _run(reference, subject.inputs()), _run(layer, subject.inputs())
    except Exception as exc:  # noqa: BLE001
        return [failed(check, exc, SAME_MATHS)]
    return [judged(check, _largest_difference(got, expected), SAME_MATHS)]


def _largest_difference(got, expected) -> float:
    (y, dx, grads), (y0, dx0, grads0) = got, expected
    if set(grads) != set(grads0):
        return float("inf")
    return max([rel_error(y, y0), rel_error(dx, dx0), *(rel_error(grads[k], grads0[k]) for k in grads0)])


def devices(subject) -> list[Row]:
    """CPU against GPU, float64, forward and backward, when a GPU is usable here."""
    from cnnx.backends import available_backends

    check = "cpu vs gpu (float64)"
    problem = available_backends().get("gpu")
    if problem is not None:
        return [Row(check, "not run", None, DEVICES, f"no usable GPU: {problem}")]
    try:
        cpu, gpu = subject.build(), subject.build(backend="gpu")
        gpu.load_state_dict(cpu.state_dict())
        difference = _largest_difference(_run(gpu, subject.inputs()), _run(cpu, subject.inputs()))
    except Exception as exc:  # noqa: BLE001
        return [failed(check, exc, DEVICES)]
    return [judged(check, difference, DEVICES)]


CHECKS = (gradients, single_precision, save_load, dtype_move, streams, strict, devices)
