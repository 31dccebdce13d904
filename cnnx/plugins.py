"""The user's own layers: importing the modules that register them, so the command line knows their types.

A layer a user registers in their own file (``@register_layer(...) class LeakyReLU(Layer)``) trains
through Python, since the user's script imports the file. A command such as ``cnnx evaluate RUN``
does not, and the safe loader refuses the run's ``LeakyReLU`` as an unknown type. Three ways let the
commands import such modules, each a choice the user makes (importing a module runs its code):

- ``--import FILE_OR_MODULE`` on ``train``, ``evaluate``, ``predict``, ``explain`` and ``check-layer``
  (repeatable): a path to a ``.py`` file, or a dotted module name;
- the ``CNNX_IMPORT`` environment variable: the same, separated by the path separator (``:``);
- installed packages that declare a ``cnnx.layers`` entry point (each is loaded).

The loader of model files never imports anything: a type that is not registered is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from cnnx.errors import ConfigError

ENTRY_POINT_GROUP = "cnnx.layers"
ENVIRONMENT = "CNNX_IMPORT"

_loaded: dict[str, object] = {}  # what was imported, by the spelling it was asked for


def import_module_or_file(spec: str):
    """The module ``spec`` names: a ``.py`` file (imported under a name made from its path, once) or a
    dotted module name. ConfigError in one line when it is neither, or when importing it fails."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("an empty name was given to import")
    if spec in _loaded:
        return _loaded[spec]
    path = Path(spec).expanduser()
    if spec.endswith(".py") or os.sep in spec or path.is_file():
        module = _import_file(path, spec)
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as exc:
            raise ConfigError(f"cannot import {spec}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, in one line
            raise ConfigError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from None
    _loaded[spec] = module
    return module


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise ConfigError(f"cannot import {spec}: no such file")
    if path.suffix != ".py":
        raise ConfigError(f"cannot import {spec}: a file to import must be a .py file")
    resolved = path.resolve()
    name = "cnnx_user_" + "".join(c if c.isalnum() else "_" for c in str(resolved.with_suffix("")))
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"cannot import {spec}: Python cannot load it")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before running it, as an import does (dataclasses need it)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, in one line
        del sys.modules[name]
        raise ConfigError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from None
    return module


def from_environment() -> list[str]:
    """The modules ``CNNX_IMPORT`` names, in order."""
    return [part for part in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if part.strip()]


def load_user_layers(specs=()) -> list[str]:
    """Import every ``cnnx.layers`` entry point, then the modules of ``CNNX_IMPORT``, then ``specs``;
    returns what was imported (entry points as ``name = value``)."""
    done = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        key = f"{point.name} = {point.value}"
        if key not in _loaded:
            try:
                _loaded[key] = point.load()
            except Exception as exc:  # noqa: BLE001 - an installed package's failure, named in one line
                raise ConfigError(f"the cnnx.layers entry point {key} failed to load: "
                                  f"{type(exc).__name__}: {exc}") from None  # fmt: skip
        done.append(key)
    for spec in [*from_environment(), *specs]:
        import_module_or_file(spec)
        done.append(spec)
    return done


def load_target(target: str):
    """The object ``module:Name`` or ``path/to/file.py:Name`` names (``check-layer``'s TARGET)."""
    where, sep, name = str(target).rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"{target!r} is not MODULE:NAME or FILE.py:NAME")
    module = import_module_or_file(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{where} has no {name}") from None
