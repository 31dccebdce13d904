"""The names of a run directory's files, in one leaf module that every part of a run reads them from."""

CHECKPOINT = "model.npz"  # the checkpoint: always a complete state to resume from
BEST = "best.npz"  # the best-on-validation weights, kept by a run with a validation split
METRICS = "metrics.json"  # the run's record
FIGURES = ("curves.png", "confusion_matrix.png", "samples.png")  # drawn at the end of every run
STEPS_FIGURE = "steps.png"  # drawn too when the run records step curves
LOCK = ".cnnx-lock"  # held by the one process that writes the run
