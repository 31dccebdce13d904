"""A backend that behaves like a GPU where it matters for hidden synchronisation, on the CPU.

``StrictBackend().xp`` wraps NumPy. Its arrays (:class:`StrictArray`) compute exactly what NumPy computes,
but refuse every way of reading a value back to the host other than ``Backend.to_host``: ``float()``,
``int()``, ``bool()`` (so ``if loss < best``), ``operator.index``, ``numpy.asarray``, ``.item()``,
``.tolist()``, ``repr``/``str``/``format`` of the values. On a CuPy array each of these is a device-to-host
copy and a synchronisation; here it is a :class:`HostReadBack` error, so a CPU-only CI run finds them.

Like CuPy, the strict arrays also refuse to mix with host NumPy arrays (in operators, indexing and
``xp`` functions), and ``xp.<name>`` refuses names that CuPy does not have (when CuPy is importable).
Structure stays free: ``shape``, ``dtype``, ``ndim``, ``size`` and ``len()`` are host values on a GPU
too. Transfers copy, as they do between host and device, so code that relies on ``to_device`` or
``to_host`` aliasing its argument behaves here as it would on a GPU.
"""

from __future__ import annotations

import types

import numpy as np

from cnnx.backends import Backend


class HostReadBack(TypeError):
    """A device value was read back to the host outside ``Backend.to_host`` (a hidden GPU sync)."""


def _refuse(what: str):
    raise HostReadBack(
        f"{what} reads a device array back to the host (a GPU sync): go through Backend.to_host"
    )


def _cupy_module():
    try:
        import cupy
    except Exception:  # CuPy absent or broken: xp then checks no names (tests/test_guards.py skips too)
        return None
    return cupy


# ndarray methods that exist on cupy.ndarray too and return arrays or host structure; anything else is
# refused until someone checks CuPy has it and adds it here.
METHODS = frozenset({
    "all", "any", "argmax", "argmin", "astype", "clip", "copy", "cumsum", "dot", "fill", "flatten", "max",
    "mean", "min", "nonzero", "prod", "ravel", "repeat", "reshape", "round", "squeeze", "std", "sum",
    "swapaxes", "take", "transpose", "var", "view",
})  # fmt: skip


def unwrap(value, where: str):
    """The NumPy data behind strict arrays in ``value`` (recursing into tuples, lists and dicts).

    A bare NumPy array here is a host array entering device code without ``to_device``: refused, as CuPy
    refuses it.
    """
    if isinstance(value, StrictArray):
        return value._data
    if isinstance(value, np.ndarray):
        raise TypeError(
            f"a host NumPy array {value.shape} reached {where} on the device: use Backend.to_device"
        )
    if isinstance(value, tuple):
        return tuple(unwrap(v, where) for v in value)
    if isinstance(value, list):
        return [unwrap(v, where) for v in value]
    if isinstance(value, dict):
        return {k: unwrap(v, where) for k, v in value.items()}
    return value


def wrap(value):
    """Wrap NumPy results as device arrays; a NumPy scalar becomes a 0-d array, as CuPy returns."""
    if isinstance(value, np.ndarray):
        return StrictArray(value)
    if isinstance(value, np.generic):
        return StrictArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _binary(ufunc, name):
    def forward(self, other):
        return wrap(ufunc(self._data, unwrap(other, f"operator {name}")))

    def reflected(self, other):
        return wrap(ufunc(unwrap(other, f"operator {name}"), self._data))

    def inplace(self, other):
        ufunc(self._data, unwrap(other, f"operator {name}="), out=self._data)
        return self

    return forward, reflected, inplace


class StrictArray:
    """A device array stand-in: NumPy data that cannot be read on the host except through ``to_host``."""

    __slots__ = ("_data",)
    __hash__ = None  # like every mutable array

    def __init__(self, data: np.ndarray):
        self._data = data

    # -- structure lives on the host on every device: free to read -----------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    T = property(lambda self: StrictArray(self._data.T))

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name):
        if name in METHODS:
            method = getattr(self._data, name)
            return lambda *args, **kwargs: wrap(method(*unwrap(args, name), **unwrap(kwargs, name)))
        raise AttributeError(
            f"StrictArray has no attribute {name!r} (not allowed, or not in cnnx.layercheck.strict.METHODS)"
        )

    def __getitem__(self, key):
        return wrap(self._data[unwrap(key, "an index")])

    def __setitem__(self, key, value):
        self._data[unwrap(key, "an index")] = unwrap(value, "an assignment")

    # -- every read-back of values is refused -------------------------------------------------------
    def __float__(self):
        _refuse("float()")

    def __int__(self):
        _refuse("int()")

    def __complex__(self):
        _refuse("complex()")

    def __bool__(self):
        _refuse("bool() (an `if` or `and` on an array)")

    def __index__(self):
        _refuse("using an array as a Python index")

    def __array__(self, *args, **kwargs):
        _refuse("numpy.asarray()/numpy.array()")

    def __repr__(self):
        _refuse("repr()")

    def __str__(self):
        _refuse("str()/print()")

    def __format__(self, spec):
        _refuse("format()/an f-string")

    def item(self, *args):
        _refuse(".item()")

    def tolist(self):
        _refuse(".tolist()")

    def tobytes(self, *args, **kwargs):
        _refuse(".tobytes()")

    # NumPy functions called directly on a device array: device code must go through xp.
    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"numpy.{func.__name__} was called on a device array: device code calls xp.{func.__name__}"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # Reached through a NumPy scalar on the left of an operator, or np.<ufunc>(device array): CuPy
        # computes both, so this does too, unless a host array takes part.
        out = kwargs.get("out")
        result = getattr(ufunc, method)(
            *unwrap(inputs, f"numpy.{ufunc.__name__}"), **unwrap(kwargs, f"numpy.{ufunc.__name__}")
        )
        return out[0] if out is not None and len(out) == 1 else wrap(result)

    # -- arithmetic: NumPy's ufuncs on the data, never on the wrapper -------------------------------
    def __neg__(self):
        return wrap(-self._data)

    def __pos__(self):
        return wrap(+self._data)

    def __abs__(self):
        return wrap(abs(self._data))

    def __invert__(self):
        return wrap(~self._data)


# Operators are NumPy's ufuncs applied to the data behind the wrappers: plain, reflected and in place.
_ARITHMETIC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
               "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
               "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}  # fmt: skip
_COMPARISONS = {"lt": np.less, "le": np.less_equal, "eq": np.equal, "ne": np.not_equal, "gt": np.greater,
                "ge": np.greater_equal}  # fmt: skip
for _name, _ufunc in _ARITHMETIC.items():
    _plain, _reflected, _inplace = _binary(_ufunc, _name)
    setattr(StrictArray, f"__{_name}__", _plain)
    setattr(StrictArray, f"__r{_name}__", _reflected)
    setattr(StrictArray, f"__i{_name}__", _inplace)
for _name, _ufunc in _COMPARISONS.items():
    setattr(StrictArray, f"__{_name}__", _binary(_ufunc, _name)[0])


class StrictUfunc:
    """``xp.<ufunc>``: callable, with ``at``/``reduce``/``accumulate``/``outer`` on unwrapped data."""

    def __init__(self, ufunc: np.ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        where = f"xp.{self._ufunc.__name__}"
        out = kwargs.get("out")
        result = self._ufunc(*unwrap(args, where), **unwrap(kwargs, where))
        if out is None:
            return wrap(result)
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out  # the caller's own arrays

    def __getattr__(self, name):
        value = getattr(self._ufunc, name)
        if not callable(value):
            return value
        where = f"xp.{self._ufunc.__name__}.{name}"
        return lambda *args, **kwargs: wrap(value(*unwrap(args, where), **unwrap(kwargs, where)))


class StrictModule:
    """``xp``: NumPy's namespace, with array arguments unwrapped and array results wrapped.

    A name NumPy has but CuPy lacks raises AttributeError, as it would on a GPU.
    """

    def __init__(self, module=np, cupy_module=None, prefix: str = "xp"):
        self._module, self._cupy, self._prefix = module, cupy_module, prefix

    def __getattr__(self, name):
        value = getattr(self._module, name)
        qualified = f"{self._prefix}.{name}"
        if self._cupy is not None and not hasattr(self._cupy, name):
            raise AttributeError(f"{qualified} exists in NumPy but not in CuPy: it fails on a GPU")
        if isinstance(value, types.ModuleType):
            return StrictModule(value, getattr(self._cupy, name, None), qualified)
        if isinstance(value, type):  # dtypes and scalar types (xp.float32, xp.dtype): host objects
            return value
        if isinstance(value, np.ufunc):
            return StrictUfunc(value)
        if callable(value):
            return lambda *args, **kwargs: wrap(value(*unwrap(args, qualified), **unwrap(kwargs, qualified)))
        return value  # constants: xp.pi, xp.inf, xp.newaxis


class StrictBackend(Backend):
    """NumPy behind the strict wrappers. ``host_reads`` counts the calls of ``to_host``."""

    name = "strict"

    def __init__(self):
        self.xp = StrictModule(np, _cupy_module())
        self.host_reads = 0

    def to_device(self, array, dtype=None):
        data = array._data if isinstance(array, StrictArray) else array
        return StrictArray(np.array(data, dtype=dtype, copy=True))  # a transfer is a copy

    def to_host(self, array) -> np.ndarray:
        self.host_reads += 1
        if isinstance(array, np.ndarray):
            return array.copy()
        if not isinstance(array, StrictArray):
            raise TypeError(f"to_host expects a device array, got {type(array).__name__}")
        return array._data.copy()

    def describe(self) -> str:
        return f"strict (NumPy {np.__version__}, GPU-like read-back rules)"
