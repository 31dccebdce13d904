"""Timed runs for ``cnnx bench``: a cnnx model and its PyTorch twin stepped through synthetic batches,
and the facts a benchmark result needs about the machine (processor, BLAS, peak memory).

Both runners time a run of steps the same way: ``warmup`` untimed steps, a device synchronisation, the
clock, ``steps`` steps, another synchronisation, the clock again.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

import numpy as np  # host: synthetic batches and weights for the twin live on the host

from cnnx.errors import ConfigError
from cnnx.nn.parallel import data_parallel
from cnnx.nn.presets import build_model
from cnnx.optim import make_optimizer
from cnnx.training.step import train_step
from cnnx.version import __version__

SYNTHETIC_BATCHES = 4  # distinct batches cycled through, so no step reuses the previous one's input


# -- the machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's model name (``lscpu``'s "Model name"), or the platform's guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """NumPy's BLAS at run time (library, version, kernel, threads) through threadpoolctl when installed."""
    info = {"threads": os.cpu_count() or 1}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info | {"library": "unknown (threadpoolctl not installed)"}
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    numpy_pools = [p for p in pools if "numpy" in p.get("filepath", "")] or pools
    if not numpy_pools:
        return info | {"library": "unknown"}
    pool = numpy_pools[0]
    return {
        "library": pool.get("internal_api"),
        "version": pool.get("version"),
        "kernel": pool.get("architecture"),
        "threads": pool.get("num_threads"),
    }


def machine_info() -> dict:
    """Where the numbers come from: processor, cores, load, versions and the BLAS environment."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "cnnx": __version__,
        "numpy": np.__version__,
        "blas": blas_info(),
        # Set on some machines for older OpenBLAS builds; they change which kernel runs.
        "env": {
            k: os.environ[k]
            for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
            if k in os.environ
        },
    }


class PeakRSS:
    """Peak resident memory of this process between :meth:`reset` and :meth:`read`, in MiB.

    Linux resets the high-water mark when "5" is written to /proc/self/clear_refs; where that is not
    possible the figure is the peak since the process started (``reset`` then says so).
    """

    def reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    def read(self) -> float | None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource
        except ImportError:
            return None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the two frameworks ---------------------------------------------------------------------------


def synthetic_batches(
    batch_size: int, input_shape, classes: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A few (images float32 in [0, 1), labels int64) host batches from a seeded generator."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.random((batch_size, *input_shape), dtype=np.float32),
            rng.integers(0, classes, batch_size, dtype=np.int64),
        )
        for _ in range(SYNTHETIC_BATCHES)
    ]


class Runner:
    """A model and its optimizer in one framework, timed a run of steps at a time."""

    name = "abstract"

    def _steps(self, batches, count: int, train: bool) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for the device (a no-op on the CPU) before a clock is read."""

    def session(self, batches):
        """What the timed steps run inside, set up before the warm-up (nothing here)."""
        return contextlib.nullcontext()

    def time(self, batches, steps: int, warmup: int, train: bool) -> float:
        """Seconds per training (or inference) step over ``steps`` steps after ``warmup`` untimed ones."""
        with self.session(batches):
            self._steps(batches, warmup, train)
            self.synchronize()
            start = time.perf_counter()
            self._steps(batches, steps, train)
            self.synchronize()
            return (time.perf_counter() - start) / steps

    def memory_pool(self) -> tuple:
        """(reset, read) for the device memory pool's peak in bytes; read gives None on the CPU."""
        return (lambda: None), (lambda: None)


class CnnxRunner(Runner):
    """A cnnx model and its Adam optimizer, timed step by step on its backend."""

    name = "cnnx"

    def __init__(self, model_name: str, backend, dtype: str, seed: int, lr: float):
        self.backend = backend
        self.model = build_model(model_name, backend=backend, dtype=dtype, seed=seed)
        self.optimizer = make_optimizer("adam", self.model, lr)
        self.dtype = self.model.dtype
        self.workers = None  # the backend's (see cnnx.nn.parallel); the benchmark may set it
        self.group = None  # the workers while a session runs

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.backend.to_host(self.model(self.backend.to_device(x, self.dtype)))

    @contextlib.contextmanager
    def session(self, batches):
        """The data-parallel workers, as cnnx train's epochs run (started before the warm-up)."""
        most = max(len(x) for x, _ in batches)
        # Under mpiexec the ranks share the steps, as cnnx train's do.
        with data_parallel(self.model, self.optimizer, max_batch=most, workers=self.workers,
                           ranks=True) as self.group:  # fmt: skip
            yield
        self.group = None

    def _steps(self, batches, count: int, train: bool) -> None:
        backend, model, group = self.backend, self.model, self.group
        for i in range(count):
            x, labels = batches[i % len(batches)]
            x = backend.to_device(x, self.dtype)
            if train:
                train_step(model, self.optimizer, x, backend.to_device(labels), group=group)
            else:
                model(x) if group is None else group.logits(x)  # evaluation

    def synchronize(self) -> None:
        self.backend.synchronize()

    def memory_pool(self) -> tuple:
        return self.backend.release_memory_pool, self.backend.memory_pool_bytes


class TorchRunner(Runner):
    """The same architecture in PyTorch with the same initial weights and Adam settings.

    PyTorch is imported here, when a comparison asks for it: it is never a dependency of cnnx.
    """

    name = "torch"

    def __init__(self, twin: CnnxRunner, threads: int):
        try:
            import torch
        except ImportError:
            raise ConfigError(
                "--compare torch needs PyTorch, which is not installed (pip install torch)"
            ) from None
        self.torch = torch
        self.device = "cuda" if twin.backend.name == "gpu" else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "--compare torch on the GPU needs a CUDA build of PyTorch, and this one has none"
            )
        if self.device == "cpu":
            torch.set_num_threads(threads)
        else:
            # cnnx computes in full float32 on the GPU; TF32 convolutions would not be the same arithmetic.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.dtype = getattr(torch, str(twin.dtype))
        self.model = self._build(twin).to(device=self.device, dtype=self.dtype)
        opt = twin.optimizer
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps
        )
        self.threads = torch.get_num_threads()

    def _build(self, twin: CnnxRunner):
        return self.torch.nn.Sequential(
            *(self.mirror(layer, twin.backend.to_host) for layer in twin.model.layers)
        )

    def mirror(self, layer, to_host):
        """The PyTorch module that computes what ``layer`` computes, with its weights: the one mapping,
        :func:`cnnx.interop.pytorch.mirror`."""
        from cnnx.interop.pytorch import mirror

        try:
            return mirror(layer, to_host, self.torch)
        except ConfigError as exc:
            raise ConfigError(f"--compare torch: {exc}") from None

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Evaluation-mode logits (dropout off, batch norm on its running averages), as cnnx's."""
        self.model.eval()
        try:
            with self.torch.no_grad():
                out = self.model(self._to_device(x))
        finally:
            self.model.train()
        return out.cpu().numpy().astype(np.float64)

    def _to_device(self, array):
        tensor = self.torch.from_numpy(array)
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.to(self.device)

    def _steps(self, batches, count: int, train: bool) -> None:
        torch, model, opt = self.torch, self.model, self.optimizer
        for i in range(count):
            x, labels = batches[i % len(batches)]
            x = self._to_device(x)
            if train:
                labels = self._to_device(labels)
                opt.zero_grad(set_to_none=True)
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                loss.backward()
                opt.step()
                # What cnnx's train_step also returns: the loss and accuracy sums, left on the device.
                _ = (loss.detach() * x.shape[0], (logits.detach().argmax(dim=1) == labels).sum())
            else:
                with torch.inference_mode():
                    model(x)

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def memory_pool(self) -> tuple:
        if self.device != "cuda":
            return super().memory_pool()
        cuda = self.torch.cuda
        return cuda.reset_peak_memory_stats, cuda.max_memory_allocated
