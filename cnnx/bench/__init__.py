"""``cnnx bench``: training and inference speed of a model, optionally against PyTorch in the same run
(PyTorch is imported only then: it is never a dependency of cnnx)."""
