"""Draw the epoch-scaling figure of BENCHMARKS.md from `cnnx bench --epoch --compare torch --json` results.

Usage: python experiments/plot_scaling.py experiments/scaling/*.json -o experiments/scaling.png

Each JSON file is one invocation (one batch size, one thread count, read from the file itself). The
figure has training seconds per epoch against batch size, one line per framework and thread count, and
prints the table that BENCHMARKS.md shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        result = json.loads(path.read_text())
        threads = result["machine"]["blas"]["threads"]
        for framework in ("cnnx", "torch"):
            if framework in result:
                rows.append({
                    "framework": framework,
                    "threads": threads,
                    "batch": result["batch_size"],
                    "train": result[framework]["train"],
                    "eval": result[framework]["eval"],
                    "runs": [run["train"] for run in result["runs"][framework]],
                })  # fmt: skip
    return sorted(rows, key=lambda r: (r["threads"], r["batch"], r["framework"]))


def table(rows: list[dict]) -> str:
    lines = [
        "| threads | batch | cnnx s/epoch | PyTorch s/epoch | cnnx / PyTorch | cnnx eval s "
        "| PyTorch eval s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["threads"], r["batch"]) for r in rows})
    for threads, batch in keys:
        pair = {r["framework"]: r for r in rows if (r["threads"], r["batch"]) == (threads, batch)}
        cnnx, torch = pair.get("cnnx"), pair.get("torch")
        ratio = f"{cnnx['train'] / torch['train']:.2f}x" if cnnx and torch else "-"
        lines.append(
            f"| {threads} | {batch} | {cnnx['train']:.1f} | {torch['train']:.1f} | {ratio} | "
            f"{cnnx['eval']:.2f} | {torch['eval']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    styles = {"cnnx": "o-", "torch": "s--"}
    for framework in ("cnnx", "torch"):
        for threads in sorted({r["threads"] for r in rows}):
            points = [r for r in rows if r["framework"] == framework and r["threads"] == threads]
            if points:
                name = "PyTorch" if framework == "torch" else "cnnx"
                label = f"{name}, {threads} thread{'s' * (threads > 1)}"
                axes.plot([p["batch"] for p in points], [p["train"] for p in points], styles[framework],
                          label=label, alpha=1.0 if threads > 1 else 0.55)  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({r["batch"] for r in rows}), [str(b) for b in sorted({r["batch"] for r in rows})])
    axes.set_xlabel("batch size")
    axes.set_ylabel("training seconds per epoch")
    axes.set_ylim(bottom=0)
    axes.set_title("Fashion-MNIST epoch, seed CNN, 2-core CPU", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files from cnnx bench --epoch --json")
    parser.add_argument("-o", "--out", type=Path, default=Path("scaling.png"), help="the PNG to write")
    args = parser.parse_args()
    rows = load(args.results)
    plot(rows, args.out)
    print(table(rows))


if __name__ == "__main__":
    main()
