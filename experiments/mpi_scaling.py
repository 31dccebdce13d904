"""One epoch on one core, on one process's forked workers, and on MPI ranks, alternated; and what the
ranks' all-gather costs by size, for a model of the communication at sizes this machine cannot run.

    python experiments/mpi_scaling.py [--models seed,vgg-bn] [--ranks 2] [--rounds 3] [--limit vgg-bn:10000]
        [--sizes 1e3,1e7] [--out experiments/scaling/mpi.json]
    python experiments/mpi_scaling.py --model-from experiments/scaling/mpi.json

Each round runs, for every model, ``cnnx bench --epoch --repeats 1 --json`` three ways (the order turns
from round to round, so a drift in the machine's load falls on all of them):

- ``1 core``: one process, ``OPENBLAS_NUM_THREADS=1`` (one worker, one BLAS thread);
- ``workers``: one process whose forked workers share the cores (the default of ``cnnx train``);
- ``mpi``: ``mpiexec -n RANKS``, each rank on its share of the cores; the bench also reports the
  seconds its rank 0 spent in the ranks' collectives during the epoch (waiting for the others
  included), which is the communication share of a step.

Then ``mpiexec -n RANKS`` times the all-gather the ranks' steps make (a table of shards x values of
float32, split evenly over the ranks) for table sizes from 8 bytes to 64 MB: the latency ``alpha`` and
the seconds per byte ``beta`` of ``t = alpha + beta * bytes`` are fitted (:func:`fit`). The figures
are printed as Markdown tables and written as JSON. ``--model-from`` prints the cost model of
:func:`cost_model` from such a record: the speed-up of 2 to 64 ranks on shared memory and on two
assumed networks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WAYS = ("1 core", "workers", "mpi")


def _mpiexec() -> str:
    found = shutil.which(
        "mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise SystemExit("no mpiexec here: pip install 'cnnx[mpi]'")
    return found


def epoch(model: str, way: str, ranks: int, limit: int | None) -> dict:
    """One ``cnnx bench --epoch`` of ``model`` run ``way``: its JSON."""
    command = [sys.executable, "-m", "cnnx", "bench", "--epoch", "--model", model, "--repeats", "1", "--json"]
    if limit is not None:
        command += ["--limit", str(limit)]
    env = dict(os.environ)
    if way == "1 core":
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    elif way == "mpi":
        command = [_mpiexec(), "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


GATHER = """
import json, sys, time
import numpy as np
from cnnx.backends.mpi import world
place = world()
comm = place.communicator()
out = []
for total_bytes in [int(float(v)) for v in sys.argv[1].split(",")]:
    shards = max(place.size, 4)
    values = max(1, total_bytes // 4 // shards)
    mine = range(shards * place.rank // place.size, shards * (place.rank + 1) // place.size)
    rows = np.ones((len(mine), values), np.float32)
    times = []
    for repeat in range(23):
        comm.barrier()
        start = time.perf_counter()
        comm.allgather(rows, mine.start, shards)
        times.append(time.perf_counter() - start)
    out.append({"bytes": shards * values * 4, "seconds": sorted(times[3:])[len(times[3:]) // 2]})
if place.rank == 0:
    print(json.dumps(out))
"""


def gather_costs(ranks: int, sizes: list[float]) -> list[dict]:
    """The median seconds of the ranks' all-gather of a table of each size (bytes), on ``ranks`` ranks."""
    command = [
        _mpiexec(),
        "-n",
        str(ranks),
        sys.executable,
        "-c",
        GATHER,
        ",".join(f"{s:.0f}" for s in sizes),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the all-gather timing failed:\n{done.stderr}")
    return json.loads(done.stdout)


def fit(costs: list[dict]) -> tuple[float, float]:
    """``alpha`` (s) and ``beta`` (s per byte) of ``t = alpha + beta * bytes``: alpha the median time of
    the tables of at most 10 kB, beta the least-squares slope over those of 100 kB and more (tables
    larger than the caches dominate it, as gradient tables of megabytes do)."""
    small = [c["seconds"] for c in costs if c["bytes"] <= 10_000]
    alpha = float(np.median(small)) if small else 0.0
    x = np.array([c["bytes"] for c in costs if c["bytes"] >= 100_000], float)
    y = np.array([c["seconds"] for c in costs if c["bytes"] >= 100_000], float) - alpha
    beta = float((x * y).sum() / (x * x).sum()) if len(x) else 0.0
    return alpha, beta


# Assumed networks for the model beyond this machine (latency s, seconds per byte): shared memory is
# fitted here; the others are typical figures, not measurements.
NETWORKS = {"10 Gb Ethernet": (50e-6, 1 / 1.1e9), "100 Gb InfiniBand": (2e-6, 1 / 11e9)}
SHARD = 32  # images per shard: cnnx's default --shard-size


def cost_model(record: dict, ranks=(2, 4, 8, 16, 32, 64)) -> str:
    """The modelled speed-up of N ranks, each running one shard of 32 images of a batch of 32 N, from a
    record this script wrote: per-shard compute from the one-core epochs, the all-gather's cost from
    the fit (shared memory) or an assumed network. Each rank receives the other ranks' gradient rows,
    (N - 1) shards x P values x 4 bytes, and applies the whole update itself."""
    from cnnx.nn.presets import build_model

    networks = {"shared memory (fitted)": fit(record["allgather"]["costs"]), **NETWORKS}
    heads = " | ".join(f"{n} ranks" for n in ranks)
    lines = [f"| model | parameters | compute per shard | network | {heads} |",
             "|---|---:|---:|---|" + "---:|" * len(ranks)]  # fmt: skip
    for model, summary in record["summary"].items():
        params = build_model(model).parameter_count()
        images = int(record["runs"][model]["1 core"][0]["data"].split(" training")[0].replace(",", ""))
        shard = summary["train_seconds"]["1 core"] / (images / SHARD)  # one core, one shard, update included
        for name, (alpha, beta) in networks.items():
            cells = []
            for n in ranks:
                moved = (n - 1) * params * 4
                step = shard + max(1, (n - 1).bit_length()) * alpha + moved * beta
                cells.append(f"{n * shard / step:.1f}x")
            lines.append(
                f"| {model} | {params:,} | {shard * 1e3:.1f} ms | {name} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="seed,vgg-bn")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="MODEL:N",
        help="train MODEL's epochs on N images (repeatable); default: all 60,000",
    )
    parser.add_argument("--sizes", default="8,1e3,1e4,1e5,1e6,4e6,1.6e7,6.4e7")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--model-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="print only the cost model's table, from a record this script wrote",
    )
    args = parser.parse_args(argv)
    if args.model_from is not None:
        print(cost_model(json.loads(args.model_from.read_text())))
        return 0
    limits = {m: int(n) for m, n in (item.split(":") for item in args.limit)}
    models = args.models.split(",")
    runs = {model: {way: [] for way in WAYS} for model in models}
    started = time.time()
    for round_ in range(args.rounds):
        for model in models:
            ways = WAYS if round_ % 2 == 0 else WAYS[::-1]
            for way in ways:
                result = epoch(model, way, args.ranks, limits.get(model))
                runs[model][way].append(result)
                print(
                    f"round {round_ + 1} {model:8s} {way:8s} train {result['cnnx']['train']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    costs = gather_costs(args.ranks, [float(v) for v in args.sizes.split(",")])
    alpha, beta = fit(costs)
    print(
        f"\n| model | images | 1 core (s) | {runs[models[0]]['workers'][0]['workers']} forked workers (s) | "
        f"{args.ranks} MPI ranks (s) | workers speed-up | MPI speed-up | MPI: share in collectives |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summary = {}
    for model in models:
        train = {way: statistics.median(r["cnnx"]["train"] for r in runs[model][way]) for way in WAYS}
        share = statistics.median(
            r["cnnx"]["collective_seconds"] / r["cnnx"]["train"] for r in runs[model]["mpi"]
        )
        images = runs[model]["mpi"][0]["data"].split(" training")[0]
        summary[model] = {"train_seconds": train, "collective_share": share}
        seconds = " | ".join(f"{train[way]:.2f}" for way in WAYS)
        speedups = f"{train['1 core'] / train['workers']:.2f}x | {train['1 core'] / train['mpi']:.2f}x"
        print(f"| {model} | {images} | {seconds} | {speedups} | {share:.1%} |")
    print(
        f"\nall-gather on {args.ranks} ranks: alpha {alpha * 1e6:.1f} us, beta {beta * 1e9:.3f} ns/byte "
        f"({1 / beta / 1e9:.2f} GB/s)"
    )
    print("\n| table bytes | seconds (median of 20) | model |")
    print("|---|---|---|")
    for c in costs:
        print(
            f"| {c['bytes']:,} | {c['seconds'] * 1e6:.1f} us | {(alpha + beta * c['bytes']) * 1e6:.1f} us |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "ranks": args.ranks,
            "rounds": args.rounds,
            "limits": limits,
            "summary": summary,
            "allgather": {"costs": costs, "alpha_seconds": alpha, "beta_seconds_per_byte": beta},
            "machine": runs[models[0]]["mpi"][0]["machine"],
            "runs": runs,
            "minutes": (time.time() - started) / 60,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
