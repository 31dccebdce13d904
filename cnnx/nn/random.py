"""Named random streams: one seeded host generator per consumer of randomness.

Every consumer (the batch order, each stochastic layer, the augmentation pipeline) draws from a NumPy
``Generator`` of its own, derived from the run seed and a stable name, so adding a consumer never shifts
another's draws, and the same seed gives the same numbers on every backend (draws happen on the host).
A generator's whole state packs into six unsigned 64-bit integers, so streams are saved in model files
and checkpoints as plain arrays and restored exactly.

:class:`BatchDraws` lets a batch run in shards draw what it would draw whole: a layer's draw is made
once for the whole batch and every shard takes its rows.
"""

from __future__ import annotations

import hashlib
import threading

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


class BatchDraws:
    """The random draws of one batch of ``n`` samples, for the shard of rows ``[start, stop)``.

    The first shard that asks for a stream's draw makes it for the whole batch, ``make(rng, (n,
    *per_sample))``: the call a whole-batch forward makes, so a stream advances the same way however the
    batch is cut. The draw is kept here and every shard gets its own rows of it. :meth:`shard` gives
    the other shards' objects, which share the kept draws; shards may ask from several threads. A
    stream makes one draw per batch.
    """

    def __init__(self, n: int, start: int = 0, stop: int | None = None, *, _kept=None):
        stop = n if stop is None else stop
        if not 0 <= start < stop <= n:
            raise ValueError(f"a shard is rows [start, stop) of the batch's {n}, got [{start}, {stop})")
        self.n, self.start, self.stop = n, start, stop
        self._kept = {"lock": threading.Lock(), "draws": {}} if _kept is None else _kept

    def shard(self, start: int, stop: int) -> BatchDraws:
        """The draws of rows ``[start, stop)`` of the same batch (sharing what is drawn)."""
        return BatchDraws(self.n, start, stop, _kept=self._kept)

    def rows(self, rng: np.random.Generator, shape: tuple, make):  # host
        """This shard's rows of the whole batch's draw from ``rng``; ``shape`` is the shard's."""
        if shape[0] != self.stop - self.start:
            raise ValueError(f"a shard of {self.stop - self.start} rows got {shape[0]}")
        with self._kept["lock"]:
            kept = self._kept["draws"].get(id(rng))
            if kept is None:  # the generator is kept too: its id is never another's while it is here
                kept = self._kept["draws"][id(rng)] = (rng, make(rng, (self.n, *shape[1:])))
        if kept[1].shape[1:] != tuple(shape[1:]):
            raise ValueError(f"one stream drew {kept[1].shape[1:]} per sample and is asked for {shape[1:]}")
        return kept[1][self.start : self.stop]
