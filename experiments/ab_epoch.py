"""Alternate `cnnx bench --epoch --compare torch` between two installs of cnnx, A and B, and print a table.

Used to show that a change leaves training speed unchanged: A is the code before (its own checkout and
virtual environment), B the code after. Runs alternate A, B, B, A, A, B, ... so that drifts in the
machine's load fall on both sides alike, and each run times cnnx against PyTorch in the same process,
so the ratio is the number to compare across runs.

    python experiments/ab_epoch.py --a /path/to/before/.venv/bin/cnnx --b .venv/bin/cnnx --pairs 3

The two sides may also be one install under two environments, say one core against two:

    python experiments/ab_epoch.py --a .venv/bin/cnnx --b .venv/bin/cnnx --labels "1 thread,2 threads" \
        --env-a OPENBLAS_NUM_THREADS=1 --env-b OPENBLAS_NUM_THREADS=2

Extra arguments after ``--`` go to ``cnnx bench`` (default: ``--batch-size 128 --repeats 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def one_run(cnnx: str, extra: list[str], env: dict[str, str]) -> dict:
    """One `cnnx bench --epoch --compare torch --json` run; returns cnnx's and PyTorch's epoch seconds."""
    command = [cnnx, "bench", "--epoch", "--compare", "torch", "--json", *extra]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, **env}
    ).stdout
    report = json.loads(out)  # medians over --repeats: {"cnnx": {"train": s, ...}, "torch": {...}}
    return {"cnnx": report["cnnx"]["train"], "torch": report["torch"]["train"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="the cnnx command of the code before")
    parser.add_argument("--b", required=True, help="the cnnx command of the code after")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each side")
    parser.add_argument("--env-a", action="append", default=[], help="KEY=VALUE for side A's runs")
    parser.add_argument("--env-b", action="append", default=[], help="KEY=VALUE for side B's runs")
    parser.add_argument("--labels", default="before,after", help="the two sides' names in the table")
    parser.add_argument("extra", nargs="*", default=["--batch-size", "128", "--repeats", "1"])
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    order = [("A", "B") if i % 2 == 0 else ("B", "A") for i in range(args.pairs)]
    sides = {"A": args.env_a, "B": args.env_b}
    envs = {side: dict(item.split("=", 1) for item in items) for side, items in sides.items()}
    for first, second in order:
        for side in (first, second):
            result = one_run(args.a if side == "A" else args.b, args.extra, envs[side])
            runs[side].append(result)
            print(f"{side}: " + "  ".join(f"{k} {v:.2f} s" for k, v in result.items()), flush=True)
    print("\n| code | cnnx epochs (s) | PyTorch in the same runs (s) | median ratio |")
    print("|---|---|---|---:|")
    for side, label in zip(("A", "B"), args.labels.split(","), strict=True):
        ours = [r["cnnx"] for r in runs[side]]
        theirs = [r["torch"] for r in runs[side]]
        ratio = statistics.median(o / t for o, t in zip(ours, theirs, strict=True))
        print(f"| {label} | {' · '.join(f'{v:.2f}' for v in ours)} | "
              f"{' · '.join(f'{v:.2f}' for v in theirs)} | {ratio:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
