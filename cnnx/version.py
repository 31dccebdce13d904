"""The version of cnnx, in a module of its own so that every package can read it without importing cnnx."""

__version__ = "0.4.0"
