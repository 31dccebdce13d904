"""The user's own layers on the command line: ``--import``, ``CNNX_IMPORT`` and ``cnnx.layers`` entry
points let ``train``, ``evaluate`` and ``predict`` know a type registered in the user's file; without
them the safe loader refuses it in one line, and a model file never causes an import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.errors import ConfigError
from cnnx.nn.registry import unregister_layer
from cnnx.plugins import import_module_or_file, load_target, load_user_layers

from helpers import leaky_relu_source, write_blob_idx

LEAKY = leaky_relu_source()

ARCHITECTURE = [  # the layers of the model, as a run file spells them: {type, config}
    ("Conv2D", {"in_channels": 1, "out_channels": 4, "kernel_size": 3}),
    ("LeakyReLU", {"slope": 0.05}),
    ("MaxPool2D", {"kernel_size": 2}),
    ("Flatten", {}),
    ("Dense", {"in_features": 676, "out_features": 10}),
]


def _run(*args, env=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CNNX_IMPORT"} | (env or {})
    return subprocess.run([sys.executable, "-m", "cnnx", *args], capture_output=True, text=True,
                          env=environment, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of a model with the user's LeakyReLU, trained by ``cnnx train --import leaky.py``."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "leaky.py").write_text(LEAKY)
    (root / "data").mkdir()
    data = write_blob_idx(root / "data")
    layers = "".join(
        f"[[model]]\ntype = {json.dumps(kind)}\n[model.config]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())
        for kind, config in ARCHITECTURE
    )
    (root / "run.toml").write_text(
        f"epochs = 1\nbatch_size = 32\ndata_dir = {json.dumps(str(data))}\n{layers}"
    )
    done = _run("train", "--import", str(root / "leaky.py"), "--config", str(root / "run.toml"), "--out",
                str(root / "run"), "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def test_evaluate_and_predict_know_the_users_layer_given_import(trained):
    leaky, run = str(trained / "leaky.py"), str(trained / "run")
    evaluated = _run("evaluate", run, "--import", leaky, "--data-dir", str(trained / "data"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "accuracy" in evaluated.stdout
    images = trained / "data" / "t10k-images-idx3-ubyte.gz"
    predicted = _run("predict", run, str(images), "--import", leaky, "--format", "json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 40


def test_without_import_the_type_is_refused_in_one_line(trained):
    done = _run("evaluate", str(trained / "run"), "--data-dir", str(trained / "data"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown type 'LeakyReLU'" in lines[0], done.stderr


def test_the_environment_variable_imports_too(trained):
    done = _run("evaluate", str(trained / "run"), "--data-dir", str(trained / "data"),
                env={"CNNX_IMPORT": f"{os.pathsep}{trained / 'leaky.py'}"})  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_an_installed_packages_entry_point_is_loaded(trained, tmp_path):
    # A distribution on sys.path whose metadata declares a cnnx.layers entry point.
    package = tmp_path / "site"
    (package / "leaky_layers").mkdir(parents=True)
    (package / "leaky_layers" / "__init__.py").write_text(LEAKY)
    info = package / "leaky_layers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: leaky-layers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cnnx.layers]\nleaky = leaky_layers\n")
    path = os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])
    done = _run(
        "evaluate", str(trained / "run"), "--data-dir", str(trained / "data"), env={"PYTHONPATH": path}
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no/such/file.py", "cannot import no/such/file.py: no such file"),
        ("no_such_module_anywhere", "cannot import no_such_module_anywhere: No module named"),
        ("{bad}", "importing {bad} failed: SyntaxError"),
    ],
)
def test_what_cannot_be_imported_is_one_line(tmp_path, monkeypatch, spec, message):
    if spec == "{bad}":
        (tmp_path / "bad.py").write_text("def (:\n")
        spec = message_spec = str(tmp_path / "bad.py")
        message = f"importing {message_spec} failed: SyntaxError"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        import_module_or_file(spec)
    done = CliRunner().invoke(cli, ["evaluate", "x", "--import", spec])
    assert done.exit_code == 1 and done.output.startswith("cnnx: error: ") and message in done.output


def test_a_model_file_never_imports(trained):
    # This process never imported leaky.py: the run's model file names LeakyReLU, and loading it must
    # refuse the type rather than look for code anywhere.
    from cnnx.errors import CheckpointError
    from cnnx.io import load_model

    before = set(sys.modules)
    with pytest.raises(CheckpointError, match="unknown type 'LeakyReLU'"):
        load_model(trained / "run" / "model.npz")
    assert not [name for name in set(sys.modules) - before if "leaky" in name.lower()]


def test_load_target_finds_a_class_in_a_file(tmp_path):
    (tmp_path / "mine.py").write_text(leaky_relu_source("LeakyReLU2"))
    try:
        _load_and_check(tmp_path)
    finally:  # the type this test registered does not outlive it
        unregister_layer("LeakyReLU2")


def _load_and_check(tmp_path) -> None:
    cls = load_target(f"{tmp_path / 'mine.py'}:LeakyReLU2")
    layer = cls(0.2, dtype="float64")
    y, _ = layer.forward(np.array([[-1.0, 2.0]]))
    assert np.allclose(y, [[-0.2, 2.0]])
    with pytest.raises(ConfigError, match="has no Missing"):
        load_target(f"{tmp_path / 'mine.py'}:Missing")
    with pytest.raises(ConfigError, match="is not MODULE:NAME"):
        load_target("nothing-here")
    assert load_user_layers([str(tmp_path / "mine.py")])[-1] == str(tmp_path / "mine.py")
