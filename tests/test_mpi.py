"""Training over MPI: ``mpiexec -n 2 cnnx train`` gives the single-process history bit for bit, stops
cleanly on SIGTERM, survives a killed or stopped rank, and refuses ranks that were given different
settings or data, each in one line.

The tests start real ranks with the ``mpiexec`` of the ``mpi`` extra (MPICH's wheel, in the test
extra); they skip only where mpi4py or mpiexec is missing. Each run is a few dozen steps on 600 images:
the real Fashion-MNIST where it is installed, else blob images in the official files' layout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnx.backends import mpi
from cnnx.data import SYSTEM_DIR, find_dataset

from helpers import write_blob_idx

MPIEXEC = shutil.which(
    "mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or mpi.mpi_problem() is not None,
    reason=f"MPI is not usable here: {mpi.mpi_problem() or 'no mpiexec'} (pip install 'cnnx[mpi]')",
)
RUN_SECONDS = 240  # the most a test's mpiexec may take before it counts as hung (a run takes seconds)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The real data when installed (runs take --limit 600 of it), else 640 blob images."""
    if find_dataset(SYSTEM_DIR) is not None:
        return SYSTEM_DIR
    return write_blob_idx(tmp_path_factory.mktemp("blobs"), train=640, test=200)


def _cnnx(*args) -> list[str]:
    return [sys.executable, "-m", "cnnx", *args]


def _mpiexec(ranks: int, *args, env=None, timeout=RUN_SECONDS) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(ranks), *_cnnx(*args)], capture_output=True, text=True,
                          env=_env(env), timeout=timeout)  # fmt: skip


def _env(extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in mpi.SIZE_VARIABLES}
    env.update(extra or {})
    return env


def _history(run: Path) -> list[dict]:
    rows = json.loads((run / "metrics.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _train_alone(out: Path, *args) -> None:
    done = subprocess.run(_cnnx("train", *args, "--out", str(out), "--quiet"), capture_output=True, text=True,
                          env=_env(), timeout=RUN_SECONDS)  # fmt: skip
    assert done.returncode == 0, done.stderr


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cnnx: error")]


def _started(run: Path, proc: subprocess.Popen, file: str = "metrics.json", deadline: float = 120.0) -> dict:
    """Wait until the run's record names its ranks (and ``file`` exists); returns the record."""
    limit = time.monotonic() + deadline
    while time.monotonic() < limit:
        assert proc.poll() is None, f"mpiexec ended early: {proc.communicate()}"
        try:
            record = json.loads((run / "metrics.json").read_text())
        except (OSError, ValueError):
            record = {}
        if "mpi" in record and (run / file).exists():
            return record
        time.sleep(0.05)
    raise AssertionError(f"the run in {run} did not start within {deadline} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _all_gone(pids, within: float = 10.0) -> bool:
    """Whether every process of ``pids`` has ended (a killed rank is reaped a moment after mpiexec ends)."""
    limit = time.monotonic() + within
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > limit:
            return False
        time.sleep(0.05)
    return True


def _long_run(data_dir, out, *extra):
    # 3 epochs of 6,000 images (the real data) or 20 of the blobs: seconds of steps, time enough to stop
    # the run in the middle.
    size = ["--limit", "6000", "--epochs", "3"] if data_dir == SYSTEM_DIR else ["--epochs", "20"]
    return ["train", "--model", "seed", "--batch-size", "64", *size, "--data-dir",
            str(data_dir), "--out", str(out), *extra]  # fmt: skip


# -- without a launcher ------------------------------------------------------------------------------


def test_alone_no_mpi_is_touched(monkeypatch):
    for name in mpi.SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert mpi.launched_size() == 1
    assert mpi.world() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    assert mpi.launched_size() == 4
    monkeypatch.setenv("PMI_SIZE", "x")
    assert mpi.launched_size() == 1


@pytest.mark.parametrize("text", ["0", "-3", "soon", "inf", "nan"])
def test_a_bad_timeout_is_one_line(monkeypatch, text):
    monkeypatch.setenv("CNNX_MPI_TIMEOUT", text)
    with pytest.raises(mpi.CnnxError, match="CNNX_MPI_TIMEOUT must be a positive number"):
        mpi.timeout_seconds()


def test_without_mpi4py_the_reason_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert "pip install 'cnnx[mpi]'" in mpi.mpi_problem()
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(mpi.MPIUnavailable, match=r"started by mpiexec with 2 ranks.*cnnx\[mpi\]"):
        mpi._import_mpi()


@needs_mpi
def test_info_says_mpi_is_usable():
    done = subprocess.run(_cnnx("info"), capture_output=True, text=True, env=_env(), timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr
    assert "mpi (one model on several processes: mpiexec -n N):\n  usable, mpi4py" in done.stdout


# -- the collectives -----------------------------------------------------------------------------------

COLLECTIVES = """
import sys
import numpy as np
from cnnx.backends.mpi import world
place = world()
comm = place.communicator()
rank = place.rank
# Uneven rows, one rank giving none, three dtypes: every rank gets the whole table in row order.
for dtype in ("float32", "float64", "int64"):
    rows = {0: 3, 1: 0, 2: 2}[rank]
    first = {0: 0, 1: 3, 2: 3}[rank]
    mine = (np.arange(rows * 4).reshape(rows, 2, 2) + 100 * rank).astype(dtype)
    table = comm.allgather(mine, first, 5)
    expected = np.concatenate([(np.arange(3 * 4).reshape(3, 2, 2)).astype(dtype),
                               (np.arange(2 * 4).reshape(2, 2, 2) + 200).astype(dtype)])
    assert table.dtype == np.dtype(dtype) and np.array_equal(table, expected), (rank, table)
    total = comm.allreduce(mine, first, 5)
    assert np.array_equal(total, expected.sum(axis=0)), total
assert comm.objects({"rank": rank, "name": "x" * rank}) == [{"rank": r, "name": "x" * r} for r in range(3)]
comm.barrier()
with open(f"{sys.argv[1]}/{rank}.ok", "w") as done:
    done.write(f"{rank} {place.size} {place.local_size}")
"""


@needs_mpi
def test_the_collectives_give_every_rank_the_whole_table_in_order(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    command = [MPIEXEC, "-n", "3", sys.executable, str(script), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(tmp_path / f"{rank}.ok").read_text() for rank in range(3)] == ["0 3 3", "1 3 3", "2 3 3"]


# -- the same numbers ------------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize(
    "model, extra", [("seed", []), ("cnn-bn", ["--dropout", "0.3", "--augment", "shift=2"])]
)
def test_two_ranks_give_the_single_process_run_bit_for_bit(tmp_path, data_dir, model, extra):
    args = ["--model", model, "--epochs", "2", "--limit", "600", "--batch-size", "64", "--data-dir",
            str(data_dir), "--eval-every", "5", "--log-every", "3", *extra]  # fmt: skip
    _train_alone(tmp_path / "alone", *args, "--workers", "1")
    done = _mpiexec(2, "train", *args, "--out", str(tmp_path / "ranks"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy") == 1, done.stdout  # rank 0 speaks for both
    assert "2 MPI ranks: rank 0 pid" in done.stdout
    assert _history(tmp_path / "ranks") == _history(tmp_path / "alone")
    alone, ranks = _arrays(tmp_path / "alone" / "model.npz"), _arrays(tmp_path / "ranks" / "model.npz")
    weights = [name for name in alone if not name.startswith("__")]
    assert weights and all(np.array_equal(alone[name], ranks[name]) for name in weights)
    record = json.loads((tmp_path / "ranks" / "metrics.json").read_text())
    assert record["mpi"]["ranks"] == 2 and record["status"] == "completed"
    assert record["curves"] == json.loads((tmp_path / "alone" / "metrics.json").read_text())["curves"]


@needs_mpi
def test_three_ranks_with_two_shards_leave_one_idle_and_agree(tmp_path, data_dir):
    args = ["--model", "seed", "--epochs", "1", "--limit", "600", "--batch-size", "64", "--data-dir",
            str(data_dir)]  # fmt: skip
    _train_alone(tmp_path / "alone", *args)
    done = _mpiexec(3, "train", *args, "--out", str(tmp_path / "ranks"))
    assert done.returncode == 0, done.stderr
    assert _history(tmp_path / "ranks") == _history(tmp_path / "alone")


API = """
import json, sys
import numpy as np
from cnnx.training import RunConfig, run_training
config = RunConfig(model="seed", epochs=1, limit=600, batch_size=64, data_dir=sys.argv[1])
run = run_training(config, sys.argv[2], progress="lines")
if run.writes:  # one rank alone: a prediction outside training never waits for the others
    run.model.predict(np.zeros((5, 1, 28, 28), "float32"))
with open(f"{sys.argv[3]}.{run.writes}", "w") as out:
    json.dump([{k: v for k, v in row.items() if k != "seconds"} for row in run.history], out)
"""


@needs_mpi
def test_run_training_under_mpiexec_trains_one_model_on_every_rank(tmp_path, data_dir):
    from cnnx.training import RunConfig, run_training

    script = tmp_path / "train.py"
    script.write_text(API)
    command = [MPIEXEC, "-n", "2", sys.executable, str(script), str(data_dir), str(tmp_path / "run"),
               str(tmp_path / "history")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epoch 1/1") == 1, done.stdout  # rank 0 reports for both
    config = RunConfig(model="seed", epochs=1, limit=600, batch_size=64, data_dir=str(data_dir), workers=1)
    history = run_training(config, progress="none").history
    alone = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    for writer in ("True", "False"):
        assert json.loads((tmp_path / f"history.{writer}").read_text()) == alone
    assert _history(tmp_path / "run") == alone


DEVICE = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from strict_backend import StrictBackend
from cnnx.backends import get_backend
from cnnx.backends.mpi import world
from cnnx.nn.parallel import ShardGroup, data_parallel
from cnnx.nn.presets import build_model
from cnnx.optim import make_optimizer

def train(backend, ranks):
    model = build_model("cnn-bn", seed=0, backend=backend)
    optimizer = make_optimizer("adam", model, 1e-3)
    rng = np.random.default_rng(1)
    out = []
    group = data_parallel(model, optimizer, max_batch=64, ranks=True) if ranks else ShardGroup(
        model, optimizer, max_batch=64, workers=1)
    with group as g:
        for rows in (64, 16, 64):  # 16 rows: one shard, so rank 1 has none of that batch
            x = backend.to_device(rng.random((rows, 1, 28, 28)).astype("float32"))
            y = backend.to_device(rng.integers(0, 10, rows))
            loss, correct = g.train_step(x, y, clip=1.0, skip_nonfinite=True)
            out.append(float(backend.to_host(loss)))
        out.append(backend.to_host(g.logits(x)).tolist())
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    return out, state

with open(f"{sys.argv[2]}.{world().rank}", "w") as f:
    json.dump(train(StrictBackend(), ranks=True), f)
if world().rank == 0:
    with open(f"{sys.argv[2]}.cpu", "w") as f:  # one process, the same shards, host arrays
        json.dump(train(get_backend("cpu"), ranks=False), f)
"""


@needs_mpi
def test_device_arrays_cross_the_host_only_through_the_backend(tmp_path):
    # The strict backend behaves like a GPU: every hidden device-to-host read is an error. Its ranks
    # agree to the bit; against the host run of the same shards the bound is float32 rounding
    # (1e-5 relative): its convolutions take the device's plan, which adds in another order.
    script = tmp_path / "device.py"
    script.write_text(DEVICE)
    command = [MPIEXEC, "-n", "2", sys.executable, str(script), str(Path(__file__).parent),
               str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=RUN_SECONDS)
    assert done.returncode == 0, done.stderr
    rank0, rank1, host = (json.loads((tmp_path / f"out.{end}").read_text()) for end in ("0", "1", "cpu"))
    assert rank0 == rank1
    losses, state = rank0
    assert np.allclose(losses[:3], host[0][:3], rtol=1e-5, atol=0)
    assert _rel_error(losses[3], host[0][3]) < 1e-5  # the last batch's logits
    for name, value in state.items():
        assert _rel_error(value, host[1][name]) < 1e-5, name


def _rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# -- faults ----------------------------------------------------------------------------------------


@needs_mpi
def test_sigterm_stops_every_rank_after_the_step_and_the_run_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = subprocess.Popen([MPIEXEC, "-n", "2", *_cnnx(*_long_run(data_dir, run))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        record = _started(run, proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=RUN_SECONDS)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert (
        err.count("stopped by SIGTERM") == 1 and f"resume with: mpiexec -n 2 cnnx train --resume {run}" in err
    )
    assert _all_gone(record["mpi"]["pids"])
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    done = _mpiexec(2, "train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    _train_alone(tmp_path / "alone", *_long_run(data_dir, tmp_path / "unused")[1:-2], "--workers", "1")
    assert _history(run) == _history(tmp_path / "alone")


@needs_mpi
def test_a_killed_rank_ends_every_rank_and_keeps_the_last_checkpoint(tmp_path, data_dir):
    run = tmp_path / "run"
    args = _long_run(data_dir, run, "--checkpoint-every", "10")
    proc = subprocess.Popen([MPIEXEC, "-n", "2", *_cnnx(*args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        record = _started(run, proc, "model.npz")
        os.kill(record["mpi"]["pids"][1], signal.SIGKILL)
        started = time.monotonic()
        out, err = proc.communicate(timeout=RUN_SECONDS)
        ended = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode != 0 and ended < 30, (proc.returncode, ended)
    # The launcher names the dead process; the run's first lines say which rank it was.
    pid = record["mpi"]["pids"][1]
    assert f"rank 1 pid {pid}" in out and f"PID {pid}" in out + err
    assert _all_gone(record["mpi"]["pids"])
    done = _mpiexec(2, "train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    _train_alone(tmp_path / "alone", *args[1:-4], "--workers", "1")
    assert _history(run) == _history(tmp_path / "alone")


@needs_mpi
def test_a_stopped_rank_is_named_in_one_line_within_the_timeout(tmp_path, data_dir):
    run = tmp_path / "run"
    args = _long_run(data_dir, run, "--checkpoint-every", "10")
    env = _env({"CNNX_MPI_TIMEOUT": "2"})
    proc = subprocess.Popen([MPIEXEC, "-n", "2", *_cnnx(*args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        record = _started(run, proc, "model.npz")
        pid = record["mpi"]["pids"][1]
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        out, err = proc.communicate(timeout=RUN_SECONDS)
        ended = time.monotonic() - started
    finally:
        proc.kill()
        for p in record["mpi"]["pids"]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    assert proc.returncode == 1 and ended < 2 + mpi.ROLL_SECONDS + 10, (proc.returncode, ended, err)
    assert _errors(err) == [_errors(err)[0]] and f"rank 1 (pid {pid} on" in _errors(err)[0], err
    assert "gave no answer for 2 s" in err and "Traceback" not in err
    assert _all_gone(record["mpi"]["pids"])
    status = json.loads((run / "metrics.json").read_text())
    assert status["status"] == "failed" and "rank 1" in status["error"]
    assert _arrays(run / "model.npz")  # the last checkpoint is whole


BUG = """
import sys
import cnnx.cli
from cnnx.backends.mpi import world

place = world()


@cnnx.cli.cli.command("boom")
def boom():
    if place.rank == 1:
        raise RuntimeError("a bug in rank 1")
    place.communicator().barrier()  # rank 0 waits here for a rank that will never come


sys.argv = ["cnnx", "boom"]
cnnx.cli.main()
"""


@needs_mpi
def test_a_bug_on_one_rank_shows_its_traceback_and_ends_every_rank(tmp_path):
    script = tmp_path / "bug.py"
    script.write_text(BUG)
    started = time.monotonic()
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          env=_env(), timeout=RUN_SECONDS)  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 30, done.stderr
    assert "RuntimeError: a bug in rank 1" in done.stderr and "Traceback" in done.stderr


# -- ranks that differ ------------------------------------------------------------------------------


def _two_programs(first: list[str], second: list[str], timeout=RUN_SECONDS) -> subprocess.CompletedProcess:
    command = [MPIEXEC, "-n", "1", *_cnnx(*first), ":", "-n", "1", *_cnnx(*second)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)


@needs_mpi
def test_ranks_given_different_settings_are_refused_in_one_line(tmp_path, data_dir):
    base = ["train", "--model", "seed", "--epochs", "1", "--limit", "600", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "run")]  # fmt: skip
    done = _two_programs(base, [*base, "--batch-size", "64"])
    assert done.returncode == 1
    assert _errors(done.stderr) == [
        "cnnx: error: rank 1 was given batch_size 64 where rank 0 has 128: every rank of a run needs the "
        "same settings"
    ], done.stderr
    assert "Traceback" not in done.stderr


@needs_mpi
def test_ranks_given_different_data_are_refused_in_one_line(tmp_path, data_dir):
    (tmp_path / "other").mkdir()
    other = write_blob_idx(tmp_path / "other", train=640, test=200)
    _shift_labels(other / "train-labels-idx1-ubyte.gz")  # other labels, whatever data_dir holds
    base = ["train", "--model", "seed", "--epochs", "1", "--limit", "600", "--out", str(tmp_path / "run")]
    done = _two_programs([*base, "--data-dir", str(data_dir)], [*base, "--data-dir", str(other)])
    assert done.returncode == 1
    assert _errors(done.stderr) == [
        "cnnx: error: rank 1 loaded different data from rank 0's: every rank of a run needs the same data "
        "set (see its --data-dir and --limit)"
    ], done.stderr


def _shift_labels(path: Path) -> None:
    import gzip

    raw = bytearray(gzip.decompress(path.read_bytes()))
    for i in range(8, len(raw)):
        raw[i] = (raw[i] + 1) % 10
    path.write_bytes(gzip.compress(bytes(raw)))


@needs_mpi
def test_a_bad_setting_on_every_rank_is_said_once(tmp_path, data_dir):
    done = _mpiexec(2, "train", "--model", "seed", "--epochs", "1", "--limit", "600", "--batch-size",
                    "100000", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))  # fmt: skip
    assert done.returncode == 1
    assert len(_errors(done.stderr)) == 1 and "batch size 100000 is larger" in done.stderr, done.stderr
