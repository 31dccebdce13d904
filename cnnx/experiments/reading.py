"""The reading of a study's runs: their curves, the best run, and what the original report's four
findings become under each protocol (:func:`findings`), with the numbers beside the report's
(:func:`differences`). It finds the study's experiments by name (:data:`STUDY`); for a grid of one's own
it says which of them were not run."""

from __future__ import annotations

import math

import numpy as np  # host: run records

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


def curve_points(record: dict) -> tuple[list, list, list]:
    """(steps, test accuracies) and (steps, training losses) of a run, from its step curves, or from its
    history at epoch ends when it drew none."""
    curves = record.get("curves") or {}
    test = [(s, a) for s, _, a in curves.get("test", []) if a is not None]
    train = [(s, loss) for s, loss in curves.get("train", []) if loss is not None]
    if not test:
        config, batches = record.get("config") or {}, 0
        sizes = config.get("train_size"), config.get("batch_size")
        per_epoch = math.ceil(sizes[0] / sizes[1]) if all(sizes) else None
        for h in record.get("history") or []:
            if h.get("batches", per_epoch) is None:
                break  # a record without the sizes to place its epochs
            batches += h.get("batches", per_epoch)
            if h.get("test_accuracy") is not None:
                test.append((batches, h["test_accuracy"]))
    return test, train


def best_run(rows: list[dict]) -> dict | None:
    """The most accurate finished run, on Fashion-MNIST when any ran on it (accuracies on different data
    sets do not compare)."""
    done = [r for r in rows if r["accuracy"] is not None]
    fashion = [r for r in done if r["spec"].config.dataset == "fashion-mnist"]
    done = fashion or done
    return max(done, key=lambda r: r["accuracy"]) if done else None


def _find(rows: list[dict], name: str, protocol: str) -> list[dict]:
    return [r for r in rows if r["experiment"].name == name and r["spec"].protocol == protocol]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def steps(row: dict) -> str:
    return "-" if row["steps"] is None else f"{row['steps']:,}"


def trial_tag(row: dict) -> str:
    """ " (a trial on N images)" for a run trained on a subset, else nothing."""
    return f" (a trial on {row['limit']:,} images)" if row.get("limit") else ""


def _top_class_share(record: dict) -> tuple[str, float] | None:
    matrix = np.asarray(record.get("confusion_matrix") or [])  # host
    if matrix.size == 0:
        return None
    predicted = matrix.sum(axis=0)
    if predicted.sum() == 0:
        return None
    top = int(predicted.argmax())
    return record["class_names"][top], float(predicted[top] / predicted.sum())


def _swing(record: dict) -> float | None:
    """The largest drop of test accuracy between two successive evaluations of a run."""
    test, _ = curve_points(record)
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
            f"- **SGD far behind Adam at lr 1e-3.** {verdict}: SGD reaches {pct(s['accuracy'])} after "
            f"{steps(s)} steps; Adam reaches {pct(a['accuracy'])} after {steps(a)}. Plain SGD at "
            "this rate moves the weights by lr times the gradient, which is small for Xavier-initialised "
            "layers, while Adam scales each step to about lr whatever the gradient's size."
        )
    else:
        lines.append("- **SGD far behind Adam at lr 1e-3.** Not run under this protocol.")
    low = [r for r in _find(rows, STUDY["low_lr"], protocol) if r["record"] is not None]
    share = _top_class_share(low[0]["record"]) if low else None
    if share is not None:
        acc = low[0]["accuracy"]
        verdict = (
            "Reproduced" if share[1] >= 0.9 else "Partly reproduced" if share[1] >= 0.3 else "Not reproduced"
        )
        lines.append(
            f"- **lr 1e-5 stuck near a single class.** {verdict}: after {steps(low[0])} steps, "
            f"{100 * share[1]:.0f} % of the test images are predicted as {share[0]!r} (a uniform guess would "
            f"give 10 %), and the test accuracy is {pct(acc)}. At this rate Adam moves each weight by about "
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
                text = f"the {r['spec'].label} run collapses to {pct(r['accuracy'])}"
                if share is not None:
                    text += f", predicting {share[0]!r} for {100 * share[1]:.0f} % of the test images"
                if r["spec"].reported is not None:
                    kept = pct(r["spec"].reported)
                    text += (f" (the report's run kept {kept}; with another batch size and initialisation "
                             "the first steps need not kill every unit)")  # fmt: skip
                parts.append(text)
            else:
                swing = _swing(r["record"])
                text = f"the {r['spec'].label} run ends at {pct(r['accuracy'])}"
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
            f"- **The dense-only network** reaches {pct(d['accuracy'])} after {steps(d)} steps (the "
            f"report: 77 %){versus}."
        )
    best = best_run([r for r in rows if r["spec"].protocol == protocol])
    if best is not None:
        is_adam = best["experiment"].name in (STUDY["adam"], STUDY["adam_short"])
        beats = best["accuracy"] > REPORT_BEST
        verdict = "Reproduced" if is_adam and beats else "Not reproduced"
        lines.append(
            f"- **Adam at 1e-3 the best, beyond 88.27 %.** {verdict}: the best run is "
            f"{best['experiment'].name} {best['spec'].label} at {pct(best['accuracy'])}{trial_tag(best)}"
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
        f"{r['experiment'].name} {r['spec'].label}: {pct(r['accuracy'])} against {pct(r['spec'].reported)} "
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
