"""The CUDA backend: ``xp`` is CuPy. Imported lazily, so cnnx works where CuPy is absent."""

from __future__ import annotations

import numpy as np

from .base import Backend


def gpu_problem() -> str | None:
    """None when CuPy and a CUDA device are usable, else a one-line reason why not."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'cnnx[gpu]', or cupy-cuda13x for CUDA 13 drivers)"
    except Exception as exc:  # a broken CuPy install raises all sorts of things at import
        return f"CuPy failed to import: {_one_line(exc)}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no usable CUDA device or driver ({_one_line(exc)})"
    if count < 1:
        return "no CUDA device found"
    try:
        driver = cupy.cuda.runtime.driverGetVersion()
        runtime = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as exc:
        return f"cannot query the CUDA driver ({_one_line(exc)})"
    if driver < runtime:
        return (
            f"the CUDA driver ({_cuda_version(driver)}) is older than CuPy's CUDA runtime "
            f"({_cuda_version(runtime)}): update the driver or install the matching cupy-cudaXXx wheel"
        )
    try:
        cupy.zeros(1, dtype=cupy.float32).sum()
    except Exception as exc:
        return f"a CUDA device exists but cannot run a kernel ({_one_line(exc)})"
    return None


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class CupyBackend(Backend):
    name = "gpu"

    def __init__(self):
        import cupy

        from .mpi import world

        place = world()
        if place is not None:  # under mpiexec, each rank takes a device of its host: rank % devices
            cupy.cuda.Device(place.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        self.xp = cupy

    # Both transfers always copy, as Backend promises: cupy.asarray would hand back a device array that
    # already has the dtype, and a host input would come back from to_host as the same object.
    def to_device(self, array, dtype=None):
        return self.xp.array(array, dtype=dtype, copy=True)

    def to_host(self, array) -> np.ndarray:
        if isinstance(array, np.ndarray):
            return array.copy()
        return self.xp.asnumpy(array)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def memory_pool_bytes(self) -> int | None:
        # The pool keeps freed blocks, so what it holds after a run is the run's peak (give or take
        # fragmentation) once release_memory_pool() emptied it beforehand.
        return int(self.xp.get_default_memory_pool().total_bytes())

    def release_memory_pool(self) -> None:
        self.synchronize()
        self.xp.get_default_memory_pool().free_all_blocks()

    def describe(self) -> str:
        cupy = self.xp
        device = cupy.cuda.Device()
        try:
            props = cupy.cuda.runtime.getDeviceProperties(device.id)
            label = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:
            label = f"device {device.id}"
        return f"gpu ({label}, CuPy {cupy.__version__})"
