"""Memory for ``cnnx bench``: a batch size the machine cannot hold is refused before anything is
allocated, and running out of memory all the same is one ResourceError line, never a traceback."""

from __future__ import annotations

import contextlib
import math
import os

from cnnx.errors import ResourceError, out_of_memory_errors

from .timing import SYNTHETIC_BATCHES

# A training step holds each activation about three times over: the output its backward needs, that
# output's gradient, and a layer's scratch or a temporary beside them.
TRAINING_COPIES = 3


def machine_memory() -> int | None:
    """The machine's physical memory in bytes, where the system says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def step_bytes(model, batch_size: int) -> int:
    """About how many bytes a training step of ``model`` on ``batch_size`` images needs: the synthetic
    host batches and the activations (see :meth:`cnnx.nn.Sequential.activation_values`)."""
    per_image = TRAINING_COPIES * model.activation_values() * model.dtype.itemsize
    per_image += SYNTHETIC_BATCHES * 4 * math.prod(model.input_shape)  # float32 host batches
    return batch_size * per_image


def check_batch_fits(model, batch_size: int, memory: int | None = None) -> None:
    """ResourceError naming a batch size that fits when a step on ``batch_size`` images would need more
    than the machine's ``memory`` (default: all of it, as :func:`machine_memory` reads it)."""
    memory = machine_memory() if memory is None else memory
    need = step_bytes(model, batch_size)
    if memory is None or need <= memory:
        return
    fits = max(1, 2 ** int(math.log2(max(1, memory // 2 // step_bytes(model, 1)))))  # half the machine
    raise ResourceError(
        f"--batch-size {batch_size:,} needs about {need / 2**30:,.1f} GiB for the {model.name} model's "
        f"activations, more than this machine's {memory / 2**30:,.1f} GiB: try --batch-size {fits:,} or less"
    )


@contextlib.contextmanager
def out_of_memory_as_error(batch_size: int, backend):
    """Turn running out of memory inside the block into a ResourceError naming ``batch_size``."""
    try:
        yield
    except out_of_memory_errors() as exc:
        raise ResourceError(
            f"out of memory benchmarking batch size {batch_size:,} on {backend.describe()} "
            f"({type(exc).__name__}): try a smaller one, e.g. --batch-size {max(1, batch_size // 2):,}"
        ) from None
