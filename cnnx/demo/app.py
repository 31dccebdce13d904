"""The ``cnnx serve`` page, on Gradio: a picture in (uploaded, pasted or drawn), the 28x28 image the
model saw, its top classes, and the saliency of the predicted class over it; a row of the run's test
items to click; and the run itself (accuracy, curves, confusion matrix, settings).

Gradio is imported only here, when the page is built (``pip install 'cnnx[demo]'``).
"""

from __future__ import annotations

import os

import numpy as np  # host

from cnnx.errors import CnnxError, ConfigError

from . import MAX_UPLOAD_BYTES, Classifier, run_summary, shown

CONCURRENCY = 4  # requests computed at once; the queue holds the others
QUEUE = 64  # requests waiting at most; more are refused with a message


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no call home
    try:
        import gradio
    except ImportError:
        raise ConfigError("cnnx serve needs Gradio: pip install 'cnnx[demo]'") from None
    return gradio


def _sketch(value):
    """The drawn picture of a Sketchpad value: its composite layer (RGBA, whose transparent canvas
    ``to_grey`` lays over white, as a photo's background), or None when there is none."""
    if not isinstance(value, dict):
        return value
    return value.get("composite")


def answer_outputs(classifier: Classifier, answer):
    """The page's outputs for one answer: the image seen, the probabilities, the line of text, and the
    saliency over the image."""
    best, p = answer.top[0]
    others = ", ".join(f"{name} {q:.3f}" for name, q in answer.top[1:])
    text = f"**{best}** {p:.3f}" + (f" (then {others})" if others else "")
    return (_html_image(shown(answer.image), f"the 28x28 image the model saw, classified {best}"),
            answer.probabilities, text,
            _html_image(shown(answer.image, answer.saliency), f"saliency of {best}"))  # fmt: skip


def _html_image(rgb: np.ndarray, alt: str) -> str:
    """An <img> holding the picture itself as a PNG data URL. Gradio would write an image output to a
    cache file named by its content, and concurrent requests with the same answer rewrite that file
    while others are sending it (measured: 1 in 50 answers cut short); a data URL is never shared."""
    import base64
    import html
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" width="{rgb.shape[1]}">'


def _failed(message: str):
    return "", None, f"**Cannot classify it:** {message}", ""


def build_app(classifier: Classifier):
    """The Gradio Blocks of the page for ``classifier``."""
    gr = _gradio()

    def classify_file(path):
        if not path:
            return _failed("no picture was given")
        try:
            return answer_outputs(classifier, classifier.classify_file(path))
        except (CnnxError, OSError) as exc:
            return _failed(str(exc))

    def classify_drawing(value):
        picture = _sketch(value)
        if picture is None or np.asarray(picture).size == 0:
            return _failed("the sketch pad is empty")
        try:
            return answer_outputs(classifier, classifier.classify_array(picture))
        except CnnxError as exc:
            return _failed(str(exc))

    summary = run_summary(classifier)
    names = classifier.names
    with gr.Blocks(title=f"cnnx: {summary['model']}") as page:
        gr.Markdown(f"# cnnx: {summary['model']}\n" + _headline(summary, len(names)))
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Upload a picture (PNG, JPEG, WebP, BMP, GIF)", type="filepath",
                                     elem_id="upload")  # fmt: skip
                    paste = gr.Image(label="or paste one", sources=["clipboard", "upload"], type="filepath",
                                     image_mode=None, elem_id="paste")  # fmt: skip
                    sketch = gr.Sketchpad(label="or draw a garment", elem_id="sketch", type="numpy",
                                          canvas_size=(280, 280))  # fmt: skip
                    draw = gr.Button("Classify the drawing", elem_id="classify-drawing")
                with gr.Column():
                    result = gr.Markdown("Give the model a picture.", elem_id="result")
                    labels = gr.Label(num_top_classes=3, label="Top classes", elem_id="labels")
                    gr.Markdown("What the model saw (28x28, prepared as cnnx predict does), and the saliency "
                                "of the predicted class over it:")  # fmt: skip
                    with gr.Row():
                        seen = gr.HTML(elem_id="seen")
                        heat = gr.HTML(elem_id="saliency")
            outputs = [seen, labels, result, heat]
            upload.upload(classify_file, upload, outputs, api_name="classify")
            paste.input(classify_file, paste, outputs, api_name="classify_pasted")  # an upload or a paste
            draw.click(classify_drawing, sketch, outputs, api_name="classify_drawing")
            examples = classifier.examples()
            if examples:
                gr.Examples([[str(f)] for f in examples], inputs=[paste], outputs=outputs, fn=classify_file,
                            run_on_click=True, label="The run's test items: click one", cache_examples=False,
                            elem_id="examples")  # fmt: skip
        with gr.Tab("The run"):
            for figure in summary["figures"]:
                gr.Image(str(figure), label=figure.stem.replace("_", " "), interactive=False)
            gr.JSON(summary["settings"], label="Settings")
    return page


def _headline(summary: dict, classes: int) -> str:
    accuracy = "" if summary["accuracy"] is None else f", test accuracy {summary['accuracy']:.2%}"
    return f"{summary['file']}{accuracy}, {classes} classes. Pictures up to {MAX_UPLOAD_BYTES >> 20} MB."
