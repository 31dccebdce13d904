"""Named random streams: one seeded host generator per consumer of randomness.

Every consumer (the batch order, each stochastic layer, the augmentation pipeline) draws from a NumPy
``Generator`` of its own, derived from the run seed and a stable name, so adding a consumer never shifts
another's draws, and the same seed gives the same numbers on every backend (draws happen on the host).
A generator's whole state packs into six unsigned 64-bit integers, so streams are saved in model files
and checkpoints as plain arrays and restored exactly.
"""

from __future__ import annotations

import hashlib

import numpy as np  # host: random streams live on the host

# Streams whose key predates named streams keep it, so that runs repeat exactly across cnnx versions.
RESERVED_KEYS = {"shuffle": 1}
STATE_SIZE = 6  # PCG64: state (128 bits), increment (128 bits), has_uint32, uinteger
_MASK = (1 << 64) - 1


def stream_key(name: str) -> int:
    """A stable 64-bit number for a stream name (the same in every process and on every machine)."""
    if name in RESERVED_KEYS:
        return RESERVED_KEYS[name]
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def derive_rng(seed: int, name: str) -> np.random.Generator:  # host
    """The generator of stream ``name`` for run seed ``seed``."""
    return np.random.default_rng([int(seed), stream_key(name)])  # host


def pack_state(rng: np.random.Generator) -> np.ndarray:  # host
    """The generator's state as a uint64 array of :data:`STATE_SIZE` numbers (a copy)."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"only PCG64 streams can be saved, not {state.get('bit_generator')}")
    inner = state["state"]
    words = [inner["state"] >> 64, inner["state"] & _MASK, inner["inc"] >> 64, inner["inc"] & _MASK,
             state["has_uint32"], state["uinteger"]]  # fmt: skip
    return np.array(words, dtype=np.uint64)  # host


def generator_from_state(packed) -> np.random.Generator:  # host
    """A new generator in the state :func:`pack_state` packed; ValueError if the array cannot be one."""
    words = np.asarray(packed)  # host
    if words.shape != (STATE_SIZE,) or words.dtype != np.uint64:  # host
        raise ValueError(
            f"a stream state is {STATE_SIZE} uint64 numbers, got {words.dtype}{list(words.shape)}"
        )
    hi, lo, inc_hi, inc_lo, has_uint32, uinteger = (int(w) for w in words)
    if has_uint32 not in (0, 1) or uinteger >> 32 or not inc_lo & 1:
        raise ValueError("the numbers are not a PCG64 state")
    rng = np.random.default_rng()  # host
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": hi << 64 | lo, "inc": inc_hi << 64 | inc_lo},
        "has_uint32": has_uint32,
        "uinteger": uinteger,
    }
    return rng
