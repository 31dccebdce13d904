"""One run of an experiment grid, in a process of its own: ``python -m cnnx.experiments.worker TASK_JSON``.

The grid starts one such process per run, so a run that crashes, runs out of memory or is killed takes
nothing else with it, and its last checkpoint lets the next ``cnnx experiment run`` resume it. The task
is a JSON object: ``config`` (RunConfig fields), ``run_dir``, ``resume`` and ``threads`` (the BLAS and
thread-pool cap for this run; the grid divides the cores between the runs that share a machine).

Exit status: 0 completed, 3 diverged (recorded in metrics.json, a result like any other), 4 the run
directory is locked by another process that writes it (nothing was touched: the run is that process's),
1 failed (the cause on the last line of stderr).
"""

from __future__ import annotations

import json
import sys

DIVERGED = 3
LOCKED = 4


def main(argv: list[str]) -> int:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    from cnnx.data import load_dataset
    from cnnx.errors import CnnxError, DivergenceError, RunLockedError
    from cnnx.training import RunConfig, run_training

    task = json.loads(argv[0])
    config = RunConfig.from_dict(task["config"])
    threads = task.get("threads")
    limits = threadpool_limits(limits=threads, user_api="blas") if threads else None
    try:
        dataset = load_dataset(config.dataset, config.data_dir, limit=config.limit, quiet=True)
        if config.max_steps is not None:  # enough epochs for the steps; max_steps ends the run
            batches = -(-len(dataset.train_images) // config.batch_size)
            config = config.replace(epochs=max(1, -(-config.max_steps // batches)))
        run_training(
            config, task["run_dir"], resume=task.get("resume", False), dataset=dataset, progress="none"
        )
    except DivergenceError as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        return DIVERGED
    except RunLockedError as exc:
        print(f"locked: {exc}", file=sys.stderr)
        return LOCKED
    except CnnxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if limits is not None:
            limits.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
