"""``cnnx bench``: training and inference speed of a preset, optionally against PyTorch in the same run.

Timing uses synthetic data of the right shape (uniform pixels in [0, 1), uniform labels): speed does not
depend on the values, and no dataset is needed. A training step is what ``cnnx train`` runs
(:func:`cnnx.training.train_step`: forward, fused loss, backward, Adam update, loss and accuracy sums on the
device) plus the host-to-device copy of the batch; an inference step is a forward pass with
``train=False``. Each timed run does ``warmup`` steps, then times ``steps`` steps; the seconds per epoch
are extrapolated from that throughput to 60,000 images, not measured over a real epoch.

With ``compare="torch"`` the same architecture is built in PyTorch (imported only then, never a
dependency of cnnx) with the same initial weights, checked by comparing the first forward's logits, and
the two frameworks are timed in alternation (cnnx, torch, cnnx, torch, ...) so that a busy machine
slows both alike; the report gives medians. PyTorch gets as many threads as NumPy's BLAS uses. On a GPU
both sides synchronise the device before every clock reading.
"""

from __future__ import annotations

import os
import statistics

import numpy as np  # host: synthetic batches and results live on the host

from cnnx.backends import get_backend
from cnnx.checks import plural
from cnnx.errors import ConfigError
from cnnx.nn.presets import PRESETS, build_model

from .memory import check_batch_fits, out_of_memory_as_error
from .timing import SYNTHETIC_BATCHES, CnnxRunner, PeakRSS, TorchRunner, machine_info, synthetic_batches

EPOCH_IMAGES = 60_000
COMPARE = ("torch",)
DTYPES = ("float32", "float64")


# -- the benchmark --------------------------------------------------------------------------------


def _check_settings(
    model: str, batch_sizes, dtype: str, steps: int, warmup: int, repeats: int, compare
) -> None:
    if model not in PRESETS:
        raise ConfigError(f"unknown model {model!r}: choose one of {', '.join(PRESETS)}")
    if not batch_sizes or not all(isinstance(b, int) and b > 0 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, value, least in (("steps", steps, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    if compare is not None and compare not in COMPARE:
        raise ConfigError(f"--compare accepts {', '.join(COMPARE)}, got {compare!r}")


def _agreement(cnnx_logits: np.ndarray, torch_logits: np.ndarray, dtype: str) -> dict:
    """How far the first forward's logits of the two frameworks are apart (same weights, same batch)."""
    diff = float(np.abs(cnnx_logits - torch_logits).max())
    scale = float(np.abs(torch_logits).max()) or 1.0
    tolerance = 1e-5 if dtype == "float32" else 1e-10
    return {
        "max_abs_diff": diff,
        "rel_error": diff / scale,
        "tolerance": tolerance,
        "agree": diff / scale <= tolerance,
    }


def _summary(batch_size: int, record: dict) -> dict:
    train, infer = statistics.median(record["train"]), statistics.median(record["infer"])
    return {
        "train_images_per_s": batch_size / train,
        "train_seconds_per_epoch": EPOCH_IMAGES * train / batch_size,
        "infer_images_per_s": batch_size / infer,
        "train_step_ms": [round(t * 1e3, 3) for t in record["train"]],
        "infer_step_ms": [round(t * 1e3, 3) for t in record["infer"]],
        "peak_rss_mib": max(record["rss"]) if record["rss"] and None not in record["rss"] else None,
        "device_pool_mib": max(record["pool"]) if record["pool"] and None not in record["pool"] else None,
    }


def run_benchmark(
    model: str = "seed",
    batch_sizes=(128,),
    *,
    device="cpu",
    dtype: str = "float32",
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 3,
    compare: str | None = None,
    seed: int = 0,
    lr: float = 1e-3,
) -> dict:
    """Time training and inference of a preset for each batch size; with ``compare="torch"`` also PyTorch.

    Returns a JSON-friendly dict: the settings, the machine, and per batch size the medians over
    ``repeats`` runs of ``steps`` timed steps each (images/s for training and inference, training
    seconds per 60,000-image epoch extrapolated from that), every run's ms per step, peak RSS, the
    device memory pool on a GPU, and with a comparison the time ratios cnnx / PyTorch and the
    agreement of the first forward's logits. Raises ConfigError (or BackendUnavailable) on bad settings,
    and ResourceError for a batch size the machine cannot hold (checked before anything is allocated,
    see :func:`cnnx.bench.memory.check_batch_fits`) or when memory runs out all the same.
    """
    batch_sizes = tuple(batch_sizes)
    _check_settings(model, batch_sizes, dtype, steps, warmup, repeats, compare)
    backend = get_backend(device)
    machine = machine_info()
    threads = machine["blas"]["threads"] or 1
    rss = PeakRSS()
    result = {
        "model": model,
        "device": backend.describe(),
        "dtype": dtype,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "compare": compare,
        "seed": seed,
        "optimizer": f"adam lr={lr:g}",
        "data": f"synthetic: {SYNTHETIC_BATCHES} seeded batches of uniform [0, 1) images, uniform labels",
        "epoch": f"seconds per epoch extrapolated to {plural(EPOCH_IMAGES, 'image')} from the timed steps",
        "machine": machine,
        "workers": backend.workers(),
        "rss_reset": rss.reset(),
        "results": [],
    }
    probe = build_model(model, dtype=dtype)  # the activations per image, before anything is allocated
    for batch_size in batch_sizes:
        check_batch_fits(probe, batch_size)
    plan = {"model": model, "dtype": dtype, "seed": seed, "lr": lr, "steps": steps, "warmup": warmup,
            "repeats": repeats, "compare": compare, "threads": threads}  # fmt: skip
    for batch_size in batch_sizes:
        with out_of_memory_as_error(batch_size, backend):
            entry, torch_info = _time_batch_size(batch_size, backend, rss, plan)
        result["results"].append(entry)
        if torch_info:
            result["torch"] = torch_info
    result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def _time_batch_size(batch_size: int, backend, rss: PeakRSS, plan: dict) -> tuple[dict, dict | None]:
    """One batch size's entry of :func:`run_benchmark`'s results, and PyTorch's facts when compared;
    ``plan`` holds run_benchmark's settings."""
    dtype, compare, repeats = plan["dtype"], plan["compare"], plan["repeats"]
    ours = CnnxRunner(plan["model"], backend, dtype, plan["seed"], plan["lr"])
    runners = [ours] + ([TorchRunner(ours, plan["threads"])] if compare else [])
    batches = synthetic_batches(
        batch_size, ours.model.input_shape, ours.model.output_shapes()[-1][0], plan["seed"]
    )
    entry, torch_info = {"batch_size": batch_size}, None
    if compare:
        first = batches[0][0]
        entry["logits"] = _agreement(ours.logits(first).astype(np.float64), runners[1].logits(first), dtype)
        torch_info = {"version": runners[1].torch.__version__, "threads": runners[1].threads,
                      "device": runners[1].device}  # fmt: skip
    records = {r.name: {"train": [], "infer": [], "rss": [], "pool": []} for r in runners}
    for repeat in range(repeats):
        order = runners if repeat % 2 == 0 else runners[::-1]  # neither side always goes first
        for train in (True, False):
            for runner in order:
                reset_pool, read_pool = runner.memory_pool()
                reset_pool()
                rss.reset()
                seconds = runner.time(batches, plan["steps"], plan["warmup"], train)
                record = records[runner.name]
                record["train" if train else "infer"].append(seconds)
                record["rss"].append(rss.read())
                pool = read_pool()
                record["pool"].append(None if pool is None else pool / 2**20)
    for name, record in records.items():
        entry[name] = _summary(batch_size, record)
    if compare:
        entry["ratio"] = {
            "train_time": entry["cnnx"]["train_seconds_per_epoch"]
            / entry["torch"]["train_seconds_per_epoch"],
            "infer_time": entry["torch"]["infer_images_per_s"] / entry["cnnx"]["infer_images_per_s"],
        }
    return entry, torch_info


# -- reports and the command ----------------------------------------------------------------------


def format_report(result: dict) -> str:
    """The human-readable table of :func:`run_benchmark`'s result."""
    m = result["machine"]
    blas = m["blas"]
    lines = [
        f"cnnx bench: {result['model']} on {result['device']}, {result['dtype']}, {result['optimizer']}",
        f"machine: {m['cpu']}, {plural(m['cores'], 'core')}; BLAS {blas.get('library')} "
        f"{blas.get('version', '')} ({blas.get('kernel', '?')} kernel, "
        f"{plural(blas.get('threads') or 1, 'thread')}); load {_load(m['load_average'])}",
        f"cnnx steps on {plural(result.get('workers', 1), 'data-parallel worker')} (cnnx.nn.parallel)",
        f"timing: median of {plural(result['repeats'], 'run')} of {plural(result['steps'], 'step')} after "
        f"{plural(result['warmup'], 'warm-up step')}; {result['data']}",
    ]
    if "torch" in result:
        t = result["torch"]
        lines.append(
            f"PyTorch {t['version']} on {t['device']} with {plural(t['threads'], 'thread')}, "
            "timed in alternation"
        )
    lines += [
        "",
        f"{'batch':>5}  {'framework':<9}  {'train img/s':>11}  {'s/epoch*':>8}  {'infer img/s':>11}  "
        f"{'peak RSS MiB':>12}" + ("  pool MiB" if result["results"][0]["cnnx"]["device_pool_mib"] else ""),
    ]
    for entry in result["results"]:
        for name in ("cnnx", "torch"):
            if name not in entry:
                continue
            s = entry[name]
            rss = f"{s['peak_rss_mib']:.0f}" if s["peak_rss_mib"] is not None else "-"
            pool = f"  {s['device_pool_mib']:8.0f}" if s["device_pool_mib"] is not None else ""
            lines.append(
                f"{entry['batch_size']:>5}  {name:<9}  {s['train_images_per_s']:>11,.0f}  "
                f"{s['train_seconds_per_epoch']:>8.1f}  {s['infer_images_per_s']:>11,.0f}  {rss:>12}{pool}"
            )
        if "ratio" in entry:
            r, agree = entry["ratio"], entry["logits"]
            lines.append(
                f"{'':>5}  cnnx/torch time: train {r['train_time']:.2f}x, inference {r['infer_time']:.2f}x; "
                f"first logits max |diff| {agree['max_abs_diff']:.1e} (relative {agree['rel_error']:.1e}"
                f"{'' if agree['agree'] else ', ABOVE ' + format(agree['tolerance'], '.0e')})"
            )
    lines += [
        "",
        f"* {result['epoch']}; peak RSS is this process's during the framework's runs"
        + (", both frameworks loaded" if result["compare"] else "")
        + ("" if result["rss_reset"] else " (no reset possible here: the peak since the process started)"),
    ]
    return "\n".join(lines)


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "unknown"


def parse_batch_sizes(values) -> tuple[int, ...]:
    """``("128", "256,512")`` -> (128, 256, 512); ConfigError on anything but positive integers."""
    sizes = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part.isdigit() or int(part) < 1:
                raise ConfigError(
                    f"--batch-size takes positive integers (repeat it or separate with commas), got {part!r}"
                )
            sizes.append(int(part))
    return tuple(sizes)
