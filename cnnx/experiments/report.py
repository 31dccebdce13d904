"""``cnnx experiment report``: REPORT.md and its figures from the recorded runs of a study.

The report has one table per protocol (the original report's figure beside cnnx's), the curves of the
optimizer and learning-rate comparisons overlaid, the confusion matrix and per-class recall of the best
run, and a reading of the original report's findings. The reading is computed from the runs of the
study's experiments, which it finds by name (:data:`STUDY`); for a grid of one's own it says which of
them were not run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np  # host: run records and figures

from cnnx.fileio import atomic_write

from .grid import read_metrics, run_dir
from .spec import Experiment

# The original study's experiments, as named in experiments/*.toml.
STUDY = {
    "dense": "dense-adam",
    "sgd": "model1-sgd",
    "adam_short": "model2-adam",
    "low_lr": "model3-low-lr",
    "high_lr": "model3-high-lr",
    "adam": "model4-adam",
}
REPORT_BEST = 0.8827  # the original report's best test accuracy (Model 4, 500 steps)
PROTOCOL_TEXT = {
    "report": 'The report\'s protocol: its "epochs" taken as optimizer steps on one batch of 128 images',
    "modern": "The modern protocol: mini-batch epochs over the whole training set",
}


def collect(experiments: list[Experiment], results) -> list[dict]:
    """One row per run of ``experiments``: its spec, its record (None if it never ran) and what the
    tables show."""
    rows = []
    for experiment in experiments:
        for spec in experiment.runs:
            record = read_metrics(run_dir(results, spec))
            rows.append({"experiment": experiment, "spec": spec, "record": record, **_outcome(record)})
    return rows


def _outcome(record: dict | None) -> dict:
    if record is None:
        return {"status": "not run", "accuracy": None, "steps": None, "seconds": None}
    history = record.get("history") or []
    seconds = sum(row.get("seconds", 0.0) for row in history) if history else None
    return {
        "status": record.get("status", "?"),
        "accuracy": record.get("test_accuracy") if record.get("status") == "completed" else None,
        "steps": record.get("steps_done"),
        "seconds": seconds,
    }


def _cnnx_cell(row: dict) -> str:
    if row["status"] == "completed" and row["accuracy"] is not None:
        return f"**{100 * row['accuracy']:.2f} %**"
    if row["status"] == "diverged":
        return f"diverged at step {row['steps']}"
    return row["status"]


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
        steps = f"{row['steps']:,}" if row["steps"] is not None else "-"
        lines.append(
            f"| {experiment.title} | {spec.label} | {experiment.setup} | {experiment.result}{reported} | "
            f"{_cnnx_cell(row)} | {steps} | {_duration(row['seconds'])} | {device} |"
        )
    return lines


def _curve_points(record: dict) -> tuple[list, list, list]:
    """(steps, test accuracies) and (steps, training losses) of a run, from its step curves, or from its
    history at epoch ends when it drew none."""
    curves = record.get("curves") or {}
    test = [(s, a) for s, _, a in curves.get("test", []) if a is not None]
    train = [(s, loss) for s, loss in curves.get("train", []) if loss is not None]
    if not test:
        history, batches = record.get("history") or [], 0
        for h in history:
            batches += h.get(
                "batches", math.ceil(record["config"]["train_size"] / record["config"]["batch_size"])
            )
            test.append((batches, h["test_accuracy"]))
    return test, train


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
        series.append((label, *_curve_points(row["record"])))
    if not series:
        return False
    plot_step_curves(series, path, title)
    return True


def _best(rows: list[dict]) -> dict | None:
    """The most accurate finished run, on Fashion-MNIST when any ran on it (accuracies on different data
    sets do not compare)."""
    done = [r for r in rows if r["accuracy"] is not None]
    fashion = [r for r in done if r["spec"].config.dataset == "fashion-mnist"]
    done = fashion or done
    return max(done, key=lambda r: r["accuracy"]) if done else None


def _find(rows: list[dict], name: str, protocol: str) -> list[dict]:
    return [r for r in rows if r["experiment"].name == name and r["spec"].protocol == protocol]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _top_class_share(record: dict) -> tuple[str, float] | None:
    matrix = np.asarray(record.get("confusion_matrix") or [])  # host
    if matrix.size == 0:
        return None
    predicted = matrix.sum(axis=0)
    top = int(predicted.argmax())
    return record["class_names"][top], float(predicted[top] / predicted.sum())


def _swing(record: dict) -> float | None:
    """The largest drop of test accuracy between two successive evaluations of a run."""
    test, _ = _curve_points(record)
    accuracies = [a for _, a in test]
    drops = [a - b for a, b in zip(accuracies, accuracies[1:], strict=False)]
    return max(drops) if drops else None


def findings(rows: list[dict], protocol: str) -> list[str]:
    """The reading of the original report's four findings under one protocol, from the runs."""
    lines = []
    sgd, adam = _find(rows, STUDY["sgd"], protocol), _find(rows, STUDY["adam"], protocol)
    sgd_done = [r for r in sgd if r["accuracy"] is not None]
    adam_done = [r for r in adam if r["accuracy"] is not None]
    if sgd_done and adam_done:
        s, a = sgd_done[-1], min(adam_done, key=lambda r: r["steps"] or 0)
        verdict = "Reproduced" if a["accuracy"] - s["accuracy"] > 0.05 else "Not reproduced"
        lines.append(
            f"- **SGD far behind Adam at lr 1e-3.** {verdict}: SGD reaches {_pct(s['accuracy'])} after "
            f"{s['steps']:,} steps; Adam reaches {_pct(a['accuracy'])} after {a['steps']:,}. Plain SGD at "
            "this rate moves the weights by lr times the gradient, which is small for Xavier-initialised "
            "layers, while Adam scales each step to about lr whatever the gradient's size."
        )
    else:
        lines.append("- **SGD far behind Adam at lr 1e-3.** Not run under this protocol.")
    low = [r for r in _find(rows, STUDY["low_lr"], protocol) if r["record"] is not None]
    if low and low[0]["record"].get("confusion_matrix"):
        share = _top_class_share(low[0]["record"])
        acc = low[0]["accuracy"]
        verdict = (
            "Reproduced" if share[1] >= 0.9 else "Partly reproduced" if share[1] >= 0.3 else "Not reproduced"
        )
        lines.append(
            f"- **lr 1e-5 stuck near a single class.** {verdict}: after {low[0]['steps']:,} steps, "
            f"{100 * share[1]:.0f} % of the test images are predicted as {share[0]!r} (a uniform guess would "
            f"give 10 %), and the test accuracy is {_pct(acc)}. At this rate Adam moves each weight by about "
            "1e-5 per step, so the network stays close to its initialisation, whose outputs favour a few "
            "classes; the report saw the extreme case, every image as one class."
        )
    else:
        lines.append("- **lr 1e-5 stuck near a single class.** Not run under this protocol.")
    high = [r for r in _find(rows, STUDY["high_lr"], protocol) if r["record"] is not None]
    if high:
        parts = []
        for r in high:
            if r["status"] == "diverged":
                parts.append(f"the {r['spec'].label} run diverged at step {r['steps']}")
            elif (r["accuracy"] or 0) < 0.2:
                share = _top_class_share(r["record"])
                text = f"the {r['spec'].label} run collapses to {_pct(r['accuracy'])}"
                if share is not None:
                    text += f", predicting {share[0]!r} for {100 * share[1]:.0f} % of the test images"
                if r["spec"].reported is not None:
                    kept = _pct(r["spec"].reported)
                    text += (f" (the report's run kept {kept}; with another batch size and initialisation "
                             "the first steps need not kill every unit)")  # fmt: skip
                parts.append(text)
            else:
                swing = _swing(r["record"])
                text = f"the {r['spec'].label} run ends at {_pct(r['accuracy'])}"
                if swing is not None:
                    text += (
                        f", its test accuracy dropping by up to {100 * swing:.1f} points between evaluations"
                    )
                parts.append(text)
        calm = [_swing(r["record"]) for r in adam if r["record"] is not None]
        calm = [c for c in calm if c is not None]
        unstable = (
            any(r["status"] == "diverged" for r in high)
            or any((_swing(r["record"]) or 0) > 2 * (max(calm) if calm else 0.02) for r in high)
            or all((r["accuracy"] or 0) < 0.5 for r in high)
        )
        verdict = "Reproduced" if unstable else "Not reproduced"
        reference = f" (Adam at 1e-3: at most {100 * max(calm):.1f} points)" if calm else ""
        lines.append(
            f"- **lr 0.1 unstable.** {verdict}: {'; '.join(parts)}{reference}. Adam moves every weight by "
            "about the learning rate per step, and 0.1 is as large as the Xavier-initialised weights "
            "themselves: the first steps overshoot, ReLU units pushed negative stop passing gradients, and "
            "a network whose units are all dead predicts one class whatever the image."
        )
    else:
        lines.append("- **lr 0.1 unstable.** Not run under this protocol.")
    dense = [r for r in _find(rows, STUDY["dense"], protocol) if r["accuracy"] is not None]
    if dense:
        d = dense[-1]
        same = [r for r in adam_done if r["steps"] == d["steps"]]
        gap = 100 * (same[0]["accuracy"] - d["accuracy"]) if same else None
        versus = f", {gap:.1f} points below the CNN with Adam at the same number of steps" if same else ""
        lines.append(
            f"- **The dense-only network** reaches {_pct(d['accuracy'])} after {d['steps']:,} steps (the "
            f"report: 77 %){versus}."
        )
    best = _best([r for r in rows if r["spec"].protocol == protocol])
    if best is not None:
        is_adam = best["experiment"].name in (STUDY["adam"], STUDY["adam_short"])
        beats = best["accuracy"] > REPORT_BEST
        verdict = "Reproduced" if is_adam and beats else "Not reproduced"
        lines.append(
            f"- **Adam at 1e-3 the best, beyond 88.27 %.** {verdict}: the best run is "
            f"{best['experiment'].name} {best['spec'].label} at {_pct(best['accuracy'])}"
            f"{' (above' if beats else ' (below'} the report's 88.27 %)."
        )
    return lines


def differences(rows: list[dict], protocol: str) -> list[str]:
    """The runs whose accuracy the report gives, cnnx's beside it, and why they may differ."""
    compared = [r for r in rows if r["spec"].protocol == protocol and r["spec"].reported is not None
                and r["accuracy"] is not None]  # fmt: skip
    if not compared:
        return []
    items = [
        f"{r['experiment'].name} {r['spec'].label}: {_pct(r['accuracy'])} against {_pct(r['spec'].reported)} "
        f"({100 * (r['accuracy'] - r['spec'].reported):+.1f} points)"
        for r in compared
    ]
    text = "**The numbers themselves.** " + "; ".join(items) + "."
    if protocol == "report":
        text += (
            " The report does not give its batch size, so a step here (128 images) need not see as many "
            'images as one of its "epochs"; its seeds and initial weights are unknown too. Short runs '
            "depend most on both. The orderings above do not."
        )
    else:
        text += " Whole epochs see far more images than the report's runs did, so the CNNs end higher."
    return [text]


def write_report(experiments: list[Experiment], results, out) -> Path:
    """Write REPORT.md to ``out`` and its PNG figures next to it; returns the report's path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = collect(experiments, results)
    protocols = [p for p in ("report", "modern") if any(r["spec"].protocol == p for r in rows)]
    if not any(e.name in STUDY.values() for e in experiments):
        return _write_grid_report(rows, protocols, out)
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
    best = _best(rows)
    if best is not None:
        lines += _best_section(best, out.parent)
    with atomic_write(out, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")
    return out


def _write_grid_report(rows: list[dict], protocols: list[str], out: Path) -> Path:
    """The report of a grid of one's own (none of the study's experiments): a table and the overlaid
    curves per protocol, and the best run."""
    lines = [
        f"# Experiments: {out.parent.name}",
        "",
        "Generated by `cnnx experiment report` from the recorded runs of this folder's experiment files.",
        "",
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
            steps = f"{row['steps']:,}" if row["steps"] is not None else "-"
            device = (record.get("config") or {}).get("device_description", "-")
            model = row["spec"].config.model if isinstance(row["spec"].config.model, str) else "custom"
            cells = [row["experiment"].title, row["spec"].label, model, _cnnx_cell(row), steps,
                     _duration(row["seconds"]), per_epoch, device]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        name = f"report-runs-{protocol}.png"
        if _plot_comparison(chosen, out.parent / name, f"Every run, {protocol} protocol"):
            lines += [f"![every run, {protocol} protocol]({name})", ""]
    best = _best(rows)
    if best is not None:
        lines += _best_section(best, out.parent)
    with atomic_write(out, "w") as handle:
        handle.write("\n".join(lines).rstrip() + "\n")
    return out


def _best_section(best: dict, folder: Path) -> list[str]:
    from cnnx.training.plots import plot_confusion_matrix

    record, spec = best["record"], best["spec"]
    names = record["class_names"]
    plot_confusion_matrix(
        np.asarray(record["confusion_matrix"]), names, folder / "report-confusion.png"
    )  # host
    per_class = record["per_class"]
    ranked = sorted(names, key=lambda n: per_class[n]["recall"])
    lines = [
        f"## The best run: {spec.experiment} {spec.protocol} {spec.label} ({_pct(best['accuracy'])})",
        "",
        "![confusion matrix of the best run](report-confusion.png)",
        "",
        "| class | recall | precision |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {_pct(per_class[n]['recall'])} | {_pct(per_class[n]['precision'])} |" for n in names]
    hardest = ranked[0]
    lines += [
        "",
        f"The hardest class is **{hardest}** (recall {_pct(per_class[hardest]['recall'])}), then {ranked[1]} "
        f"and {ranked[2]}."
        + (
            " As in the report, shirts are the hardest: they are confused with T-shirts, pullovers and coats."
            if hardest == "Shirt"
            else " The report found shirts the hardest."
        ),  # fmt: skip
    ]
    return lines
