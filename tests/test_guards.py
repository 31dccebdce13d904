"""CuPy-safety guards that run on a CPU-only machine.

(a) Every ``xp.<name>`` and ``xp.<module>.<name>`` in the device code exists in the real CuPy API (CuPy
    imports without a GPU; only allocating fails). The names are read from the source with ``ast``.
(b) One full training step of every layer type, each optimizer, ``cnnx.train.train_step`` and a whole
    ``fit`` run under the strict backend (cnnx.layercheck.strict), whose arrays refuse every read-back
    to the host except ``Backend.to_host``: no hidden GPU synchronisation in the hot path.
(c) The device code does not touch NumPy, except on lines marked ``# host``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import cnnx
from cnnx.backends import get_backend
from cnnx.data import Dataset
from cnnx.layers import (
    GRU,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
    Residual,
)
from cnnx.losses import softmax_cross_entropy
from cnnx.nn import Sequential
from cnnx.nn.registry import REGISTRY
from cnnx.optim import OPTIMIZERS, make_optimizer
from cnnx.training import fit, train_step

from strict_backend import METHODS, HostReadBack, StrictArray

PACKAGE = Path(cnnx.__file__).parent
DEVICE_FILES = sorted(
    [*PACKAGE.glob("nn/layers/*.py"), PACKAGE / "nn/functional.py", PACKAGE / "nn/losses.py",
     PACKAGE / "nn/init.py", *PACKAGE.glob("optim/*.py")]
)  # fmt: skip
DEVICE_IDS = [str(path.relative_to(PACKAGE)) for path in DEVICE_FILES]


# -- (a) the xp names exist in CuPy -------------------------------------------------------------------


def _is_xp(node: ast.expr) -> bool:
    """``xp`` itself, or any ``<something>.xp`` (self.xp, self.backend.xp, model.xp)."""
    return (isinstance(node, ast.Name) and node.id == "xp") or (
        isinstance(node, ast.Attribute) and node.attr == "xp"
    )


def xp_names(source: str) -> list[tuple[int, tuple[str, ...]]]:
    """(line, ("a", "b", ...)) for every longest attribute chain ``xp.a.b...`` in ``source``."""
    found, inner = [], set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute) and not _is_xp(value):
            inner.add(id(value))  # ast.walk visits outer chains first: skip their tails later
            chain.append(value.attr)
            value = value.value
        if _is_xp(value):
            found.append((node.lineno, tuple(reversed(chain))))
    return sorted(set(found))


def missing_in(module, names: list[tuple[int, tuple[str, ...]]]) -> list[str]:
    """The chains of ``names`` that ``module`` (CuPy) lacks, as "line N: xp.a.b".

    A chain is followed while NumPy's object is a submodule or a ufunc (``xp.linalg.norm``,
    ``xp.add.at``, ``xp.lib.stride_tricks.sliding_window_view``); past that it names an attribute of
    a returned object, which is out of scope.
    """
    missing = []
    for line, chain in names:
        ours, theirs = np, module
        for depth, name in enumerate(chain):
            if not hasattr(theirs, name):
                missing.append(f"line {line}: xp.{'.'.join(chain[: depth + 1])}")
                break
            ours, theirs = getattr(ours, name, None), getattr(theirs, name)
            if not isinstance(ours, (type(np), np.ufunc)):
                break
    return missing


@pytest.fixture(scope="module")
def cupy():
    return pytest.importorskip(
        "cupy", reason="CuPy is not installed here (pip install -e '.[test]' brings it)"
    )


@pytest.mark.parametrize("path", DEVICE_FILES, ids=DEVICE_IDS)
def test_every_xp_name_in_device_code_exists_in_cupy(cupy, path):
    missing = missing_in(cupy, xp_names(path.read_text()))
    assert not missing, f"{path.relative_to(PACKAGE)} uses names CuPy {cupy.__version__} lacks: {missing}"


def test_the_xp_scanner_reports_names_cupy_lacks_at_both_levels(cupy):
    numpy_only = sorted(n for n in dir(np) if callable(getattr(np, n)) and not hasattr(cupy, n))[0]
    source = (
        f"y = self.xp.{numpy_only}(x)\n"
        "z = backend.xp.add.at(a, i, v)\n"
        "n = xp.linalg.no_such_norm(a)\n"
        "w = xp.lib.stride_tricks.no_such_view(x).sum(axis=0)\n"
        "t = xp.float32(1).no_such_method\n"
    )
    found = missing_in(cupy, xp_names(source))
    expected = [
        f"line 1: xp.{numpy_only}",
        "line 3: xp.linalg.no_such_norm",
        "line 4: xp.lib.stride_tricks.no_such_view",
    ]
    assert found == expected, found


def test_the_xp_scanner_sees_the_calls_in_each_part_of_the_device_code():
    # Guards against a scanner that passes because it reads nothing.
    parts = {"nn/functional.py": 0, "nn/losses.py": 0, "optim/optimizers.py": 0, "nn/layers/": 0}
    for path, rel in zip(DEVICE_FILES, DEVICE_IDS, strict=True):
        for part in parts:
            if rel.startswith(part):
                parts[part] += len(xp_names(path.read_text()))
    empty = [part for part, count in parts.items() if count == 0]
    assert not empty, f"the scanner found no xp.<name> in {empty}: {parts}"


# -- (c) no NumPy in device code outside lines marked "# host" ----------------------------------------


def unmarked_numpy_uses(source: str) -> list[str]:
    """Lines importing NumPy or using a name bound to it (np, numpy, any alias) without ``# host``."""
    tree = ast.parse(source)
    aliases, lines = {"np", "numpy"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "numpy":
                    lines.add(node.lineno)
                    aliases.add(alias.asname or "numpy")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "numpy":
            lines.add(node.lineno)
            aliases.update(alias.asname or alias.name for alias in node.names)
    lines.update(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in aliases)
    text = source.splitlines()
    return [f"line {n}: {text[n - 1].strip()}" for n in sorted(lines) if "# host" not in text[n - 1]]


@pytest.mark.parametrize("path", DEVICE_FILES, ids=DEVICE_IDS)
def test_device_code_uses_numpy_only_on_lines_marked_host(path):
    uses = unmarked_numpy_uses(path.read_text())
    assert not uses, (
        f"{path.relative_to(PACKAGE)} reaches NumPy outside xp (mark deliberate host lines): {uses}"
    )


def test_the_numpy_scanner_flags_every_spelling_and_spares_host_lines():
    source = (
        "import numpy\n"
        "import numpy as xnp\n"
        "from numpy import zeros as z\n"
        "import numpy as np  # host: weights are drawn here\n"
        "a = xnp.ones(3)\n"
        "b = z(3)\n"
        "c = np.float32  # host\n"
        "d = self.xp.ones(3)  # mentions np. only in this comment\n"
    )
    flagged = [entry.split(":")[0] for entry in unmarked_numpy_uses(source)]
    assert flagged == ["line 1", "line 2", "line 3", "line 5", "line 6"], flagged


# -- (b) the strict backend: nothing is read back outside to_host -------------------------------------


def every_layer_model(backend, dtype="float32", seed=0) -> Sequential:
    """Conv2D with stride 2 / padding 1, with padding 2 and with padding "same", BatchNorm2D, MaxPool2D 2
    and 3 (stride 2), AvgPool2D, GlobalAvgPool2D, ReLU, Dropout, a Residual around a nested Sequential,
    Flatten, Dense, BatchNorm1D: 1x28x28 -> 4x14x14 -> 4x7x7 -> 6x9x9 -> 6x4x4 -> 6x2x2 -> 6 -> 16 -> 10."""
    rng = np.random.default_rng(seed)
    kw = {"backend": backend, "dtype": dtype}
    block = Residual(Sequential([Conv2D(4, 4, 3, padding="same", rng=rng, **kw), ReLU(**kw)]))
    layers = [Conv2D(1, 4, 3, stride=2, padding=1, rng=rng, **kw), BatchNorm2D(4, **kw), ReLU(**kw),
              MaxPool2D(2, **kw), block, Dropout(0.2, **kw), Conv2D(4, 6, 3, padding=2, rng=rng, **kw),
              ReLU(**kw), MaxPool2D(3, 2, **kw), AvgPool2D(2, **kw), GlobalAvgPool2D(**kw), Flatten(**kw),
              Dense(6, 16, rng=rng, **kw), BatchNorm1D(16, **kw), ReLU(**kw), Dropout(0.5, **kw),
              Dense(16, 10, rng=rng, **kw)]  # fmt: skip
    model = Sequential(layers, name="every-layer", input_shape=(1, 28, 28))
    model.seed_streams(seed)
    return model


def recurrent_model(backend, dtype="float32", seed=0) -> Sequential:
    """What a convolutional chain cannot hold: a GRU reading 1x28x28 images row by row -> 12 -> 10."""
    rng = np.random.default_rng(seed)
    kw = {"backend": backend, "dtype": dtype}
    return Sequential([GRU(28, 12, rng=rng, **kw), Dense(12, 10, rng=rng, **kw)], name="recurrent",
                      input_shape=(1, 28, 28))  # fmt: skip


GUARD_MODELS = {"every-layer": every_layer_model, "recurrent": recurrent_model}


def test_the_guard_model_holds_every_registered_layer_type(strict_backend):
    used = set()
    for make in GUARD_MODELS.values():
        model = make(strict_backend)
        used |= {layer.layer_type for _, layer in model.named_layers()} | {model.layer_type}
    missing = {name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx.")} - used
    assert not missing, f"add {sorted(missing)} to a guard model so the guards step through them"


def batch(backend, size=6, seed=1):
    rng = np.random.default_rng(seed)
    x = backend.to_device(rng.random((size, 1, 28, 28)), "float32")
    return x, backend.to_device(rng.integers(0, 10, size), "int64")


def _host_array(x):
    return np.zeros(x.shape, np.float32)


READ_BACKS = {
    "float()": lambda x: float(x.sum()),
    "int()": lambda x: int(x.argmax()),
    "if on a comparison": lambda x: 1 if x.sum() < 0 else 0,
    "as a Python index": lambda x: [0, 1, 2][x.argmax()],
    "numpy.asarray": lambda x: np.asarray(x),
    ".item()": lambda x: x.sum().item(),
    ".tolist()": lambda x: x.tolist(),
    "repr()": lambda x: repr(x),
    "print()/str()": lambda x: str(x),
    "f-string": lambda x: f"{x.sum():.3f}",
}
HOST_MIXES = {
    "host array + device array": lambda x, xp: _host_array(x) + x,
    "device array * host array": lambda x, xp: x * _host_array(x),
    "host array into xp": lambda x, xp: xp.maximum(_host_array(x), 0),
    "host array assigned into a device array": lambda x, xp: x.__setitem__(Ellipsis, _host_array(x)),
    "numpy function on a device array": lambda x, xp: np.sum(x),
}


@pytest.mark.parametrize("read_back", READ_BACKS.values(), ids=READ_BACKS.keys())
def test_strict_arrays_refuse_each_hidden_read_back(strict_backend, read_back):
    x = strict_backend.to_device(np.arange(6.0).reshape(2, 3), "float32")
    with pytest.raises(HostReadBack):
        read_back(x)


@pytest.mark.parametrize("mix", HOST_MIXES.values(), ids=HOST_MIXES.keys())
def test_strict_arrays_refuse_host_arrays_as_cupy_does(strict_backend, mix):
    x = strict_backend.to_device(np.arange(6.0).reshape(2, 3), "float32")
    with pytest.raises(TypeError):
        mix(x, strict_backend.xp)


def test_strict_xp_refuses_a_numpy_name_that_cupy_lacks(strict_backend, cupy):
    numpy_only = sorted(n for n in dir(np) if callable(getattr(np, n)) and not hasattr(cupy, n))[0]
    with pytest.raises(AttributeError, match="not in CuPy"):
        getattr(strict_backend.xp, numpy_only)


def test_every_method_strict_arrays_allow_exists_on_cupy_arrays(cupy):
    missing = sorted(name for name in METHODS if not hasattr(cupy.ndarray, name))
    assert not missing, f"strict_backend.METHODS allows methods cupy.ndarray lacks: {missing}"


def test_strict_arrays_leave_shapes_free_to_read(strict_backend):
    x = strict_backend.to_device(np.ones((2, 3, 4)), "float32")
    flat = x.reshape(x.shape[0], -1)
    assert (flat.shape, len(x), x.ndim, x.size, x.dtype) == ((2, 12), 2, 3, 24, np.float32)


def test_the_strict_backend_computes_bit_for_bit_what_numpy_computes(strict_backend):
    results = {}
    for backend in (get_backend("cpu"), strict_backend):
        model = every_layer_model(backend)
        loss_sum, _ = train_step(model, make_optimizer("adam", model), *batch(backend))
        results[backend.name] = (backend.to_host(loss_sum), model.state_dict())
    (loss_a, weights_a), (loss_b, weights_b) = results.values()
    differ = [k for k in weights_a if not np.array_equal(weights_a[k], weights_b[k])]
    assert loss_a == loss_b and not differ, f"losses {loss_a} vs {loss_b}; weights differ in {differ}"


@pytest.mark.parametrize("make", GUARD_MODELS.values(), ids=GUARD_MODELS.keys())
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_training_step_of_every_layer_type_reads_nothing_back(strict_backend, optimizer, make):
    model = make(strict_backend)
    opt = make_optimizer(optimizer, model)
    x, labels = batch(strict_backend)
    for _ in range(2):  # the second step finds the optimizer's moments already there
        logits, saved = model.forward(x, train=True)
        loss, dlogits = softmax_cross_entropy(model.xp, logits, labels)
        model.set_grads(model.backward(saved, dlogits)[1])
        opt.step()
    assert strict_backend.host_reads == 0 and isinstance(loss, StrictArray), (
        f"{strict_backend.host_reads} read-backs in the training step; loss is a {type(loss).__name__}"
    )


def test_train_step_returns_device_scalars_and_reads_nothing_back(strict_backend):
    model = every_layer_model(strict_backend)
    loss_sum, correct = train_step(model, make_optimizer("adam", model), *batch(strict_backend))
    kinds = (type(loss_sum).__name__, type(correct).__name__, loss_sum.shape, correct.shape)
    assert strict_backend.host_reads == 0 and kinds == ("StrictArray", "StrictArray", (), ()), (
        f"{strict_backend.host_reads} read-backs; train_step returned {kinds}"
    )


def test_fit_reads_device_values_only_through_to_host(strict_backend):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.uint8)
    data = Dataset(images[:32], labels[:32], images[32:], labels[32:], source="synthetic")
    model = every_layer_model(strict_backend)
    history = fit(
        model, make_optimizer("adam", model), data, epochs=1, batch_size=8, check_every=2, progress="none"
    )
    # Reads: the periodic loss checks, the epoch's sums, and the evaluation; none of them hidden.
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"]), history


def test_model_host_api_reads_back_only_through_to_host(strict_backend, tmp_path):
    model = every_layer_model(strict_backend)
    images = np.random.default_rng(3).random((5, 1, 28, 28))
    before = model.predict_proba(images, batch_size=2)
    loaded = cnnx.load_model(model.save(tmp_path / "m.npz"), device=strict_backend)
    after = loaded.predict_proba(images, batch_size=2)
    assert np.array_equal(before, after), f"predictions changed by {np.abs(before - after).max():.2e}"
