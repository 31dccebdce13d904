"""``cnnx bench --epoch``: whole training epochs on the real data set, as a user runs them, against a
PyTorch loop doing the same work, alternated in one process.

The step benchmark (:mod:`cnnx.bench.benchmark`) times steps on a few synthetic batches and multiplies.
A user's epoch does more: it gathers every batch from the uint8 data set in a new order, scales it,
sends it to the device, trains, reads the sums back and evaluates. This benchmark times that.

- cnnx: one epoch of :func:`cnnx.training.run_training`, with no test split, so the time is training
  alone. Then :func:`cnnx.training.evaluate` on the test set, timed on its own. The host pipeline
  (gather, scale, to_device for every batch of the epoch) is timed alone too and reported as a share of
  the training epoch.
- PyTorch: the same architecture with the same initial weights and Adam settings, the same batch order
  (cnnx's "shuffle" stream for the run seed), each batch converted from uint8 the same way
  (``float / 255``), forward, ``cross_entropy``, backward, step, and the same two sums kept on the device.
  Evaluation runs in ``inference_mode`` with the same batch size as cnnx's.

Runs alternate (cnnx, torch, torch, cnnx, ...) so that a busy machine slows both alike; the report
gives medians and every run.
"""

from __future__ import annotations

import statistics
import time

import numpy as np  # host: the data set and the timings live on the host

from cnnx.backends.mpi import world
from cnnx.checks import plural
from cnnx.data import Dataset, model_inputs
from cnnx.errors import ConfigError
from cnnx.nn.presets import build_model
from cnnx.training import RunConfig, evaluate, run_training, shuffle_rng

from .memory import check_batch_fits, out_of_memory_as_error
from .timing import CnnxRunner, TorchRunner, machine_info

EVAL_BATCH = 256  # what cnnx's epoch loop evaluates with (cnnx.training.fit's default for the test pass)


def _pipeline_seconds(dataset: Dataset, model, batch_size: int, seed: int) -> float:
    """Seconds to gather, scale and send every batch of one epoch, nothing else."""
    backend, order = model.backend, shuffle_rng(seed).permutation(len(dataset.train_images))
    labels = np.asarray(dataset.train_labels, np.int64)
    backend.synchronize()
    start = time.perf_counter()
    for first in range(0, len(order), batch_size):
        index = order[first : first + batch_size]
        backend.to_device(
            model_inputs(dataset.train_images[index], model.dtype, model.input_shape), model.dtype
        )
        backend.to_device(labels[index], "int64")
    backend.synchronize()
    return time.perf_counter() - start


def _cnnx_epoch(dataset: Dataset, config: RunConfig) -> dict:
    train_only = Dataset(dataset.train_images, dataset.train_labels, dataset.test_images[:0],
                         dataset.test_labels[:0], dataset.source)  # fmt: skip
    place = world()
    comm = None if place is None else place.communicator()
    before = (0.0, 0) if comm is None else (comm.seconds, comm.bytes)
    start = time.perf_counter()
    run = run_training(config, dataset=train_only, progress="none")
    run.model.backend.synchronize()
    train = time.perf_counter() - start
    collectives = {} if comm is None else {"collective_seconds": comm.seconds - before[0],
                                           "collective_bytes": comm.bytes - before[1]}  # fmt: skip
    start = time.perf_counter()
    _, accuracy, _ = evaluate(
        run.model, dataset.test_images, np.asarray(dataset.test_labels, np.int64), EVAL_BATCH
    )
    run.model.backend.synchronize()
    return {"train": train, "eval": time.perf_counter() - start, "accuracy": accuracy,
            "pipeline": _pipeline_seconds(dataset, run.model, config.batch_size, config.seed),
            **collectives}  # fmt: skip


def _torch_epoch(dataset: Dataset, config: RunConfig, threads: int) -> dict:
    twin = CnnxRunner(config.model, _backend(config), config.dtype, config.seed, config.lr or 1e-3)
    runner = TorchRunner(twin, threads)
    torch, model, optimizer = runner.torch, runner.model, runner.optimizer
    images, labels = dataset.train_images, np.asarray(dataset.train_labels, np.int64)
    order = shuffle_rng(config.seed).permutation(len(images))

    def batch(x_uint8, y):  # the same conversion as cnnx's: uint8 -> float, / 255, a channel axis
        x = torch.from_numpy(np.ascontiguousarray(x_uint8)).to(runner.dtype).div_(255).unsqueeze(1)
        return x.to(runner.device), torch.from_numpy(y).to(runner.device)

    runner.synchronize()
    start = time.perf_counter()
    loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    for first in range(0, len(order), config.batch_size):
        index = order[first : first + config.batch_size]
        x, y = batch(images[index], labels[index])
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)  # the sums cnnx keeps on the device, kept here too
        correct += (logits.detach().argmax(dim=1) == y).sum()
    float(loss_sum)  # read back once, as cnnx does at the epoch's end
    runner.synchronize()
    train = time.perf_counter() - start
    start = time.perf_counter()
    hits, test_labels = 0, np.asarray(dataset.test_labels, np.int64)
    with torch.inference_mode():
        for first in range(0, len(test_labels), EVAL_BATCH):
            x, y = batch(
                dataset.test_images[first : first + EVAL_BATCH], test_labels[first : first + EVAL_BATCH]
            )
            hits += int((model(x).argmax(dim=1) == y).sum())
    runner.synchronize()
    return {"train": train, "eval": time.perf_counter() - start, "accuracy": hits / max(len(test_labels), 1)}


def _backend(config: RunConfig):
    from cnnx.backends import get_backend

    return get_backend(config.device)


def run_epoch_benchmark(
    dataset: Dataset,
    *,
    model: str = "seed",
    batch_size: int = 128,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 3,
    compare: str | None = None,
    seed: int = 0,
) -> dict:
    """Time ``repeats`` whole epochs of cnnx (and, with ``compare="torch"``, of PyTorch, alternated) on
    ``dataset``. Returns a JSON-friendly dict: settings, machine, every run and the medians of training
    seconds, evaluation seconds and (cnnx) the host pipeline's seconds and share, with the ratios."""
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"--repeats must be a whole number >= 1, got {repeats!r}")
    size = min(batch_size, len(dataset.train_images))
    config = RunConfig(model=model, epochs=1, batch_size=size, seed=seed, device=device, dtype=dtype, lr=1e-3)
    check_batch_fits(build_model(model, dtype=dtype), size)
    machine = machine_info()
    threads = machine["blas"]["threads"] or 1
    runs = {"cnnx": []} | ({"torch": []} if compare else {})
    for repeat in range(repeats):
        names = list(runs) if repeat % 2 == 0 else list(runs)[::-1]  # neither side always goes first
        for name in names:
            with out_of_memory_as_error(size, _backend(config)):
                runs[name].append(
                    _cnnx_epoch(dataset, config) if name == "cnnx" else _torch_epoch(dataset, config, threads)
                )
    result = {
        "mode": "epoch",
        "model": model,
        "batch_size": config.batch_size,
        "device": device,
        "dtype": dtype,
        # The data-parallel workers of cnnx's steps (cnnx.nn.parallel): under mpiexec, the ranks.
        "workers": _backend(config).workers() if world() is None else world().size,
        "repeats": repeats,
        "data": f"{len(dataset.train_images):,} training and {len(dataset.test_images):,} test images from "
        f"{dataset.source}",
        "machine": machine,
        "runs": runs,
    }
    for name, rows in runs.items():
        result[name] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    result["cnnx"]["pipeline_share"] = result["cnnx"]["pipeline"] / result["cnnx"]["train"]
    if compare:
        result["ratio"] = {key: result["cnnx"][key] / result["torch"][key] for key in ("train", "eval")}
    return result


def format_epoch_report(result: dict) -> str:
    """The epoch benchmark as a short text table."""
    lines = [
        f"cnnx bench --epoch: {result['model']} on {result['device']}, {result['dtype']}, batch "
        f"{result['batch_size']}, {plural(result.get('workers', 1), 'worker')}, median of "
        f"{result['repeats']} alternated epochs",
        f"data: {result['data']}",
        "",
        f"{'framework':<10} {'train s':>8} {'eval s':>7} {'test acc':>9}  every run (train s)",
    ]
    for name in ("cnnx", "torch"):
        if name in result:
            row = result[name]
            every = " · ".join(f"{run['train']:.1f}" for run in result["runs"][name])
            lines.append(
                f"{name:<10} {row['train']:>8.1f} {row['eval']:>7.2f} {row['accuracy']:>9.4f}  {every}"
            )
    cnnx = result["cnnx"]
    lines.append(f"\ncnnx host pipeline (gather, scale, to_device): {cnnx['pipeline']:.2f} s, "
                 f"{cnnx['pipeline_share']:.1%} of the training epoch")  # fmt: skip
    if "collective_seconds" in cnnx:
        share = cnnx["collective_seconds"] / cnnx["train"]
        lines.append(f"MPI collectives on rank 0 (waiting for the others included): "
                     f"{cnnx['collective_seconds']:.2f} s, {share:.1%} of the training epoch")  # fmt: skip
    if "ratio" in result:
        lines.append(
            f"cnnx/torch time: train {result['ratio']['train']:.2f}x, eval {result['ratio']['eval']:.2f}x"
        )
    return "\n".join(lines)
