"""Experiment files, the grid runner (local jobs, a Dask cluster, reuse, resume after a killed worker) and
the generated report."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.errors import ConfigError
from cnnx.experiments import find_experiments, load_experiment, plan, run_grid, select, write_report
from cnnx.experiments.grid import execute, run_dir, worker_command
from cnnx.experiments.report import STUDY
from cnnx.io.checkpoint import load_checkpoint

from helpers import write_blob_idx

ROOT = Path(__file__).resolve().parents[1]

TINY = """
title = "Tiny {name}"
compare = ["optimizers"]

[report]
setup = "dense network"
result = "50 %"

[config]
model = "mlp"
optimizer = "{optimizer}"
lr = {lr}
batch_size = 32
checkpoint_every = 1
data_dir = "{data}"

[[runs.report]]
max_steps = 12
eval_every = 4
log_every = 2
reported = 0.5

[[runs.modern]]
epochs = 2
"""


@pytest.fixture
def study(tmp_path):
    """Two tiny experiments on blob data in IDX files: (experiments folder, results folder)."""
    data = tmp_path / "data"
    data.mkdir()
    write_blob_idx(data)
    folder = tmp_path / "experiments"
    folder.mkdir()
    for name, optimizer, lr in (("tiny-adam", "adam", 1e-3), ("tiny-sgd", "sgd", 0.05)):
        (folder / f"{name}.toml").write_text(TINY.format(name=name, optimizer=optimizer, lr=lr, data=data))
    return folder, tmp_path / "results"


# -- experiment files --------------------------------------------------------------------------------


def test_an_experiment_file_gives_one_run_per_table_with_its_budget_as_label(study):
    experiment = load_experiment(study[0] / "tiny-adam.toml")
    assert experiment.name == "tiny-adam" and experiment.compare == ("optimizers",)
    assert [(r.protocol, r.label) for r in experiment.runs] == [
        ("report", "12-steps"),
        ("modern", "2-epochs"),
    ]
    report, modern = experiment.runs
    assert report.config.max_steps == 12 and report.config.model == "mlp" and report.reported == 0.5
    assert modern.config.max_steps is None and modern.config.epochs == 2 and modern.reported is None
    assert report.key == "tiny-adam/report-12-steps"


BAD = [
    ("colour = 1\n", "unknown key 'colour'"),
    ("[config]\nspeed = 2\n", "unknown key 'config.speed'"),
    ("[config]\nlr = -1\n", "config.lr must be a positive finite number, got -1"),
    ("[[runs.report]]\nmax_steps = 0\n", "runs.report[0].max_steps must be a whole number"),
    ("[[runs.report]]\nbatch = 3\n", "unknown key 'runs.report[0].batch'"),
    ("[[runs.report]]\nreported = 88.27\n", "runs.report[0].reported must be an accuracy from 0 to 1"),
    ("[[runs.fast]]\nepochs = 1\n", "unknown protocol 'runs.fast'"),
    ("[[runs.modern]]\nepochs = 1\n[[runs.modern]]\nepochs = 1\n", "repeats the budget 1-epoch"),
    ("[report]\nfigure = 3\n[[runs.modern]]\n", "unknown key 'report.figure'"),
    ("name = 'Bad Name'\n[[runs.modern]]\n", "name must be lower-case"),
    ("compare = ['speed']\n[[runs.modern]]\n", "compare must be a list of optimizers, learning-rates"),
    ("title = 3\n", "title must be a non-empty string"),
    ("[config\n", "not valid TOML"),
    ("", "runs must be a table of protocols"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_experiment_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_two_files_with_one_name_and_an_empty_folder_are_errors(study, tmp_path):
    folder, _ = study
    (folder / "copy.toml").write_text(
        (folder / "tiny-adam.toml").read_text().replace("title", 'name = "tiny-adam"\ntitle')
    )
    with pytest.raises(ConfigError, match="experiment name 'tiny-adam' is also used by"):
        find_experiments(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no experiment files"):
        find_experiments(tmp_path / "empty")


def test_select_names_unknown_experiments_and_filters_protocols(study):
    experiments = find_experiments(study[0])
    assert [r.key for r in select(experiments, [], ("modern",))] == [
        "tiny-adam/modern-2-epochs",
        "tiny-sgd/modern-2-epochs",
    ]
    with pytest.raises(ConfigError, match="unknown experiment 'nope': choose from tiny-adam, tiny-sgd"):
        select(experiments, ["nope"], ("modern",))


def test_the_study_s_experiment_files_load_and_cover_the_report(tmp_path):
    experiments = {e.name: e for e in find_experiments(ROOT / "experiments")}
    assert set(STUDY.values()) <= set(experiments), "a study experiment the report reads is missing"
    for experiment in experiments.values():
        assert {r.protocol for r in experiment.runs} == {"report", "modern"}, experiment.name
    assert experiments["model4-adam"].protocol_runs("report")[0].reported == 0.8827
    assert experiments["model1-sgd"].protocol_runs("report")[0].config.optimizer == "sgd"


# -- the grid -------------------------------------------------------------------------------------------


def metrics(results, key) -> dict:
    return json.loads((Path(results) / key / "metrics.json").read_text())


def test_a_tiny_grid_runs_end_to_end_with_two_jobs_and_is_then_reused(study):
    folder, results = study
    runner = CliRunner()
    args = ["experiment", "run", "--all", "--jobs", "2", "--dir", str(folder), "--results", str(results)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "4 runs: 0 reused, 0 to resume, 4 to start, 2 at a time" in result.output
    assert result.output.count(": completed, test accuracy") == 4
    report_run = metrics(results, "tiny-adam/report-12-steps")
    assert report_run["status"] == "completed" and report_run["steps_done"] == 12
    assert [row[0] for row in report_run["curves"]["test"]][:3] == [4, 5, 8]  # 160 images: 5 batches an epoch
    assert len(report_run["curves"]["train"]) == 6
    assert metrics(results, "tiny-sgd/modern-2-epochs")["epochs_completed"] == 2
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "4 runs: 4 reused, 0 to resume, 0 to start" in again.output
    forced = runner.invoke(cli, [*args, "--force", "--protocol", "modern"])
    assert forced.exit_code == 0 and "2 runs: 0 reused, 0 to resume, 2 to start" in forced.output
    listed = runner.invoke(cli, ["experiment", "list", "--dir", str(folder), "--results", str(results)])
    assert listed.exit_code == 0 and "report 12-steps     completed, test accuracy" in listed.output


def test_a_changed_setting_starts_a_run_afresh(study):
    folder, results = study
    specs = select(find_experiments(folder), ["tiny-adam"], ("report",))
    run_grid(specs, results, echo=lambda line: None)
    assert [t["action"] for t in plan(specs, results)] == ["reuse"]
    changed = [dataclasses.replace(s, config=s.config.replace(lr=0.01)) for s in specs]
    assert [t["action"] for t in plan(changed, results)] == ["start"]


def test_a_run_recorded_before_a_setting_existed_is_still_reused(study):
    folder, results = study
    specs = select(find_experiments(folder), ["tiny-adam"], ("report",))
    run_grid(specs, results, echo=lambda line: None)
    path = run_dir(results, specs[0]) / "metrics.json"
    record = json.loads(path.read_text())
    del record["config"]["weight_decay"], record["config"]["augment"]  # as cnnx 0.2 wrote it
    path.write_text(json.dumps(record))
    assert [t["action"] for t in plan(specs, results)] == ["reuse"]


def test_a_diverging_run_is_recorded_at_its_step_and_the_others_carry_on(study):
    folder, results = study
    path = folder / "tiny-sgd.toml"
    path.write_text(path.read_text().replace("lr = 0.05", "lr = 1e30"))
    specs = select(find_experiments(folder), [], ("report",))
    summaries = run_grid(specs, results, jobs=2, echo=lambda line: None)
    assert [s["status"] for s in summaries] == ["completed", "diverged"]
    record = metrics(results, "tiny-sgd/report-12-steps")
    assert record["status"] == "diverged" and "diverged at epoch 1" in record["error"]
    assert record["steps_done"] < 12
    # A diverged run is a result: the next grid reuses it.
    assert [t["action"] for t in plan(specs, results)] == ["reuse", "reuse"]


def test_a_killed_worker_loses_only_its_run_which_the_next_grid_resumes_exactly(study, tmp_path):
    folder, results = study
    # Long enough (120 steps, a checkpoint after each) to be killed in the middle.
    specs = [dataclasses.replace(s, config=s.config.replace(max_steps=120))
             for s in select(find_experiments(folder), ["tiny-adam"], ("report",))]  # fmt: skip
    straight = tmp_path / "straight"
    run_grid(specs, straight, echo=lambda line: None)
    # Start the same run as the grid would, and kill its worker once a mid-run checkpoint exists.
    task = plan(specs, results)[0]
    payload = {"key": specs[0].key, "config": specs[0].config.to_dict(), "run_dir": str(task["dir"]),
               "resume": False, "threads": 1}  # fmt: skip
    worker = subprocess.Popen(worker_command(payload))
    checkpoint = task["dir"] / "model.npz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            if load_checkpoint(checkpoint).meta["step"] >= 3:
                break
        except Exception:  # not written yet, or being replaced
            time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = metrics(results, specs[0].key)
    if killed["status"] == "completed":
        pytest.skip("the worker finished before it could be killed")
    assert [t["action"] for t in plan(specs, results)] == ["resume"]
    summaries = run_grid(specs, results, echo=lambda line: None)
    assert summaries[0]["status"] == "completed"
    resumed, reference = metrics(results, specs[0].key), metrics(straight, specs[0].key)
    assert resumed["resumes"] == 1
    assert resumed["curves"] == reference["curves"]
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(resumed["history"]) == strip(reference["history"])
    a = load_checkpoint(run_dir(results, specs[0]) / "model.npz").model_state
    b = load_checkpoint(run_dir(straight, specs[0]) / "model.npz").model_state
    assert all(np.array_equal(a[k], b[k]) for k in b)


SELF_KILL = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def test_a_worker_killed_by_a_signal_is_reported_as_killed(study, monkeypatch):
    folder, results = study
    spec = select(find_experiments(folder), ["tiny-adam"], ("report",))[0]
    monkeypatch.setattr("cnnx.experiments.grid.worker_command",
                        lambda task: ["python3", "-c", SELF_KILL])  # fmt: skip
    summary = execute({"key": spec.key, "config": spec.config.to_dict(), "run_dir": str(results / "x"),
                       "resume": False, "threads": None})  # fmt: skip
    assert summary["status"] == "killed" and "running the grid again resumes it" in summary["error"]


def test_a_failed_run_makes_the_command_fail_with_one_line(study):
    folder, results = study
    path = folder / "tiny-sgd.toml"
    path.write_text(path.read_text().replace('data_dir = "', 'data_dir = "/nonexistent'))
    result = CliRunner().invoke(cli, ["experiment", "run", "tiny-sgd", "--protocol", "modern", "--dir",
                                      str(folder),
                                      "--results", str(results)])  # fmt: skip
    assert result.exit_code == 1
    assert "cnnx: error: 1 of 1 run did not finish (tiny-sgd/modern-2-epochs)" in result.output


def test_naming_experiments_and_all_together_is_a_usage_error(study):
    result = CliRunner().invoke(cli, ["experiment", "run", "tiny-adam", "--all", "--dir", str(study[0])])
    assert result.exit_code == 2 and "name the experiments to run, or give --all" in result.output


def test_the_same_grid_runs_on_a_dask_cluster_with_two_worker_processes(study, request):
    distributed = pytest.importorskip(
        "dask.distributed", reason="the cluster extra (dask[distributed]) is not installed"
    )
    # Starting a LocalCluster in this process sets these in os.environ for its workers (distributed's
    # pre-spawn environment). Put them back afterwards, so that later tests' subprocesses do not
    # inherit one BLAS thread.
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    saved = {name: os.environ.get(name) for name in names}

    def restore():
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    request.addfinalizer(restore)
    folder, results = study
    specs = select(find_experiments(folder), [], ("report",))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        summaries = run_grid(specs, results, cluster=cluster.scheduler_address, echo=lambda line: None)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert all(metrics(results, s.key)["steps_done"] == 12 for s in specs)


def test_an_unreachable_scheduler_is_one_line(study, monkeypatch):
    pytest.importorskip("dask.distributed", reason="the cluster extra (dask[distributed]) is not installed")
    monkeypatch.setattr("cnnx.experiments.grid.CONNECT_SECONDS", 2)
    folder, results = study
    specs = select(find_experiments(folder), ["tiny-adam"], ("report",))
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        run_grid(specs, results, cluster="tcp://127.0.0.1:9", echo=lambda line: None)


# -- the report --------------------------------------------------------------------------------------


def fake_record(status, accuracy, steps, curve, predicted_class=None):
    """A metrics.json as a run writes it, with a test curve and a confusion matrix."""
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]  # fmt: skip
    matrix = np.diag([100] * 10)
    if predicted_class is not None:
        matrix = np.zeros((10, 10), int)
        matrix[:, predicted_class] = 100
    recall = {n: {"recall": 0.9 - 0.05 * (n == "Shirt") * 10, "precision": 0.9, "f1": 0.9, "support": 1000}
              for n in names}  # fmt: skip
    return {"status": status, "test_accuracy": accuracy, "steps_done": steps, "class_names": names,
            "confusion_matrix": matrix.tolist(), "per_class": recall,
            "history": [{"epoch": 1, "test_accuracy": accuracy, "seconds": 12.5}],
            "curves": {"train": [[s, 1.0 / s] for s, _ in curve], "test": [[s, 0.5, a] for s, a in curve]},
            "config": {"device_description": "cpu (test)", "train_size": 60000,
                       "batch_size": 128}}  # fmt: skip


def test_the_report_has_the_tables_figures_best_run_and_reading(tmp_path):
    experiments = find_experiments(ROOT / "experiments")
    results = tmp_path / "results"
    outcomes = {  # experiment -> (status, accuracy, curve, the one class it predicts)
        "model1-sgd": ("completed", 0.70, [(1000, 0.5), (2000, 0.65), (3000, 0.70)], None),
        "model2-adam": ("completed", 0.84, [(50, 0.8), (100, 0.84)], None),
        "model3-low-lr": ("completed", 0.10, [(50, 0.1), (100, 0.1)], 1),
        "model3-high-lr": ("diverged", None, [(50, 0.6), (100, 0.2)], None),
        "model4-adam": ("completed", 0.895, [(250, 0.85), (500, 0.895)], None),
    }
    for experiment in experiments:
        if experiment.name not in outcomes:
            continue
        status, accuracy, curve, predicted = outcomes[experiment.name]
        for spec in experiment.protocol_runs("report"):
            folder = run_dir(results, spec)
            folder.mkdir(parents=True)
            steps = spec.config.max_steps if status == "completed" else 57
            record = fake_record(status, accuracy, steps, curve,
                                 predicted)  # fmt: skip
            (folder / "metrics.json").write_text(json.dumps(record))
    path = write_report(experiments, results, tmp_path / "out" / "REPORT.md")
    text = path.read_text()
    assert "| Model 4: CNN, Adam, lr 1e-3, longer | 500-steps |" in text and "**89.50 %**" in text
    assert "diverged at step 57" in text and "| Earlier network: dense only, Adam | 2000-steps |" in text
    assert "- **SGD far behind Adam at lr 1e-3.** Reproduced: SGD reaches 70.00 %" in text
    assert (
        "- **lr 1e-5 stuck near a single class.** Reproduced: after 100 steps, 100 % of the test images are "
        "predicted as 'Trouser'" in text
    )
    assert "- **lr 0.1 unstable.** Reproduced: the 100-steps run diverged at step 57" in text
    assert "- **Adam at 1e-3 the best, beyond 88.27 %.** Reproduced: the best run is model4-adam" in text
    assert "The hardest class is **Shirt**" in text
    for name in ("report-optimizers-report.png", "report-learning-rates-report.png", "report-confusion.png"):
        assert (path.parent / name).stat().st_size > 1000, name
    assert "## Modern protocol" in text and "not run" in text


def test_a_grid_of_one_s_own_gets_a_table_curves_and_its_best_run_without_the_study_s_reading(study):
    folder, results = study
    experiments = find_experiments(folder)
    for experiment, accuracy in zip(experiments, (0.61, 0.42), strict=True):
        for spec in experiment.runs:
            target = run_dir(results, spec)
            target.mkdir(parents=True)
            (target / "metrics.json").write_text(
                json.dumps(fake_record("completed", accuracy, 12, [(4, 0.3), (12, accuracy)]))
            )
    path = write_report(experiments, results, folder / "REPORT.md")
    text = path.read_text()
    assert text.startswith("# Experiments: experiments\n") and "What reproduced" not in text
    assert "| Tiny tiny-adam | 12-steps | mlp | **61.00 %** | 12 | 12 s | 12.5 | cpu (test) |" in text
    assert "## The best run: tiny-adam report 12-steps (61.00 %)" in text
    assert (folder / "report-runs-report.png").stat().st_size > 1000
