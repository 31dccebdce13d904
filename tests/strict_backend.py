"""The strict backend lives in the package (:mod:`cnnx.layercheck.strict`), where ``cnnx check-layer``
runs a layer under it; the tests import it from here as they always did."""

from cnnx.layercheck.strict import (  # noqa: F401  (re-exported for the tests)
    METHODS,
    HostReadBack,
    StrictArray,
    StrictBackend,
    StrictModule,
    StrictUfunc,
    unwrap,
    wrap,
)
