"""What ``cnnx serve`` shows, without the web page: :class:`Classifier` loads a run's model once and
classifies a picture as ``cnnx predict`` does (the same reading, the same preparation), with a
saliency map over what the model saw; :func:`run_summary` reads the run's accuracy, settings and
figures. :mod:`cnnx.demo.app` puts them on a Gradio page (``pip install 'cnnx[demo]'``).

Nothing here writes into the run directory: example pictures go to a temporary folder.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # host: pictures and maps for the page live on the host

from cnnx.errors import DataError

MAX_UPLOAD_BYTES = 10 << 20  # one upload; larger ones are refused before they are read
SHOWN_SIDE = 280  # pixels: the 28x28 image the model saw, drawn ten times larger
EXAMPLES = 8


@dataclass(frozen=True)
class Answer:
    """One classification: the prepared image (H, W) in [0, 1] (what the model saw, unscaled from its
    uint8 pixels), every class's probability, the top
    classes as (name, probability), the saliency map (H, W), and what the preparation did."""

    image: np.ndarray
    probabilities: dict
    top: list
    saliency: np.ndarray
    steps: dict


class Classifier:
    """A run's model, loaded once (its best.npz when it kept one, as ``cnnx evaluate`` takes it), and
    the classification of one picture at a time. Layers keep no state between calls, so concurrent
    requests may share it."""

    def __init__(self, model, path, size: int, run=None, test_set=None):
        """``model``: a classifier loaded from the model file ``path`` (``cnnx.cli.options`` finds and
        loads it as every command does); ``size``: the side its pictures are prepared to; ``run``: its
        run directory, if it has one; ``test_set``: (images, labels) of its data set for the examples."""
        self.model, self.path, self.size = model, Path(path), int(size)
        self.run = Path(run) if run is not None else None
        self.names = list(self.model.data_info.classes)
        self.test_set = test_set

    def classify_file(self, path, top: int = 3) -> Answer:
        """Read the picture at ``path`` as ``cnnx predict`` reads pictures and classify it. DataError
        (one line) for a file that is not a picture, is empty,
        too large, or a decompression bomb."""
        from cnnx.data.images import decode_photo  # the server holds bomb_warnings_as_errors for all threads

        path = Path(path)
        size = path.stat().st_size
        if size == 0:
            raise DataError("the upload is empty")
        if size > MAX_UPLOAD_BYTES:
            raise DataError(
                f"the upload has {size:,} bytes; the page takes pictures up to {MAX_UPLOAD_BYTES:,}"
            )
        try:
            picture = decode_photo(path)
        except DataError as exc:  # it names the upload's temporary path: say it of the upload instead
            raise DataError(str(exc).replace(str(path), "the upload")) from None
        return self.classify_array(picture, top)

    def classify_array(self, picture, top: int = 3) -> Answer:
        """Classify a picture given as an array (grey (H, W), or (H, W, 3|4) RGB(A), uint8 or floats),
        prepared as ``cnnx predict`` prepares pictures."""
        from cnnx.data import prepare_image
        from cnnx.explain import saliency

        image, steps = prepare_image(np.asarray(picture), self.size)  # uint8 (H, W), as predict's
        row = self.model.predict_proba([image])[0]
        order = np.argsort(row)[::-1][:top]
        inputs = np.asarray(image).reshape(1, *self.model.input_shape)  # uint8: scaled as training scales
        heat, _ = saliency(self.model, inputs, [int(order[0])])
        probabilities = {name: float(p) for name, p in zip(self.names, row, strict=True)}
        ranked = [(self.names[k], float(row[k])) for k in order]
        image = np.asarray(image, np.float64) / 255
        return Answer(image=image, probabilities=probabilities, top=ranked, saliency=heat[0], steps=steps)

    def examples(self, count: int = EXAMPLES) -> list[Path]:
        """The first ``count`` test items of the run's own data set as PNG files in a temporary folder
        (never the run directory), or [] when there is no test set."""
        from PIL import Image

        if self.test_set is None:
            return []
        images, labels = self.test_set
        folder = Path(tempfile.mkdtemp(prefix="cnnx-serve-"))
        files = []
        for i in range(min(count, len(images))):
            pixels = np.asarray(images[i])
            pixels = pixels.reshape(pixels.shape[-2:]) if pixels.ndim > 2 else pixels
            file = folder / f"test-{i}-{self.names[int(labels[i])].replace('/', '-')}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(file)
            files.append(file)
        return files


def shown(image: np.ndarray, heat: np.ndarray | None = None) -> np.ndarray:
    """The image (H, W) in [0, 1] as RGB uint8 at :data:`SHOWN_SIDE`, nearest neighbour (the pixels
    stay visible), with ``heat`` (H, W) over it in the inferno colours where given."""
    from matplotlib import colormaps

    scale = max(1, SHOWN_SIDE // max(image.shape))
    grey = np.repeat(np.repeat(np.clip(image, 0, 1), scale, axis=0), scale, axis=1)
    rgb = np.stack([grey] * 3, axis=-1)
    if heat is not None:
        top = float(heat.max())
        level = np.repeat(np.repeat(heat / top if top > 0 else heat, scale, axis=0), scale, axis=1)
        colours = colormaps["inferno"](level)[..., :3]
        rgb = 0.45 * rgb + 0.55 * colours
    return (rgb * 255).round().astype(np.uint8)


def run_summary(classifier: Classifier) -> dict:
    """The run's test accuracy, settings and figures (paths of curves.png and confusion_matrix.png
    where the run has them): what the page's run tab shows. A model file alone has no run to show."""
    run = classifier.run
    summary = {"model": classifier.model.name, "file": classifier.path.name, "accuracy": None, "settings": {},
               "figures": []}  # fmt: skip
    if run is None:
        return summary
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return summary
    accuracy = metrics.get("test_accuracy")
    summary["accuracy"] = accuracy if isinstance(accuracy, (int, float)) else None
    summary["settings"] = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    summary["figures"] = [
        run / name for name in ("curves.png", "confusion_matrix.png") if (run / name).is_file()
    ]
    return summary
