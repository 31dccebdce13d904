"""``cnnx serve``, tested in a real browser: headless Chromium (Debian's, driven by Playwright) on a page
served from a loopback port by a model trained here. Uploads give what ``cnnx predict`` gives, a bad
file is a message and the next upload works, an example and a drawing classify, 50 concurrent
requests are all answered right, nothing is written into the run, and Ctrl-C stops the server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnx.cli import cli
from cnnx.data import CLASS_NAMES
from cnnx.errors import DataError

from helpers import blobs, png_claiming, train_blob_run

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
START_SECONDS = 90  # Gradio's import and the first page take about 10 s here
ANSWER_MS = 30_000
# "Sandal 0.913 (then Sneaker 0.052, Bag 0.021)": a class of the run and its probability, then the next two
CLASSIFIED = "^(" + "|".join(re.escape(n) for n in CLASS_NAMES) + r") [01]\.\d{3} \(then "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A cnn-bn run trained on blobs, three pictures of it and a bad file, and `cnnx serve` on it."""
    root = tmp_path_factory.mktemp("serve")
    run, _ = train_blob_run(root, epochs=2, train=300, test=60)
    images, _ = blobs(3, seed=9)
    pictures = []
    for i, image in enumerate(images):
        path = root / f"picture-{i}.png"
        Image.fromarray(image).resize((112, 112), Image.NEAREST).save(path)
        pictures.append(path)
    before = _state(run)
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "cnnx", "serve", str(run), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first = _wait_for_line(server)
    assert f"at http://127.0.0.1:{port}/" in first, first
    try:
        yield {"run": run, "url": f"http://127.0.0.1:{port}/", "pictures": pictures, "root": root,
               "server": server, "before": before}  # fmt: skip
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def _wait_for_line(server) -> str:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if "serving" in line or server.poll() is not None:
            return line
    raise AssertionError("cnnx serve did not start")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(served["url"])
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=ANSWER_MS)
    yield page
    page.close()


def _answer(page, previous: str | None = None) -> str:
    """The result line once the page shows a new one (its paragraph: the block also shows a timer
    while the request runs)."""
    page.wait_for_function(
        "([p]) => { const r = document.querySelector('#result p');"
        " return r !== null && r.querySelector('strong') !== null && r.innerText.trim() !== p }",
        arg=[previous or ""], timeout=ANSWER_MS,
    )  # fmt: skip
    return page.inner_text("#result p").strip()


def _expected(served, path) -> str:
    done = CliRunner().invoke(cli, ["predict", str(served["run"]), str(path), "--format", "json"])
    assert done.exit_code == 0, done.output
    top = json.loads(done.output)[0]["top"]
    return f"{top[0]['class']} {top[0]['probability']:.3f}"


def _upload(page, path, previous=None) -> str:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # a file is shown: clear it, and the upload box comes back
        clear.first.click()
    page.set_input_files("#upload input[type=file]", str(path))
    return _answer(page, previous)


def test_uploads_give_what_cnnx_predict_gives(page, served):
    previous = None
    for path in served["pictures"]:
        shown = _upload(page, path, previous)
        assert shown.startswith(_expected(served, path)), (shown, path)
        previous = shown
    assert page.locator("#seen img").count() == 1 and page.locator("#saliency img").count() == 1


def test_a_bad_file_is_a_message_and_the_next_upload_works(page, served):
    bad = served["root"] / "not-a-picture.png"
    bad.write_bytes(b"this is no picture" * 10)
    shown = _upload(page, bad)
    assert shown.startswith("Cannot classify it: the upload: not an image in a format cnnx reads"), shown
    good = _upload(page, served["pictures"][0], shown)
    assert good.startswith(_expected(served, served["pictures"][0]))


def test_an_example_and_a_drawing_classify(page, served):
    page.locator("#examples button, #examples img").first.click()
    from_example = _answer(page)
    assert re.match(CLASSIFIED, from_example), from_example
    page.locator("#sketch button[aria-label=Brush]").click()
    box = page.locator("#sketch canvas").last.bounding_box()
    x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(12):
        page.mouse.move(x + 3 * k, y + 10 * k, steps=2)
    page.mouse.up()
    page.click("#classify-drawing")
    drawn = _answer(page, from_example)
    assert re.match(CLASSIFIED, drawn), drawn


def test_fifty_concurrent_requests_are_all_answered_right(served):
    from gradio_client import Client, handle_file

    expected = {str(p): _expected(served, p) for p in served["pictures"]}
    client = Client(served["url"], verbose=False)
    paths = [str(served["pictures"][i % 3]) for i in range(50)]

    start = time.monotonic()
    jobs = [(path, client.submit(handle_file(path), api_name="/classify")) for path in paths]  # all at once
    answers = [(path, job.result(timeout=120)[2]) for path, job in jobs]
    assert time.monotonic() - start < 120
    wrong = [(path, text) for path, text in answers if not text.replace("**", "").startswith(expected[path])]
    assert not wrong, wrong[:3]
    assert served["server"].poll() is None  # still serving


def test_the_classifier_refuses_empty_huge_and_bomb_files(served, tmp_path):
    from cnnx.cli.serve import load_classifier_for
    from cnnx.data.images import bomb_warnings_as_errors
    from cnnx.demo import MAX_UPLOAD_BYTES

    classifier = load_classifier_for(served["run"])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(10_000, 10_000))
    with bomb_warnings_as_errors():
        for path, message in ((empty, "the upload is empty"), (huge, "the page takes pictures up to"),
                              (bomb, "the upload: refused as a possible decompression bomb")):  # fmt: skip
            with pytest.raises(DataError, match=message):
                classifier.classify_file(path)
        answer = classifier.classify_array(np.asarray(Image.open(served["pictures"][0])))
    assert abs(sum(answer.probabilities.values()) - 1) < 1e-5 and answer.image.shape == (28, 28)


def test_a_screenshot_of_the_page_and_the_run_tab(page, served, tmp_path):
    _upload(page, served["pictures"][1])
    path = tmp_path / "serve.png"
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] == 1280
    page.get_by_role("tab", name="The run").click()
    page.wait_for_selector("text=confusion matrix", timeout=ANSWER_MS)
    assert page.get_by_text("curves").count() >= 1 and page.get_by_text("Settings").count() >= 1


def test_nothing_is_written_into_the_run_and_ctrl_c_stops_it(served):
    server = served["server"]
    assert _state(served["run"]) == served["before"]
    server.send_signal(signal.SIGINT)
    out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out
    assert out.strip().endswith("stopped"), out
    assert "Traceback" not in out


def test_a_bad_run_is_one_line(tmp_path):
    done = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "is a directory, but not a run directory" in done.output
