"""RunConfig and run_training: one validated description of a run, from Python, TOML or the command line;
what a resumed run may change; run directories that parallel runs never share."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.data import Dataset
from cnnx.errors import ConfigError
from cnnx.training import RunConfig, TrainingInterrupted, resume_config, run_training
from cnnx.training.rundir import METRICS, claim_run_dir

from helpers import StopAtStep, blobs, write_blob_idx


def blob_dataset() -> Dataset:
    return Dataset(*blobs(160, seed=1), *blobs(40, seed=2), source="synthetic blobs")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- RunConfig ---------------------------------------------------------------------------------------


def test_the_defaults_are_the_reports_cnn_with_adam_for_five_epochs():
    config = RunConfig()
    assert (config.model, config.optimizer, config.epochs, config.batch_size, config.device) == (
        "seed", "adam", 5, 128, "cpu"
    )  # fmt: skip


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"epochs": 0}, "epochs must be a whole number from 1"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"model": "vgg99"}, "model must be a preset (seed, mlp, "),
        ({"model": [{"type": "Nope", "config": {}}]}, "model: layer 0 has an unknown type 'Nope'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, momentum, adam"),
        ({"optimizer_options": {"beta": 0.5}}, "adam has no setting 'beta'"),
        ({"optimizer_options": {"beta1": "high"}}, "beta1 must be a finite number"),
        ({"device": "tpu"}, "device must be one of cpu, gpu, auto"),
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
        ({"limit": 0}, "limit must be a whole number >= 1"),
        ({"on_divergence": "ignore"}, "on_divergence must be one of stop, skip"),
        ({"lrr": 0.1}, "unknown key 'lrr'"),
    ],
)
def test_a_bad_field_is_a_one_line_error_naming_it(values, fragment):
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_dict(values, source="run.toml")
    message = str(refused.value)
    assert message.startswith("run.toml: ") and fragment in message and "\n" not in message, message


def test_every_field_is_declared_with_a_kind_and_a_doc_naming_only_other_fields():
    import string

    for field in RunConfig.declared():
        kind, doc = field.metadata["kind"], field.metadata["doc"]
        assert callable(kind.ok) and kind.describe(), f"{field.name}: no kind to check it by"
        named = {name for _, name, _, _ in string.Formatter().parse(doc) if name}
        unknown = named - set(RunConfig.fields())
        assert doc and not unknown, f"{field.name}'s doc names {sorted(unknown)}, which are no fields"


def test_every_run_setting_but_the_structured_ones_is_a_train_option_with_its_doc_as_help():
    from cnnx.cli.train import train
    from cnnx.training.settings import doc_of, option_name

    options = {param.opts[0]: param.help for param in train.params}
    for field in RunConfig.declared():
        if field.metadata["option"]:
            flag = option_name(field.name)
            assert options.get(flag) == doc_of(field, option_name), f"{flag}: {options.get(flag)!r}"
    not_options = [field.name for field in RunConfig.declared() if not field.metadata["option"]]
    assert not_options == ["input_shape", "optimizer_options"], f"not options: {not_options}"


def test_a_fields_doc_names_other_settings_as_the_reader_spells_them():
    from cnnx.training.settings import doc_of, option_name

    field = next(field for field in RunConfig.declared() if field.name == "early_stopping")
    assert "``validation``" in doc_of(field) and "--validation" in doc_of(field, option_name), doc_of(field)


def test_a_toml_file_gives_the_fields_and_command_line_values_win(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\nepochs = 7\nlr = 0.01\ndata_dir = "data"\n'
                 '[optimizer_options]\nbeta1 = 0.8\n')  # fmt: skip
    config = RunConfig.from_file(path, overrides={"epochs": 2})
    assert (config.model, config.epochs, config.lr, config.optimizer_options) == (
        "mlp",
        2,
        0.01,
        {"beta1": 0.8},
    )
    assert config.data_dir == str(tmp_path / "data"), "a relative data_dir is relative to the file"


def test_a_toml_file_may_describe_its_own_architecture(tmp_path):
    text = '[[model]]\ntype = "Flatten"\nconfig = {}\n\n[[model]]\ntype = "Dense"\n'
    text += "config = {in_features = 784, out_features = 10}\n"
    config = RunConfig.from_file(write(tmp_path / "run.toml", text))
    dense = {"type": "Dense", "config": {"in_features": 784, "out_features": 10}}
    assert config.model == [{"type": "Flatten", "config": {}}, dense]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("epochs = 0\n", "run.toml: epochs must be"),
        ("epoch = 3\n", "run.toml: unknown key 'epoch'"),
        ("epochs = \n", "run.toml: not valid TOML"),
    ],
)
def test_a_bad_toml_file_is_one_line_naming_the_file_and_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_file(write(tmp_path / "run.toml", text))


# -- the command line over it -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_blob_idx(tmp_path_factory.mktemp("blobs"))


def test_cnnx_train_config_trains_what_the_file_says_and_options_override_it(data_dir, tmp_path):
    path = write(
        tmp_path / "run.toml",
        f'model = "mlp"\nepochs = 3\nbatch_size = 40\nseed = 4\ndata_dir = "{data_dir}"\n',
    )
    result = CliRunner().invoke(
        cli, ["train", "--config", str(path), "--epochs", "1", "--out", str(tmp_path / "r"), "-q"]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "r" / METRICS).read_text())["config"]
    assert (recorded["model"], recorded["epochs"], recorded["batch_size"], recorded["seed"]) == (
        "mlp",
        1,
        40,
        4,
    )


def test_cnnx_train_with_a_bad_config_file_is_one_line_and_writes_nothing(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\nbatch = 40\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and f"{path}: unknown key 'batch'" in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_config_and_resume_together_are_refused(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "--config cannot be combined with --resume" in result.output


# -- resuming: what identifies a run and what may change ------------------------------------------------


@pytest.fixture
def stopped(tmp_path):
    config = RunConfig(model="mlp", epochs=3, batch_size=32, seed=2)
    with pytest.raises(TrainingInterrupted):
        run_training(config, tmp_path / "run", dataset=blob_dataset(), stop=StopAtStep(7), progress="none")
    return config, tmp_path / "run"


def test_a_resumed_run_takes_a_new_learning_rate_and_records_it(stopped):
    _, out = stopped
    config = resume_config(out, {"lr": 5e-4, "epochs": 4})
    assert (config.lr, config.epochs, config.model, config.batch_size) == (5e-4, 4, "mlp", 32)
    run = run_training(config, out, resume=True, dataset=blob_dataset(), progress="none")
    assert run.optimizer.lr == 5e-4 and len(run.history) == 4
    assert json.loads((out / METRICS).read_text())["config"]["lr"] == 5e-4


def test_resuming_with_the_same_settings_is_bit_identical_to_never_stopping(stopped, tmp_path):
    config, out = stopped
    straight = run_training(config, tmp_path / "straight", dataset=blob_dataset(), progress="none")
    resumed = run_training(resume_config(out), out, resume=True, dataset=blob_dataset(), progress="none")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "given, fragment",
    [
        ({"batch_size": 64}, "--batch-size 64 contradicts"),
        ({"seed": 3}, "--seed 3 contradicts"),
        ({"model": "seed"}, "--model 'seed' contradicts"),
        ({"optimizer_options": {"beta1": 0.5}}, "--optimizer-options"),
        ({"out": "elsewhere"}, "--out cannot be combined"),
    ],
)
def test_resuming_with_another_identity_is_refused(stopped, given, fragment):
    _, out = stopped
    with pytest.raises(ConfigError, match=fragment):
        resume_config(out, given)


# -- run directories ---------------------------------------------------------------------------------


def _claim(base: str) -> str:
    return str(claim_run_dir(base, unique=True).path)


def test_runs_started_at_the_same_moment_in_parallel_processes_get_directories_of_their_own(tmp_path):
    base = str(tmp_path / "runs" / "20261130-120000-seed-adam")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        claimed = pool.map(_claim, [base] * 8)
    assert len(set(claimed)) == 8, f"shared directories: {sorted(claimed)}"
    assert all((Path(path) / METRICS).exists() for path in claimed)


def test_a_generated_name_taken_between_the_look_and_the_check_moves_on(tmp_path, monkeypatch):
    import cnnx.training.rundir as rundir

    base = tmp_path / "20261130-120000-seed-adam"
    base.mkdir()  # empty: the look before the check finds it free
    check = rundir.check_run_dir

    def another_run_writes_first(path, **kwargs):
        if Path(path) == base:
            (base / METRICS).write_text("{}")  # the other run's record lands just now
        return check(path, **kwargs)

    monkeypatch.setattr(rundir, "check_run_dir", another_run_writes_first)
    assert claim_run_dir(base, unique=True).path == base.with_name(base.name + "-2")


def test_an_explicit_run_directory_that_another_run_claimed_is_refused(tmp_path):
    claim_run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match="is not empty"):
        claim_run_dir(tmp_path / "run")


# -- settings that would have no effect, and saying them as the user wrote them ---------------------------

# (settings, the message for a run file, the message for options)
NO_EFFECT = [
    ({"lr_gamma": 0.5}, 'lr_gamma has no effect without lr_schedule = "step"',
     "--lr-gamma has no effect without --lr-schedule step"),
    ({"lr_step_every": 10, "lr_schedule": "cosine"},
     'lr_step_every has no effect without lr_schedule = "step"',
     "--lr-step-every has no effect without --lr-schedule step"),
    ({"early_stopping": 2}, "early_stopping needs a validation split (validation = 0.1, say) to watch",
     "--early-stopping needs a validation split (--validation 0.1, say) to watch"),
    ({"data_dir": "d", "dataset": "digits"}, 'data_dir has no meaning for dataset = "digits"',
     "--data-dir has no meaning for --dataset digits"),
    ({"min_delta": 0.01}, "min_delta has no effect without validation (validation = 0.1, say)",
     "--min-delta has no effect without --validation (--validation 0.1, say)"),
]  # fmt: skip
# The same for the rules that need the run's length: 160 images in batches of 32 are 5 steps an epoch.
TOO_LONG = [
    ({"max_steps": 100, "epochs": 2},
     "max_steps 100 is more than 2 epochs of 5 steps hold (10): raise epochs to 20",
     "--max-steps 100 is more than 2 epochs of 5 steps hold (10): raise --epochs to 20"),
    ({"warmup_steps": 10, "epochs": 2}, "warmup_steps 10 is the whole run (10 steps)",
     "--warmup-steps 10 is the whole run (10 steps)"),
    ({"lr_schedule": "step", "lr_step_every": 8, "warmup_steps": 2, "epochs": 2},
     "lr_step_every 8 is past the end of the run (8 steps after the warm-up): the rate would never drop",
     "--lr-step-every 8 is past the end of the run (8 steps after the warm-up)"),
]  # fmt: skip


def as_options(values: dict) -> list[str]:
    return [word for key, value in values.items() for word in ("--" + key.replace("_", "-"), str(value))]


def as_toml(values: dict) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


@pytest.mark.parametrize("values, in_a_file, _", NO_EFFECT)
def test_a_setting_without_effect_is_refused_naming_it(values, in_a_file, _):
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_dict(values, source="run.toml")
    assert str(refused.value).startswith(f"run.toml: {in_a_file}"), str(refused.value)


@pytest.mark.parametrize("values, _, as_typed", NO_EFFECT + TOO_LONG)
def test_the_command_line_names_a_refused_setting_as_its_option(data_dir, tmp_path, values, _, as_typed):
    options = as_options(values) + ([] if "data_dir" in values else ["--data-dir", str(data_dir)])
    result = CliRunner().invoke(cli, ["train", "--model", "mlp", "--batch-size", "32", *options, "--out",
                                      str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 1 and result.output.startswith(f"cnnx: error: {as_typed}"), result.output
    assert not (tmp_path / "r").exists(), "a refused run left its directory behind"


@pytest.mark.parametrize("values, in_a_file, _", NO_EFFECT + TOO_LONG)
def test_a_run_file_names_a_refused_setting_as_its_key_after_the_file(
    data_dir, tmp_path, values, in_a_file, _
):
    path = write(tmp_path / "run.toml", 'model = "mlp"\nbatch_size = 32\n' + as_toml(values))
    more = [] if "data_dir" in values else ["--data-dir", str(data_dir)]
    result = CliRunner().invoke(cli, ["train", "--config", str(path), *more, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and result.output.startswith(f"cnnx: error: {path}: {in_a_file}"), (
        result.output
    )


def test_an_option_beside_a_run_file_is_named_as_the_option(tmp_path):
    path = write(tmp_path / "run.toml", 'model = "mlp"\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--early-stopping", "2"])
    assert result.output.startswith(
        "cnnx: error: --early-stopping needs a validation split (--validation 0.1"
    ), result.output


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_a_run_files_data_dir_without_data_names_the_file_and_key(tmp_path, dataset):
    path = write(tmp_path / "run.toml", f'dataset = "{dataset}"\ndata_dir = "nowhere"\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--out", str(tmp_path / "r")])
    expected = f"cnnx: error: {path}: data_dir '{tmp_path / 'nowhere'}' has no "
    assert result.exit_code == 1 and result.output.startswith(expected), result.output


def test_a_data_dir_option_without_data_is_named_as_the_option(tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]
    )
    assert result.output.startswith(f"cnnx: error: --data-dir {tmp_path / 'nowhere'} has no Fashion-MNIST"), (
        result.output
    )


def test_checkpoints_every_n_steps_need_a_run_directory():
    config = RunConfig(model="mlp", epochs=1, batch_size=32, checkpoint_every=2)
    with pytest.raises(ConfigError, match="checkpoint_every needs a run directory"):
        run_training(config, dataset=blob_dataset(), progress="none")


def test_the_step_schedule_drops_by_a_tenth_when_no_gamma_is_given():
    from cnnx.optim import Schedule

    config = RunConfig(lr_schedule="step", lr_step_every=10)
    schedule = Schedule.of("step", 1.0, step_every=config.lr_step_every, gamma=config.lr_gamma)
    assert [schedule.rate(step, 100) for step in (9, 10, 20)] == pytest.approx([1.0, 0.1, 0.01])


def test_an_old_record_of_the_default_gamma_without_the_step_schedule_still_resumes():
    from cnnx.training.resume import recorded_config

    # cnnx 0.3 recorded lr_gamma 0.1 and lr_step_every None for every run, whatever its schedule.
    old = {"model": "mlp", "lr_schedule": "constant", "lr_gamma": 0.1, "lr_step_every": None, "epochs": 2}
    config = recorded_config("model.npz", {"settings": old})
    assert (config.lr_gamma, config.lr_step_every, config.lr_schedule) == (None, None, "constant")


def test_a_preset_for_data_of_another_class_count_is_built_once(monkeypatch):
    import cnnx.optim
    import cnnx.training.run as run_module

    built = {"models": 0, "optimizers": 0}
    real_model, real_optimizer = run_module.build_model, cnnx.optim.make_optimizer

    def count(kind, real):
        def counted(*args, **kwargs):
            built[kind] += 1
            return real(*args, **kwargs)

        return counted

    monkeypatch.setattr(run_module, "build_model", count("models", real_model))
    monkeypatch.setattr(run_module, "make_optimizer", count("optimizers", real_optimizer))
    (train_x, train_y), (test_x, test_y) = blobs(60, seed=1), blobs(30, seed=2)
    three = Dataset(train_x, train_y % 3, test_x, test_y % 3, source="three classes of blobs")
    run = run_training(RunConfig(model="mlp", epochs=1, batch_size=20), dataset=three, progress="none")
    assert run.model.output_shapes()[-1] == (3,), f"the preset gives {run.model.output_shapes()[-1]}"
    assert built == {"models": 1, "optimizers": 1}, f"built {built}"
