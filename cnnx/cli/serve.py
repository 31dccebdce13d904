"""``cnnx serve RUN``: a web page that classifies pictures with a run's model (:mod:`cnnx.demo`)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from cnnx.errors import ConfigError
from cnnx.fileio import echo

from .options import device_option, import_option, load_classifier, model_file, picture_size


@click.command(short_help="A web page that classifies pictures with a trained model.")
@click.argument("run", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; the loopback address serves this machine only.")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="The port.")
@device_option()
@import_option()
def serve(run, host, port, device):
    """Serve a page where a person uploads, pastes or draws a picture and sees the 28x28 image the model
    saw (prepared as cnnx predict prepares it), the top classes with their probabilities and the
    saliency of the predicted class; a row of the run's test items to click; and the run's accuracy,
    curves, confusion matrix and settings. RUN is a run directory (its best.npz when it kept one) or
    a model file. The model is loaded once; uploads are capped at 10 MB; nothing is written into the
    run directory. Ctrl-C stops it. Needs pip install 'cnnx[demo]'."""
    from cnnx.data.images import bomb_warnings_as_errors
    from cnnx.demo import MAX_UPLOAD_BYTES
    from cnnx.demo.app import CONCURRENCY, QUEUE, build_app

    classifier = load_classifier_for(run, device)
    page = build_app(classifier).queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE)
    stop = threading.Event()
    # Ctrl-C and SIGTERM both stop it. SIGINT's handler is set here rather than left to Python's: a
    # process started in the background inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (the browser tests met that under a backgrounded pytest).
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    with bomb_warnings_as_errors():  # for every thread that decodes an upload, set once here
        try:
            _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                    max_file_size=MAX_UPLOAD_BYTES, show_error=False)  # fmt: skip
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port}: {exc}") from None
        echo(f"serving {classifier.path} at {url} (Ctrl-C stops it)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(f"cnnx: warning: listening on {host}: other machines can reach this page")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    echo("stopped")


def load_classifier_for(run: Path, device: str = "cpu"):
    """The page's :class:`cnnx.demo.Classifier` for RUN, loaded as cnnx evaluate and predict load it: the
    model file (best.npz when the run kept one), its picture size, and its test set for the examples
    when the data set is found here."""
    from cnnx.demo import Classifier
    from cnnx.errors import CnnxError

    from .evaluate import _test_data

    path = model_file(run)
    model = load_classifier(path, device)
    try:
        data = _test_data(model, path, None, None, None)
        test_set = (data.test_images, data.test_labels)
    except (CnnxError, OSError):  # no data set here: the page has no examples, and says nothing of it
        test_set = None
    run_dir = run if run.is_dir() else None
    return Classifier(model, path, picture_size(model, path), run=run_dir, test_set=test_set)
