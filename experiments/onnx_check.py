"""Each model exported to ONNX and judged by onnxruntime on real test images: the export's time, the
file's size, the worst logit error against cnnx's evaluation, whether the classes agree, and
onnxruntime's inference time beside cnnx's on the same batch (alternated, medians).

    python experiments/onnx_check.py RUN_DIR_OR_PRESET [...] [--images 1000] [--batch-size 256]

A run directory's model (best.npz, else model.npz) or a preset's freshly built one (seed 0). Threads:
both libraries use every core they are given (set OMP_NUM_THREADS for both). Prints a Markdown table
for experiments/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def _model(target: str):
    import cnnx
    from cnnx.cli.options import model_file
    from cnnx.nn.presets import PRESETS

    if target in PRESETS:
        return target, cnnx.build_model(target, seed=0)
    path = model_file(Path(target))
    return Path(target).name, cnnx.load_model(path, device="cpu")


def _median_seconds(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(target: str, images: np.ndarray, batch_size: int, rounds: int) -> dict:
    import onnxruntime

    from cnnx.data import model_inputs
    from cnnx.interop import to_onnx

    name, model = _model(target)
    x = model_inputs(images, "float32", model.input_shape)
    start = time.perf_counter()
    data = to_onnx(model)
    export = time.perf_counter() - start
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    ours = np.concatenate([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    theirs = np.concatenate([session.run(["logits"], {"pixels": x[i : i + batch_size]})[0]
                             for i in range(0, len(x), batch_size)])  # fmt: skip
    batch = x[:batch_size]
    cnnx_times, ort_times = [], []
    for _ in range(rounds):  # alternated, so that a noisy neighbour hits both alike
        cnnx_times.append(_median_seconds(lambda: model(batch), 1))
        ort_times.append(_median_seconds(lambda: session.run(["logits"], {"pixels": batch}), 1))
    return {
        "model": name,
        "export_s": export,
        "bytes": len(data),
        "error": float(np.abs(theirs - ours).max() / np.abs(ours).max()),
        "agree": float((theirs.argmax(axis=1) == ours.argmax(axis=1)).mean()),
        "cnnx_ms": 1000 * statistics.median(cnnx_times),
        "ort_ms": 1000 * statistics.median(ort_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", metavar="RUN_DIR_OR_PRESET")
    parser.add_argument("--images", type=int, default=1000, help="real test images judged (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256, help="the batch timed (default 256)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds of each (default 7)")
    args = parser.parse_args()

    import onnx
    import onnxruntime

    from cnnx.data import load_fashion_mnist

    images = load_fashion_mnist(download=False, quiet=True).test_images[: args.images]
    print(f"{platform.processor() or platform.machine()}, onnx {onnx.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {len(images):,} test images, batch {args.batch_size}\n")  # fmt: skip
    print("| model | export | file | worst logit error | classes agree | cnnx batch | onnxruntime batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for target in args.targets:
        r = check(target, images, args.batch_size, args.rounds)
        cells = [r["model"], f"{r['export_s'] * 1000:.0f} ms", f"{r['bytes'] / 1e6:.2f} MB",
                 f"{r['error']:.1e}", f"{r['agree']:.1%}", f"{r['cnnx_ms']:.1f} ms",
                 f"{r['ort_ms']:.1f} ms"]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
