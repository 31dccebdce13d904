"""The state-dict names a built model gives the weights read for its layer descriptions: what the ONNX
and PyTorch readers both need after building a model from descriptions through the registry."""

from __future__ import annotations


def state_by_name(architecture: list, arrays_of) -> dict:
    """``{"3.body.0.W": array, ...}``: ``arrays_of(description)`` (the weights read for one leaf layer's
    description) under the names :meth:`Sequential.state_dict` uses, Sequential and Residual nested."""
    state = {}

    def walk(description, prefix):
        kind, config = description["type"], description["config"]
        if kind == "Sequential":
            for i, child in enumerate(config["layers"]):
                walk(child, f"{prefix}{i}.")
        elif kind == "Residual":
            walk(config["body"], prefix + "body.")
            if config["shortcut"] is not None:
                walk(config["shortcut"], prefix + "shortcut.")
        else:
            state.update((prefix + name, array) for name, array in arrays_of(description).items())

    for i, description in enumerate(architecture):
        walk(description, f"{i}.")
    return state
