"""`cnnx serve` seen from a browser: the time from an upload to the page's answer (median of 20, in
headless Chromium driven by Playwright), the server's peak RSS, and a screenshot of the page.

    python experiments/serve_timing.py RUN [--pictures A.png B.png] [--screenshot docs/serve.png]

Without --pictures, test items 10 and 11 of the run's data set are used, drawn four times larger. The
uploads alternate between the pictures, so that every answer changes the page.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pictures(run: Path, folder: Path) -> list[Path]:
    from PIL import Image

    from cnnx.cli.serve import load_classifier_for

    images, _ = load_classifier_for(run).test_set
    paths = []
    for i in (10, 11):
        path = folder / f"test-{i}.png"
        Image.fromarray(images[i]).resize((112, 112), Image.LANCZOS).save(path)
        paths.append(path)
    return paths


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--pictures", nargs="+", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="serve-timing-"))
    pictures = args.pictures or _pictures(args.run, folder)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "cnnx", "serve", str(args.run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        print(server.stdout.readline().strip())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#upload input[type=file]", state="attached")
            times, previous = [], ""
            for i in range(args.uploads + 1):  # the first warms the model and the page
                clear = page.locator("#upload button[aria-label='Clear']")
                if clear.count():
                    clear.first.click()
                start = time.perf_counter()
                page.set_input_files("#upload input[type=file]", str(pictures[i % len(pictures)]))
                changed = ("([p]) => { const r = document.querySelector('#result p'); return r !== null && "
                           "r.querySelector('strong') !== null && r.innerText.trim() !== p }")  # fmt: skip
                page.wait_for_function(changed, arg=[previous])
                seconds = time.perf_counter() - start
                previous = page.inner_text("#result p").strip()
                if i:
                    times.append(seconds)
            if args.screenshot:
                page.screenshot(path=str(args.screenshot), full_page=True)
                print(f"screenshot: {args.screenshot} ({previous})")
            browser.close()
        print(f"upload to answer, median of {len(times)}: {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")  # fmt: skip
        print(f"cnnx serve peak RSS: {_peak_rss_mib(server.pid):.0f} MiB")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
