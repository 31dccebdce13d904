"""``cnnx experiment report``: REPORT.md and its figures from the recorded runs of a study.

The report has one table per protocol (the original report's figure beside cnnx's), the curves of the
optimizer and learning-rate comparisons overlaid, the confusion matrix and per-class recall of the best
run, and a reading of the original report's findings (:mod:`.reading`). For a grid of one's own it has
the table, the curves and the best run.

A report says at its top when it is not the whole grid's: runs trained on a subset (trials) and runs
without a result are counted there, and such a report goes beside the runs unless told otherwise
(:func:`default_destination`), never over the report of a complete grid.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np  # host: run records and figures

from cnnx.fileio import atomic_write

from .reading import STUDY, best_run, curve_points, differences, findings, pct, steps, trial_tag
from .records import FINAL, read_metrics
from .spec import Experiment, with_settings
from .store import grid_root, readable_dir, run_dir

__all__ = ["STUDY", "collect", "default_destination", "write_report"]

PROTOCOL_TEXT = {
    "report": 'The report\'s protocol: its "epochs" taken as optimizer steps on one batch of 128 images',
    "modern": "The modern protocol: mini-batch epochs over the whole training set",
}
NOT_RUN, DAMAGED_TEXT = "not run", "damaged metrics.json"


def collect(experiments: list[Experiment], results, limit: int | None = None) -> list[dict]:
    """One row per run of ``experiments`` (each on ``limit`` images when given: the trial of that size):
    its spec, its record's contents (None if it never ran or its record is damaged) and what the tables
    show (``status``: the record's, "not run" or "damaged metrics.json"; ``accuracy`` for a completed
    run; ``steps``, ``seconds``; ``limit``, the subset it trained on)."""
    rows = []
    for experiment in experiments:
        for spec in experiment.runs:
            spec = with_settings(spec, limit=limit) if limit is not None else spec
            record = read_metrics(readable_dir(run_dir(results, spec)))
            row = dict(experiment=experiment, spec=spec, record=None, status=NOT_RUN, accuracy=None,
                       steps=None, seconds=None, limit=None)  # fmt: skip
            if record is not None and record.damaged:
                row.update(status=DAMAGED_TEXT, problem=record.problem)
            elif record is not None:
                accuracy = record.test_accuracy if record.status == "completed" else None
                row.update(record=record.data, status=record.status, accuracy=accuracy, steps=record.steps,
                           seconds=record.seconds, limit=record.limit)  # fmt: skip
            rows.append(row)
    return rows


def _cnnx_cell(row: dict) -> str:
    if row["accuracy"] is not None:
        return f"**{100 * row['accuracy']:.2f} %**{trial_tag(row)}"
    if row["status"] == "diverged":
        return f"diverged at step {row['steps']}{trial_tag(row)}"
    return f"{row['status']} ({row['problem']})" if row.get("problem") else row["status"]


def is_complete(rows: list[dict]) -> bool:
    """Whether every run has a result (completed or diverged) on the whole training set."""
    return all(r["status"] in FINAL and not r["limit"] for r in rows)


def coverage(rows: list[dict]) -> list[str]:
    """The paragraphs that say how much of the grid a report stands for: none for a complete grid of full
    runs; else how many runs are trials, and how many have no result and why."""
    paragraphs = []
    trials = [r for r in rows if r["limit"]]
    if trials:
        sizes = " or ".join(f"{n:,}" for n in sorted({r["limit"] for r in trials}))
        paragraphs.append(
            f"**A trial, not a result of the study.** {len(trials)} of {len(rows)} runs trained on a subset "
            f"of {sizes} training images (`--limit`), not on the whole training set: their accuracies "
            "compare neither with full runs' nor with the report's."
        )
    missing = Counter(r["status"] for r in rows if r["status"] not in FINAL)
    if missing:
        why = ", ".join(f"{status}: {count}" for status, count in missing.items())
        paragraphs.append(
            f"**A partial grid.** {sum(missing.values())} of {len(rows)} runs have no result ({why}); the "
            "tables show them as such, and the figures and the reading use only the others."
        )
    return [line for paragraph in paragraphs for line in (paragraph, "")]


def default_destination(rows: list[dict], directory, results, limit: int | None) -> tuple[Path, str | None]:
    """Where the report goes when ``--out`` does not say, and why when that is not ``directory``'s
    REPORT.md: a complete grid of full runs writes DIR/REPORT.md (the committed report); any other
    writes beside its runs, in the results folder or the trial's, so that it never replaces it."""
    if is_complete(rows):
        return Path(directory) / "REPORT.md", None
    trials = sum(bool(r["limit"]) for r in rows)
    missing = sum(r["status"] not in FINAL for r in rows)
    why = [f"{trials} of {len(rows)} runs are trials on a subset"] if trials else []
    why += [f"{missing} of {len(rows)} runs have no result"] if missing else []
    reason = (f"{' and '.join(why)}; {Path(directory) / 'REPORT.md'} is written only from a complete grid "
              "of full runs, or with --out")  # fmt: skip
    return grid_root(results, limit) / "REPORT.md", reason


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _protocol_table(rows: list[dict], protocol: str) -> list[str]:
    lines = [
        "| experiment | run | the report's setup | the report's result | cnnx | steps | wall time | device |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        spec, experiment = row["spec"], row["experiment"]
        if spec.protocol != protocol:
            continue
        record = row["record"] or {}
        device = (record.get("config") or {}).get("device_description", "-")
        reported = f" ({100 * spec.reported:.2f} % for this run)" if spec.reported is not None else ""
        lines.append(
            f"| {experiment.title} | {spec.label} | {experiment.setup} | {experiment.result}{reported} | "
            f"{_cnnx_cell(row)} | {steps(row)} | {_duration(row['seconds'])} | {device} |"
        )
    return lines


def _plot_comparison(rows: list[dict], path: Path, title: str) -> bool:
    """Test accuracy and training loss against steps, one line per run; False when no run was recorded."""
    from cnnx.training.plots import plot_step_curves

    series = []
    for row in rows:
        if row["record"] is None:
            continue
        label = f"{row['experiment'].name} {row['spec'].label}"
        if row["status"] == "diverged":
            label += " (diverged)"
        series.append((label, *curve_points(row["record"])))
    if not series:
        return False
    plot_step_curves(series, path, title)
    return True


def write_report(experiments: list[Experiment], results, out, *, limit: int | None = None, rows=None) -> Path:
    """Write REPORT.md to ``out`` and its PNG figures next to it, from ``rows`` (default: :func:`collect`
    of ``experiments``, ``results`` and ``limit``); returns the report's path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = collect(experiments, results, limit) if rows is None else rows
    protocols = [p for p in ("report", "modern") if any(r["spec"].protocol == p for r in rows)]
    if not any(e.name in STUDY.values() for e in experiments):
        return _write_grid_report(rows, protocols, out, experiments[0].path.parent.name)
    lines = [
        "# The original study, rerun with cnnx",
        "",
        "Generated by `cnnx experiment report` from the runs in the results directory; rerun the study with "
        "`cnnx experiment run --all`, then regenerate this page. Each experiment is a file in "
        "`experiments/` (see `experiments/README.md`).",
        "",
        '**Assumptions.** The report\'s "epoch" cannot have been a pass over 60,000 images: 100 of them '
        "took 2.5 minutes in NumPy on a notebook. The report's protocol therefore counts one optimizer step "
        'on one batch as an "epoch"; the batch size is not given, and 128 (cnnx\'s default) is used. The '
        "report names lr 0.01 once for Model 4 and 0.001 everywhere else, its Model 2 and Model 4 differing "
        "only in length; Model 4 is run at 0.001, the rate the report's figures and comparisons use.",
        "",
        *coverage(rows),
    ]
    for protocol in protocols:
        lines += [f"## {protocol.capitalize()} protocol", "", f"{PROTOCOL_TEXT[protocol]}.", ""]
        lines += _protocol_table(rows, protocol)
        lines.append("")
        for key, title in (("optimizers", "Optimizers"), ("learning-rates", "Learning rates")):
            chosen = [r for r in rows if r["spec"].protocol == protocol and key in r["experiment"].compare]
            name = f"report-{key}-{protocol}.png"
            if _plot_comparison(chosen, out.parent / name, f"{title}, {protocol} protocol"):
                lines += [f"![{title.lower()}, {protocol} protocol]({name})", ""]
        lines += ["### What reproduced", "", *findings(rows, protocol), ""]
        lines += [*differences(rows, protocol), ""]
    best = best_run(rows)
    if best is not None:
        lines += _best_section(best, out.parent)
    with atomic_write(out, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")
    return out


def _write_grid_report(rows: list[dict], protocols: list[str], out: Path, folder: str) -> Path:
    """The report of a grid of one's own (none of the study's experiments): a table and the overlaid
    curves per protocol, and the best run."""
    lines = [
        f"# Experiments: {folder}",
        "",
        "Generated by `cnnx experiment report` from the recorded runs of this folder's experiment files.",
        "",
        *coverage(rows),
    ]
    for protocol in protocols:
        lines += [f"## {protocol.capitalize()} protocol", "", f"{PROTOCOL_TEXT[protocol]}.", ""]
        lines += [
            "| experiment | run | model | cnnx | steps | wall time | s per epoch | device |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        chosen = [r for r in rows if r["spec"].protocol == protocol]
        for row in chosen:
            record = row["record"] or {}
            epochs = len(record.get("history") or [])
            per_epoch = f"{row['seconds'] / epochs:.1f}" if row["seconds"] and epochs else "-"
            device = (record.get("config") or {}).get("device_description", "-")
            model = row["spec"].config.model if isinstance(row["spec"].config.model, str) else "custom"
            cells = [row["experiment"].title, row["spec"].label, model, _cnnx_cell(row), steps(row),
                     _duration(row["seconds"]), per_epoch, device]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        name = f"report-runs-{protocol}.png"
        if _plot_comparison(chosen, out.parent / name, f"Every run, {protocol} protocol"):
            lines += [f"![every run, {protocol} protocol]({name})", ""]
    best = best_run(rows)
    if best is not None:
        lines += _best_section(best, out.parent)
    with atomic_write(out, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")
    return out


def _best_section(best: dict, folder: Path) -> list[str]:
    from cnnx.training.plots import plot_confusion_matrix

    record, spec = best["record"], best["spec"]
    lines = [f"## The best run: {spec.experiment} {spec.protocol} {spec.label} ({pct(best['accuracy'])})"
             f"{trial_tag(best)}", ""]  # fmt: skip
    names, per_class = record.get("class_names"), record.get("per_class")
    if record.get("confusion_matrix") is None or per_class is None:
        return [*lines, "Its record holds no confusion matrix or per-class scores.", ""]
    plot_confusion_matrix(
        np.asarray(record["confusion_matrix"]), names, folder / "report-confusion.png"
    )  # host
    lines += ["![confusion matrix of the best run](report-confusion.png)", "",
              "| class | recall | precision |", "|---|---:|---:|"]  # fmt: skip
    lines += [f"| {n} | {pct(per_class[n]['recall'])} | {pct(per_class[n]['precision'])} |" for n in names]
    ranked = sorted(names, key=lambda n: per_class[n]["recall"])
    hardest, *next_ones = ranked[:3]
    then = f", then {' and '.join(next_ones)}" if next_ones else ""
    reading = (
        " As in the report, shirts are the hardest: they are confused with T-shirts, pullovers and coats."
        if hardest == "Shirt"
        else " The report found shirts the hardest."
    )
    lines += [
        "",
        f"The hardest class is **{hardest}** (recall {pct(per_class[hardest]['recall'])}){then}.{reading}",
    ]
    return lines
