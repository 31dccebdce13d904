"""The experiment grid keeps what it has: a finished run is replaced only by a finished run, trials live
apart from full runs, a run another process writes is that process's, a damaged record is one line, and
a report that is not the whole grid's says so and goes beside the runs. Workers here are fakes (a few
lines of Python that write what a run would), so that each case costs a fraction of a second."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.errors import ConfigError
from cnnx.experiments import find_experiments, plan, run_grid, select

from helpers import TINY_STUDY, write_blob_idx

# What the fake worker does, by mode: "complete" writes a completed record (noting the record it saw
# in the run's own directory, when it trains beside it); "fail" and "kill" write a checkpoint and a
# running record, then exit 1 with a cause or die of SIGKILL; "locked" exits 4 as the worker does when
# another process holds the run.
FAKE_WORKER = r"""
import json, os, signal, sys
from pathlib import Path

task, mode = json.loads(sys.argv[1]), sys.argv[2]
work = Path(task["run_dir"])
final = work.with_name(work.name.removesuffix(".staging"))
beside = final / "metrics.json"
seen = beside.read_text() if final != work and beside.is_file() else None
if mode == "locked":
    sys.exit(4)
work.mkdir(parents=True, exist_ok=True)
record = {"status": "running", "config": task["config"], "steps_done": 2}
if mode in ("fail", "kill"):
    (work / "model.npz").write_bytes(b"a checkpoint")
    (work / "metrics.json").write_text(json.dumps(record))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("error: no space left on the disk", file=sys.stderr)
    sys.exit(1)
record.update(status="completed", test_accuracy=0.75, steps_done=12, seen_beside=seen,
              history=[{"epoch": 1, "test_accuracy": 0.75, "seconds": 1.0}])
(work / "metrics.json").write_text(json.dumps(record))
"""


class FakeWorker:
    """Replaces the grid's worker process with :data:`FAKE_WORKER` in ``mode``."""

    def __init__(self, monkeypatch):
        self.mode = "complete"
        monkeypatch.setattr("cnnx.experiments.grid.worker_command", self.command)

    def command(self, task: dict) -> list[str]:
        return [sys.executable, "-c", FAKE_WORKER, json.dumps(task), self.mode]


@pytest.fixture
def fake_worker(monkeypatch):
    return FakeWorker(monkeypatch)


@pytest.fixture
def study(tmp_path):
    """Two tiny experiments (experiments folder, results folder); their data exist but fakes train."""
    data = tmp_path / "data"
    data.mkdir()
    write_blob_idx(data)
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name in ("tiny-a", "tiny-b"):
        (folder / f"{name}.toml").write_text(TINY_STUDY.format(name=name, data=data))
    return folder, tmp_path / "results"


NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def finished(spec, accuracy: float = 0.9, marker: str = "old", **extra) -> dict:
    """A completed run's record for ``spec``, as a run writes it, with ``marker`` to recognise it by."""
    return {
        "format": "cnnx-run", "status": "completed", "test_accuracy": accuracy, "steps_done": 12,
        "config": {**spec.config.to_dict(), "device_description": "cpu (test)", **extra}, "marker": marker,
        "history": [{"epoch": 1, "test_accuracy": accuracy, "seconds": 2.0, "batches": 12}],
        "curves": {"train": [[6, 1.0], [12, 0.5]], "test": [[6, 0.5, accuracy / 2], [12, 0.4, accuracy]]},
        "class_names": NAMES, "confusion_matrix": np.diag([10] * 10).tolist(),
        "per_class": {n: {"recall": 0.9, "precision": 0.9, "f1": 0.9, "support": 10} for n in NAMES},
    }  # fmt: skip


def write_record(directory: Path, record) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(record) if not isinstance(record, str) else record)


def record_in(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def specs_of(study, names=(), protocols=("report", "modern")):
    return select(find_experiments(study[0]), list(names), protocols)


def run_dir_of(results: Path, spec, limit: int | None = None) -> Path:
    base = results if limit is None else results / "trials" / f"limit-{limit}"
    return base / spec.experiment / f"{spec.protocol}-{spec.label}"


def invoke(*args: str):
    return CliRunner().invoke(cli, ["experiment", *args])


def quiet(line: str) -> None:
    pass


def after_the_plan(output: str) -> str:
    """What a grid printed after its line of counts ("1 runs: 0 reused, 0 to resume, ...")."""
    return output.split(" at a time\n", 1)[-1]


# -- a finished run is replaced only by a finished run ------------------------------------------------------


def test_an_unreachable_cluster_is_reported_before_a_forced_grid_touches_any_run(study, monkeypatch):
    monkeypatch.setattr("cnnx.experiments.grid.CONNECT_SECONDS", 2)
    folder, results = study
    specs = specs_of(study, ["tiny-a"], ("report",))
    write_record(run_dir_of(results, specs[0]), finished(specs[0]))
    with pytest.raises(ConfigError, match="Dask"):
        run_grid(specs, results, force=True, cluster="tcp://127.0.0.1:9", echo=quiet)
    assert record_in(run_dir_of(results, specs[0]))["marker"] == "old", "the finished run was touched"


@pytest.mark.parametrize("why", ["forced", "other settings"])
def test_a_replacement_trains_beside_the_finished_run_and_takes_its_place_once_finished(
    study, fake_worker, why
):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    final = run_dir_of(results, spec)
    write_record(final, finished(spec, optimizer="sgd") if why == "other settings" else finished(spec))
    [summary] = run_grid([spec], results, force=why == "forced", echo=quiet)
    assert summary["status"] == "completed"
    new = record_in(final)
    assert "marker" not in new, "the finished run is still there: it was not replaced"
    assert new["seen_beside"] is not None and '"marker": "old"' in new["seen_beside"], (
        "the replacement did not train beside the finished run: the run was gone while it trained"
    )
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name], (
        "a staging or old directory is left"
    )


@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_a_replacement_that_fails_or_is_killed_leaves_the_finished_run_in_place(study, fake_worker, mode):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    final = run_dir_of(results, spec)
    write_record(final, finished(spec))
    fake_worker.mode = mode
    [summary] = run_grid([spec], results, force=True, echo=quiet)
    assert summary["status"] == ("failed" if mode == "fail" else "killed")
    assert record_in(final)["marker"] == "old", f"a {mode}ed replacement cost the finished run"


def test_a_killed_replacement_is_resumed_beside_the_finished_run_by_the_next_forced_grid(study, fake_worker):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    final = run_dir_of(results, spec)
    write_record(final, finished(spec))
    fake_worker.mode = "kill"
    run_grid([spec], results, force=True, echo=quiet)
    [again] = plan([spec], results, force=True)
    assert (again["action"], again["work"]) == ("resume", final.with_name(final.name + ".staging"))
    [unforced] = plan([spec], results)
    assert unforced["action"] == "reuse", "without --force the finished run is still the result"


def test_a_swap_cut_short_by_a_killed_grid_is_read_as_the_old_run_and_finished_by_the_next_grid(study):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    final = run_dir_of(results, spec)
    write_record(final.with_name(final.name + ".old"), finished(spec))  # renamed away, not yet replaced
    write_record(final.with_name(final.name + ".staging"), finished(spec, marker="new"))
    listed = invoke("list", "--dir", str(folder), "--results", str(results))
    assert "report 12-steps     completed, test accuracy 0.9000" in listed.output, listed.output
    [task] = plan([spec], results)
    assert task["action"] == "reuse" and record_in(final)["marker"] == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


# -- trials live apart --------------------------------------------------------------------------------------


def test_a_trial_with_limit_runs_apart_and_leaves_the_full_runs_as_they_were(study, fake_worker):
    folder, results = study
    specs = specs_of(study)
    for spec in specs:
        write_record(run_dir_of(results, spec), finished(spec))
    result = invoke("run", "--all", "--limit", "100", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 0, result.output
    assert all(record_in(run_dir_of(results, s))["marker"] == "old" for s in specs), "a full run was replaced"
    trial = record_in(run_dir_of(results, specs[0], limit=100))
    assert trial["status"] == "completed" and trial["config"]["limit"] == 100
    listed = invoke("list", "--dir", str(folder), "--results", str(results))
    assert "trial --limit 100: completed, test accuracy 0.7500" in listed.output, listed.output


def test_a_run_recorded_on_a_subset_is_marked_as_a_trial_in_the_list(study):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    write_record(run_dir_of(results, spec), finished(spec, limit=600))  # as --limit wrote it before
    listed = invoke("list", "--dir", str(folder), "--results", str(results))
    assert "completed, test accuracy 0.9000 (a trial on 600 images)" in listed.output, listed.output


# -- a run another process writes ---------------------------------------------------------------------------


def test_a_run_locked_by_another_process_is_reported_as_running_there_not_as_failed(study, fake_worker):
    folder, results = study
    fake_worker.mode = "locked"
    result = invoke("run", "tiny-a", "--protocol", "report", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 1
    assert "tiny-a/report-12-steps: running in another process" in result.output, result.output
    news = after_the_plan(result.output)
    assert "failed" not in news and "resume" not in news, result.output


def test_a_run_finished_by_another_process_is_reused_by_the_next_grid(study, fake_worker):
    folder, results = study
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    fake_worker.mode = "locked"
    run_grid([spec], results, echo=quiet)
    write_record(run_dir_of(results, spec), finished(spec))  # the other process finished it
    assert [t["action"] for t in plan([spec], results)] == ["reuse"]


def test_the_worker_exits_with_status_4_when_another_process_holds_the_run(study, monkeypatch):
    from cnnx.errors import RunLockedError
    from cnnx.experiments import worker

    def locked(config, run_dir, **options):
        raise RunLockedError(f"run directory {run_dir} is being written by process 12345")

    monkeypatch.setattr("cnnx.training.run_training", locked)
    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    task = {"config": spec.config.to_dict(), "run_dir": str(study[1] / "x"), "resume": False, "threads": None}
    assert worker.main([json.dumps(task)]) == 4


# -- failures say their cause; only stopped runs are resumable ----------------------------------------------


def test_a_permanent_failure_prints_its_cause_and_no_advice_to_resume(study):
    folder, results = study
    path = folder / "tiny-b.toml"
    path.write_text(path.read_text().replace('data_dir = "', 'data_dir = "/nonexistent'))
    result = invoke("run", "tiny-b", "--protocol", "modern", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 1
    assert "cnnx: error: 1 of 1 runs failed: tiny-b/modern-2-epochs: --data-dir /nonexistent" in result.output
    assert "resume" not in after_the_plan(result.output), result.output


def test_a_killed_run_is_one_to_resume(study, fake_worker):
    folder, results = study
    fake_worker.mode = "kill"
    result = invoke("run", "tiny-a", "--protocol", "report", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 1
    assert "1 of 1 runs were stopped (tiny-a/report-12-steps): run the same command again to resume" in (
        result.output
    )


# -- a damaged record is one line in every command ----------------------------------------------------------


DAMAGES = {
    "a JSON list": lambda spec: [1, 2, 3],
    "a completed run without accuracy": lambda spec: {**finished(spec), "test_accuracy": None},
    "a string in the history": lambda spec: {**finished(spec), "history": ["an epoch"]},
}


SHAPES = [
    pytest.param("{", "not JSON", id="not-json"),
    pytest.param({"status": "done", "config": {}}, 'status is "done"', id="unknown-status"),
    pytest.param({"status": "running"}, "no config", id="no-config"),
    pytest.param({"confusion_matrix": [[1]]}, "confusion_matrix is not 10 rows of 10 counts", id="matrix"),
    pytest.param({"curves": {"train": [[1]]}}, "curves.train is not a list of [step, loss]", id="curves"),
    pytest.param({"history": [{"seconds": "x"}]}, 'history[0].seconds is "x", not a number', id="seconds"),
    pytest.param({"per_class": {}}, "per_class['T-shirt/top'] has no recall", id="per-class"),
    pytest.param({"test_accuracy": 88.3}, "test_accuracy is 88.3, not an accuracy", id="percent"),
]


@pytest.mark.parametrize(("damage", "problem"), SHAPES)
def test_read_metrics_says_what_is_wrong_with_a_damaged_record(study, damage, problem):
    from cnnx.experiments.records import read_metrics

    spec = specs_of(study, ["tiny-a"], ("report",))[0]
    directory = study[1] / "run"
    if isinstance(damage, dict) and "status" not in damage:
        damage = {**finished(spec), **damage}
    write_record(directory, damage if isinstance(damage, str) else json.dumps(damage))
    record = read_metrics(directory)
    assert record.damaged and problem in record.problem, record.problem


def test_a_fifo_in_place_of_metrics_json_is_damaged_not_a_hang(tmp_path):
    from cnnx.experiments.records import read_metrics

    os.mkfifo(tmp_path / "metrics.json")
    assert read_metrics(tmp_path).problem == "a FIFO (named pipe), not a regular run record"


@pytest.mark.parametrize("command", ["list", "run", "report"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_metrics_json_is_named_by_list_run_and_report(study, fake_worker, damage, command):
    folder, results = study
    specs = specs_of(study)
    for spec in specs[1:]:
        write_record(run_dir_of(results, spec), finished(spec))
    damaged = run_dir_of(results, specs[0])
    write_record(damaged, DAMAGES[damage](specs[0]))
    args = ["--dir", str(folder), "--results", str(results)]
    result = invoke(*({"run": ["run", "--all"]}.get(command, [command])), *args)
    assert result.exit_code == 0, result.output
    if command == "report":
        result = Path(results / "REPORT.md").read_text()
        assert "damaged metrics.json" in result and "1 of 4 runs have no result" in result
    else:
        assert "damaged metrics.json (" in result.output, result.output
    if command == "run":
        assert record_in(damaged)["status"] == "completed", "the damaged run was not run again"


# -- a report that is not the whole grid's ------------------------------------------------------------------


COMMITTED = "# the committed report\n"


def with_committed_report(folder: Path) -> Path:
    (folder / "REPORT.md").write_text(COMMITTED)
    return folder / "REPORT.md"


def test_a_trial_s_report_goes_beside_its_runs_and_says_it_is_a_trial(study):
    folder, results = study
    committed = with_committed_report(folder)
    for spec in specs_of(study):
        write_record(run_dir_of(results, spec, limit=600), finished(spec, 0.75, limit=600))
    result = invoke("report", "--limit", "600", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 0, result.output
    written = results / "trials" / "limit-600" / "REPORT.md"
    assert f"wrote {written} (4 of 4 runs are trials on a subset" in result.output, result.output
    assert committed.read_text() == COMMITTED, "the trial's report replaced the committed one"
    text = written.read_text()
    assert "**A trial, not a result of the study.** 4 of 4 runs trained on a subset of 600" in text
    assert "**75.00 %** (a trial on 600 images)" in text


def test_a_partial_grid_s_report_goes_beside_the_results_and_counts_the_runs_without_a_result(study):
    folder, results = study
    committed = with_committed_report(folder)
    spec = specs_of(study)[0]
    write_record(run_dir_of(results, spec), finished(spec))
    result = invoke("report", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 0, result.output
    assert f"wrote {results / 'REPORT.md'} (3 of 4 runs have no result;" in result.output, result.output
    assert committed.read_text() == COMMITTED, "the partial report replaced the committed one"
    assert (
        "**A partial grid.** 3 of 4 runs have no result (not run: 3)" in (results / "REPORT.md").read_text()
    )


def test_out_writes_a_partial_report_where_it_says(study):
    folder, results = study
    committed = with_committed_report(folder)
    spec = specs_of(study)[0]
    write_record(run_dir_of(results, spec), finished(spec))
    result = invoke("report", "--out", str(committed), "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 0 and result.output == f"wrote {committed}\n", result.output
    assert "**A partial grid.**" in committed.read_text()


def test_a_complete_grid_of_full_runs_writes_the_folder_s_report(study):
    folder, results = study
    committed = with_committed_report(folder)
    for spec in specs_of(study):
        write_record(run_dir_of(results, spec), finished(spec))
    result = invoke("report", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 0 and result.output == f"wrote {committed}\n", result.output
    text = committed.read_text()
    assert text.startswith("# Experiments: experiments\n") and "A partial grid" not in text


def test_a_report_with_no_recorded_run_is_an_error_that_writes_nothing(study):
    folder, results = study
    committed = with_committed_report(folder)
    result = invoke("report", "--dir", str(folder), "--results", str(results))
    assert result.exit_code == 1 and "no run of the experiments" in result.output, result.output
    assert committed.read_text() == COMMITTED and not os.path.exists(results / "REPORT.md")
