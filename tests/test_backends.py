"""The device seam: choosing a backend, transfers, and honest errors when the GPU is missing."""

from __future__ import annotations

import numpy as np
import pytest

from cnnx.backends import BackendUnavailable, available_backends, get_backend


def test_cpu_backend_is_numpy():
    backend = get_backend("cpu")
    assert backend.name == "cpu" and backend.xp is np


def test_a_backend_object_is_returned_as_is():
    backend = get_backend("cpu")
    assert get_backend(backend) is backend and get_backend("CPU") is backend


def test_gpu_request_without_cuda_names_the_reason_in_one_line():
    if available_backends()["gpu"] is None:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(BackendUnavailable) as info:
        get_backend("gpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith("GPU backend unavailable: ")
    assert len(message) > len("GPU backend unavailable: ") + 10, "the reason is missing"


def test_auto_picks_the_gpu_only_when_it_is_usable():
    expected = "gpu" if available_backends()["gpu"] is None else "cpu"
    assert get_backend("auto").name == expected


def test_an_unknown_device_names_the_choices():
    with pytest.raises(BackendUnavailable, match="unknown device 'tpu': choose one of cpu, gpu, auto"):
        get_backend("tpu")


def test_to_device_casts_and_to_host_returns_numpy(backend):
    on_device = backend.to_device([1, 2, 3], "float32")
    assert on_device.dtype == np.float32
    host = backend.to_host(on_device)
    assert isinstance(host, np.ndarray) and host.tolist() == [1.0, 2.0, 3.0]


def test_transfers_copy_so_writes_on_one_side_never_reach_the_other(backend):
    host = np.arange(6.0)
    device = backend.to_device(host, "float64")
    host[0] = 100.0
    back = backend.to_host(device)
    back[1] = 200.0
    assert backend.to_host(device).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "a transfer shared memory"
