"""Whole-model parity: one seed gives the same weights everywhere, and a training step the same result.

One harness, :func:`run_pair`, trains the ``seed`` preset for twenty Adam steps (lr 1e-3) on one fixed
batch on two (device, dtype) pairs side by side: always NumPy float64 against NumPy float32, so CI on a
CPU runs it; where CuPy is usable also CPU against GPU in each dtype (skipped with the reason elsewhere).
Before every step the follower takes the reference's weights and optimizer state (lockstep), then
both step; the loss of every step and the weights after every step, the last included, are compared.

Why lockstep. Run freely, the float32 and float64 runs drift apart chaotically, and a float32 CPU and
a float32 GPU run would too: where a ReLU input or two max-pool candidates lie within rounding of each
other the runs take different branches, that unit's gradient differs by O(1), Adam turns it into a
difference of up to ~lr in the weights it touches, and these push more units across their kinks. Over
40 random batches freely run, 3 broke 1e-5 in the loss (up to 1.3e-3) and 3 drifted by more than one
Adam step in a weight (tests/PARITY.md); which batches do depends on the BLAS's rounding. In lockstep
every step starts from the same point, so nothing compounds, and the bounds hold on any machine.

Bounds. float64 pairs: losses and weights within 1e-10 relative. float32 pairs: losses within 1e-5
relative at every step (measured in lockstep: at most 2.0e-7 over 40 batches). Weights not within 1e-5
relative but (1) no weight more than one Adam step (LR) apart and (2) each parameter's step equal
within 2% in norm, because a step amplifies float32 rounding for two reasons:

1. Adam moves a weight by ``lr * m_hat / (sqrt(v_hat) + eps)``. For a weight whose gradient is about
   eps (1e-8) that is ``~ lr * g / eps``, with slope lr/eps = 1e5 in g: a float32 rounding error of
   ~1e-10 in that gradient (u32 = 6e-8 times partial sums far larger than the cancelled result) moves
   the weight by ~1e-5, 1% of a step. Measured: 5e-5 relative to the layer's largest weight after the
   first step, with no branch taken differently.
2. A branch flip (above), in the step where it happens: up to ~lr for the weights of that unit.

Measured in lockstep over 40 batches x 20 steps: at most 0.19 lr for a weight (median 0.008 lr) and
5.6e-3 of a step's norm (median 5e-5). Both bounds keep their teeth: a wrong update rule on any
backend (a beta, a bias correction) changes every step by far more than 2%, any weight updated wrongly
by a whole step is caught, and a difference in the forward or backward pass shows in the losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from cnnx.backends import available_backends
from cnnx.layers import MaxPool2D, ReLU
from cnnx.losses import softmax_cross_entropy
from cnnx.nn import build_model
from cnnx.nn.presets import PRESETS
from cnnx.optim import make_optimizer
from cnnx.training import train_step

from helpers import backend_or_skip, rel_error

STEPS, LR, BATCH = 20, 1e-3, 8
MODEL_SEED, DATA_SEED = 0, 7
LOSS_RTOL = {"float32": 1e-5, "float64": 1e-10}
WEIGHT_RTOL_FLOAT64 = 1e-10
WEIGHT_ATOL_FLOAT32 = LR  # one Adam step: see the module docstring
UPDATE_RTOL_FLOAT32 = 2e-2  # of each parameter's step, in norm: see the module docstring

GPU_PROBLEM = available_backends()["gpu"]
ON_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPU_PROBLEM is not None, reason=f"GPU backend unavailable: {GPU_PROBLEM}"),
]
# (reference, follower): the more precise or the CPU run leads.
PAIRS = [
    pytest.param(("cpu", "float64"), ("cpu", "float32"), id="cpu-float64~cpu-float32"),
    pytest.param(("cpu", "float32"), ("gpu", "float32"), id="cpu-float32~gpu-float32", marks=ON_GPU),
    pytest.param(("cpu", "float64"), ("gpu", "float64"), id="cpu-float64~gpu-float64", marks=ON_GPU),
]


@dataclass
class Gaps:
    """How far the follower is from the reference, per step (host floats)."""

    # Relative; STEPS + 1 entries: each step's, then each model's loss at its own weights after the last.
    loss: list[float] = field(default_factory=list)
    weight_max: list[dict[str, float]] = field(default_factory=list)  # max |dw| in units of LR, per parameter
    weight_rel: list[dict[str, float]] = field(default_factory=list)  # max |dw| / max |w|, per parameter
    update_rel: list[dict[str, float]] = field(default_factory=list)  # ||du|| / ||u||, per parameter
    flips: list[int] = field(default_factory=list)  # ReLU / max-pool decisions that differ (detail only)


class Run:
    """One model with its optimizer and the fixed batch, on one backend in one dtype."""

    def __init__(self, backend, dtype: str, model: str = "seed"):
        self.backend, self.dtype = backend, dtype
        self.model = build_model(model, backend=self.backend, dtype=self.dtype, seed=MODEL_SEED)
        self.optimizer = make_optimizer("adam", self.model, LR)
        x, labels = fixed_batch()
        self.x, self.labels = self.backend.to_device(x, self.dtype), self.backend.to_device(labels, "int64")

    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.array(value, dtype=np.float64) for name, value in self.model.state_dict().items()}


def fixed_batch() -> tuple[np.ndarray, np.ndarray]:
    """BATCH random 28x28 images quantised like real pixels (k / 255), and random labels."""
    rng = np.random.default_rng(DATA_SEED)
    return rng.integers(0, 256, (BATCH, 1, 28, 28)) / 255.0, rng.integers(0, 10, BATCH)


def branch_decisions(run: Run) -> list[np.ndarray]:
    """Which way every ReLU (input > 0) and every max-pool window (argmax) goes, on the host."""
    decisions, h = [], run.x
    for layer in run.model.layers:
        if isinstance(layer, ReLU):
            decisions.append(run.backend.to_host(h > 0))
        elif isinstance(layer, MaxPool2D):
            k, s = layer.k, layer.stride
            windows = np.lib.stride_tricks.sliding_window_view(run.backend.to_host(h), (k, k), axis=(2, 3))
            windows = windows[:, :, ::s, ::s]
            decisions.append(windows.reshape(*windows.shape[:4], k * k).argmax(axis=-1))
        h = layer(h)
    return decisions


def run_pair(
    reference: tuple[str, str], follower: tuple[str, str], *, lockstep=True, detail=False, model: str = "seed"
) -> Gaps:
    """STEPS Adam steps (lr LR) of a preset (the seed model by default) from MODEL_SEED on
    :func:`fixed_batch`, on two
    (device, dtype) pairs side by side, and the gaps between them after every step.

    ``lockstep``: before every step the follower takes the reference's weights and optimizer state, so
    each step is compared from the same start and differences cannot compound. Without it the two run
    freely (the report shows why that is not a test). ``detail`` also counts branch decisions that differ
    (host copies of every activation: slow on a GPU).
    """
    ref, fol = (
        Run(backend_or_skip(reference[0]), reference[1], model),
        Run(backend_or_skip(follower[0]), follower[1], model),
    )
    gaps = Gaps()
    for _ in range(STEPS):
        if lockstep:
            fol.model.load_state_dict(ref.model.state_dict())
            state = ref.optimizer.state_dict(ref.backend.to_host)
            fol.optimizer.load_state_dict(state, lambda a: fol.backend.to_device(a, fol.dtype))
        if detail:
            pairs = zip(branch_decisions(ref), branch_decisions(fol), strict=True)
            gaps.flips.append(sum(int(np.sum(a != b)) for a, b in pairs))
        start = ref.weights()
        losses = [train_step(run.model, run.optimizer, run.x, run.labels)[0] for run in (ref, fol)]
        gaps.loss.append(_relative_gap(ref, fol, losses))
        w_ref, w_fol = ref.weights(), fol.weights()
        gaps.weight_max.append({k: float(np.abs(w_fol[k] - w_ref[k]).max()) / LR for k in w_ref})
        gaps.weight_rel.append({k: rel_error(w_fol[k], w_ref[k]) for k in w_ref})
        gaps.update_rel.append(
            {
                k: float(np.linalg.norm(w_fol[k] - w_ref[k]) / np.linalg.norm(w_ref[k] - start[k]))
                for k in w_ref
            }
        )
    final = [softmax_cross_entropy(run.model.xp, run.model(run.x), run.labels)[0] for run in (ref, fol)]
    gaps.loss.append(_relative_gap(ref, fol, final))
    return gaps


def _relative_gap(ref: Run, fol: Run, losses) -> float:
    a, b = (float(run.backend.to_host(loss)) for run, loss in zip((ref, fol), losses, strict=True))
    return abs(a - b) / abs(a)


_gaps: dict[tuple, Gaps] = {}


def lockstep_gaps(reference: tuple[str, str], follower: tuple[str, str], model: str = "seed") -> Gaps:
    """The lockstep run of a pair, computed once per session; skips when a device is unusable."""
    if (reference, follower, model) not in _gaps:
        _gaps[reference, follower, model] = run_pair(reference, follower, model=model)
    return _gaps[reference, follower, model]


def lower_precision(a: tuple[str, str], b: tuple[str, str]) -> str:
    return "float32" if "float32" in (a[1], b[1]) else "float64"


# -- initial weights ----------------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_initial_weights_on_every_backend(backend, dtype):
    here = build_model("seed", backend=backend, dtype=dtype, seed=MODEL_SEED).state_dict()
    cpu = build_model("seed", backend="cpu", dtype=dtype, seed=MODEL_SEED).state_dict()
    differ = [name for name in cpu if not np.array_equal(here[name], cpu[name])]
    assert not differ, f"{backend.name} {dtype} initial weights differ from the CPU's in {differ}"


def test_float32_initial_weights_are_the_float64_ones_rounded(backend):
    w32 = build_model("seed", backend=backend, dtype="float32", seed=MODEL_SEED).state_dict()
    w64 = build_model("seed", backend=backend, dtype="float64", seed=MODEL_SEED).state_dict()
    differ = [name for name in w64 if not np.array_equal(w32[name], w64[name].astype(np.float32))]
    assert not differ, f"float32 initial weights are not the float64 ones rounded in {differ}"


# -- twenty Adam steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("a, b", PAIRS)
def test_losses_agree_at_every_step(a, b, model):
    gaps = np.array(lockstep_gaps(a, b, model).loss)
    tol = LOSS_RTOL[lower_precision(a, b)]
    worst = int(gaps.argmax())
    assert gaps[worst] < tol, (
        f"{a} vs {b}: the loss at step {worst + 1} differs by {gaps[worst]:.2e} relative (>= {tol:.0e}); "
        f"per step: {np.array2string(gaps, precision=1)}"
    )


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("a, b", PAIRS)
def test_weights_agree_after_every_step(a, b, model):
    gaps = lockstep_gaps(a, b, model)
    if lower_precision(a, b) == "float64":
        checks = {"relative": (gaps.weight_rel, WEIGHT_RTOL_FLOAT64)}
    else:
        checks = {
            "lr": (gaps.weight_max, WEIGHT_ATOL_FLOAT32 / LR),
            "update": (gaps.update_rel, UPDATE_RTOL_FLOAT32),
        }
    bad = [
        f"step {step + 1} {name}: {gap:.2e} {unit}"
        for unit, (per_step, tol) in checks.items()
        for step, per_param in enumerate(per_step)
        for name, gap in per_param.items()
        if not gap < tol
    ]
    limits = ", ".join(f"{tol:g} {unit}" for unit, (_, tol) in checks.items())
    assert not bad, f"{a} vs {b}: weights differ beyond {limits} in {bad[:8]} ({len(bad)} in all)"


# -- the per-step report for tests/PARITY.md -----------------------------------------------------------


def report() -> None:
    """Print, for every usable pair, the per-step gaps in lockstep (what the tests check) and free."""
    problems = available_backends()
    for param in PAIRS:
        a, b = param.values
        if problems[a[0]] or problems[b[0]]:
            print(f"\n{param.id}: skipped, {problems[a[0]] or problems[b[0]]}")
            continue
        for lockstep in (True, False):
            gaps = run_pair(a, b, lockstep=lockstep, detail=True)
            print(
                f"\n{param.id}, {'lockstep' if lockstep else 'free-running'}: largest gap over the parameters"
            )
            print("step  loss gap  max|dw|/lr  max|dw|/max|w|  ||du||/||u||  branch flips")
            for t in range(STEPS):
                w, r, u = (max(d[t].values()) for d in (gaps.weight_max, gaps.weight_rel, gaps.update_rel))
                update = f"{u:.1e}" if lockstep else "   -   "
                columns = f"{gaps.loss[t]:.1e}   {w:.1e}     {r:.1e}         {update}"
                print(f"{t + 1:>4}  {columns}       {gaps.flips[t]}")
            print(f" end  {gaps.loss[-1]:.1e}")


if __name__ == "__main__":
    report()
