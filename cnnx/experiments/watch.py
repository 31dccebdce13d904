"""The lines a grid prints while its runs go on: one when a run ends, and now and then how far each
running run has come."""

from __future__ import annotations

import threading

from .records import read_metrics

WAITING, RUNNING = "waiting", "running"
BUSY = "busy"  # how a run ends that another process holds
BUSY_TEXT = "running in another process"


class Watcher:
    """Prints a line when a run finishes, and, every ``poll_seconds`` while runs go on, one line with how
    far each running run has come (read from its metrics.json) when that changed."""

    def __init__(self, tasks: list[dict], echo, poll_seconds: float):
        self.tasks = {t["spec"].key: t for t in tasks}
        self.echo, self.poll_seconds = echo, poll_seconds
        self.done: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="cnnx-grid-progress")
        self.last = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()

    def finished(self, summary: dict) -> None:
        with self.lock:
            self.done[summary["key"]] = summary
            n = len(self.done)
        accuracy = summary.get("test_accuracy")
        status = BUSY_TEXT if summary["status"] == BUSY else summary["status"]
        text = f"[{n}/{len(self.tasks)}] {summary['key']}: {status}"
        if accuracy is not None:
            text += f", test accuracy {accuracy:.4f}"
        text += f", {summary['seconds']:.0f} s"
        if summary.get("error"):
            text += f" ({summary['error']})"
        self.echo(text)

    def _loop(self) -> None:
        while not self.halt.wait(self.poll_seconds):
            line = self.progress_line()
            if line != self.last:
                self.last = line
                self.echo(line)

    def progress_line(self) -> str:
        with self.lock:
            done = set(self.done)
        running, waiting = [], 0
        for key, task in self.tasks.items():
            if key in done:
                continue
            record = read_metrics(task["work"])
            if record is None or record.status != RUNNING:
                waiting += 1
                continue
            spec = task["spec"]
            if spec.config.max_steps is not None:
                where = f"step {record.steps or 0}/{spec.config.max_steps}"
            else:
                epochs = record.config.get("epochs", "?")
                where = f"epoch {(record.data.get('epochs_completed') or 0) + 1}/{epochs}"
            running.append(f"{key} {where}")
        parts = [f"{len(done)}/{len(self.tasks)} done"]
        if running:
            parts.append("running: " + ", ".join(running))
        if waiting:
            parts.append(f"{waiting} {WAITING}")
        return "progress: " + "; ".join(parts)
