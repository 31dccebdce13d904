"""Time a training step four ways on this machine's cores, alternated, and print a table of medians.

- ``whole``: the batch whole, its kernels cut over the backend's thread pool (cnnx before issue 24);
- ``solo``: the shards run one after the other by one worker;
- ``threads``: the shards shared out to threads of this process;
- ``processes``: the shards shared out to processes forked from this one (the default).

    python experiments/workers_kinds.py [--models seed,cnn-bn] [--batch 128] [--workers 2] [--rounds 3]

The modes alternate within each round (and the order turns from round to round), so a drift in the
machine's load falls on all of them; each figure is the median over the rounds of the mean of
``--steps`` timed steps after a few untimed ones. Synthetic batches: the data pipeline is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from cnnx.nn import build_model
from cnnx.nn.parallel import ShardGroup
from cnnx.optim import make_optimizer
from cnnx.training.step import train_step

MODES = ("whole", "solo", "threads", "processes")


def time_mode(mode: str, model_name: str, batch: int, workers: int, steps: int) -> float:
    """Mean seconds per training step of ``mode``, after 3 untimed steps."""
    model = build_model(model_name, seed=0)
    optimizer = make_optimizer("adam", model, 1e-3)
    rng = np.random.default_rng(0)
    batches = [
        (rng.random((batch, *model.input_shape), dtype=np.float32), rng.integers(0, 10, batch))
        for _ in range(4)
    ]
    if mode == "whole":
        with model.backend.parallel_region():
            return _timed(lambda x, y: train_step(model, optimizer, x, y), batches, steps)
    count = 1 if mode == "solo" else workers
    kind = "threads" if mode == "threads" else "processes"
    with ShardGroup(model, optimizer, max_batch=batch, workers=count, kind=kind) as group:
        return _timed(group.train_step, batches, steps)


def _timed(step, batches, steps: int) -> float:
    for i in range(3):
        step(*batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="seed,cnn-bn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    times = {(m, mode): [] for m in args.models.split(",") for mode in MODES}
    for r in range(args.rounds):
        for model_name in args.models.split(","):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                seconds = time_mode(mode, model_name, args.batch, args.workers, args.steps)
                times[(model_name, mode)].append(seconds)
                print(f"round {r + 1}: {model_name} {mode} {seconds * 1e3:.1f} ms/step", flush=True)
    print(f"\n| model | {' | '.join(MODES)} | solo / processes | solo / threads |")
    print("|---|" + "---:|" * (len(MODES) + 2))
    for model_name in args.models.split(","):
        med = {mode: statistics.median(times[(model_name, mode)]) * 1e3 for mode in MODES}
        cells = " | ".join(f"{med[mode]:.1f} ms" for mode in MODES)
        print(f"| {model_name} | {cells} | {med['solo'] / med['processes']:.2f}x | "
              f"{med['solo'] / med['threads']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
