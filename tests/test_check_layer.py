"""``cnnx check-layer`` and :func:`cnnx.layercheck.check_layer`: every built-in layer passes every check,
a user's layer with a backward that misses a term fails the finite differences (and the command exits
non-zero), each form of TARGET works, and a bad target or config is one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cnnx.cli import cli
from cnnx.errors import ConfigError
from cnnx.layercheck import EXAMPLES, check_layer
from cnnx.nn.registry import REGISTRY, unregister_layer

from helpers import leaky_relu_source

BUILT_IN = sorted(name for name, spec in REGISTRY.items() if spec.cls.__module__.startswith("cnnx."))

# A user's leaky ReLU (helpers.leaky_relu_source), in their own file. With the bug it forgets the slope
# on the negative side of its backward (dy there should be slope * dy): the forward is right, the
# gradient is not.
EXAMPLE = """
    @classmethod
    def example(cls):
        return {"slope": 0.2}, (3, 4)
"""


@pytest.fixture
def user_layer(tmp_path):
    """Write a user's layer file; returns write(name, bug=False, example=True) -> the file's path. The
    types it registers are forgotten after the test."""
    names = []

    def write(name, bug=False, example=True):
        path = tmp_path / f"{name.lower()}.py"
        negative = "0 * dy" if bug else "self.slope * dy"
        path.write_text(leaky_relu_source(name, negative, EXAMPLE if example else ""))
        names.append(name)
        return path

    yield write
    for name in names:
        unregister_layer(name)


def rows_of(report) -> dict[str, str]:
    return {row.check: row.result for row in report.rows}


def test_every_built_in_layer_type_has_an_example():
    assert sorted(EXAMPLES) == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_layer_passes_every_check(name):
    report = check_layer(name)
    failures = [f"{row.check}: {row.error} ({row.note})" for row in report.rows if row.result == "fail"]
    assert report.ok and not failures, f"{name}: {failures}"
    results = rows_of(report)
    assert "gradient of the input (finite differences)" in results
    parameters = len(list(report.subject.build().named_parameters()))  # a container's are its children's
    assert sum(check.startswith("gradient of") for check in results) == 1 + parameters, results
    gpu = results.pop("cpu vs gpu (float64)")
    assert gpu in ("pass", "not run")
    assert set(results.values()) == {"pass"}, results


def test_a_backward_that_misses_a_term_fails_the_finite_differences_and_the_command(user_layer):
    path = user_layer("ForgetfulLeaky", bug=True)
    report = check_layer(f"{path}:ForgetfulLeaky")
    by_check = {row.check: row for row in report.rows}
    wrong = by_check["gradient of the input (finite differences)"]
    assert wrong.result == "fail" and wrong.error > 1e-2, wrong
    assert not report.ok
    assert by_check["save and load (model file)"].result == "pass"  # only the gradient is wrong
    done = CliRunner().invoke(cli, ["check-layer", f"{path}:ForgetfulLeaky"])
    assert done.exit_code == 1, done.output
    line = next(line for line in done.output.splitlines() if line.startswith("gradient of the input"))
    assert " fail " in line and "< 1e-06" in line, line


def test_a_correct_user_layer_passes_from_its_file_its_module_and_its_type_name(user_layer, monkeypatch):
    path = user_layer("KindLeaky")
    monkeypatch.syspath_prepend(str(path.parent))
    runner = CliRunner()
    for args in ([f"{path}:KindLeaky"], ["kindleaky:KindLeaky"], ["KindLeaky", "--import", str(path)]):
        done = runner.invoke(cli, ["check-layer", *args])
        assert done.exit_code == 0, (args, done.output)
        assert "KindLeaky on inputs of 3x4: " in done.output and " 0 failed" in done.output, done.output


def test_a_type_name_and_a_module_target_check_a_built_in_layer_with_options():
    config = '{"in_features": 6, "out_features": 2}'
    for target in ("Dense", "cnnx.layers:Dense"):
        done = CliRunner().invoke(cli, ["check-layer", target, "--config", config, "--input-shape", "6"])
        assert done.exit_code == 0, done.output
        assert "Dense on inputs of 6: " in done.output
        assert "gradient of W (finite differences)" in done.output


def test_a_user_layer_without_an_example_needs_the_options(user_layer):
    path = user_layer("PlainLeaky", example=False)
    with pytest.raises(ConfigError, match=r"has no example\(\): give --input-shape SHAPE$"):
        check_layer(f"{path}:PlainLeaky")  # every argument has a default: only the shape is missing
    report = check_layer(f"{path}:PlainLeaky", config={"slope": 0.3}, input_shape="2,3")
    assert report.ok and report.subject.input_shape == (2, 3)
    defaults = check_layer(f"{path}:PlainLeaky", input_shape="4")
    assert defaults.ok and defaults.subject.config == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["NoSuchLayer"], "unknown layer type 'NoSuchLayer'"),
        (["no_such_module_here:Dense"], "cannot import no_such_module_here"),
        (["cnnx.layers:NoSuch"], "cnnx.layers has no NoSuch"),
        (["cnnx.layers:Layer"], "is not a registered layer"),
        (["cnnx.errors:ConfigError"], "is not a layer class"),
        (["Dense", "--config", "{oops"], "--config for Dense is not JSON"),
        (["Dense", "--config", "[1]"], "must be a JSON object"),
        (["Dense", "--config", '{"in_features": 6}'], "missing key 'out_features'"),
        (["Dense", "--input-shape", "3,x"], "--input-shape must be sizes"),
        (["Dense", "--input-shape", "7"], "does not fit together"),
    ],
)
def test_a_bad_target_or_config_is_one_line(args, message):
    done = CliRunner().invoke(cli, ["check-layer", *args])
    assert done.exit_code == 1, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnx: error: ") and message in lines[0], lines


def test_the_table_has_a_row_per_check_and_a_gpu_row_that_says_why_it_did_not_run():
    from cnnx.backends import available_backends

    table = check_layer("Dropout").table().splitlines()
    assert table[0].split() == ["check", "result", "error", "bound"]
    gpu = next(line for line in table if line.startswith("cpu vs gpu"))
    problem = available_backends()["gpu"]
    if problem is None:
        assert " pass " in gpu, gpu
    else:
        assert " not run " in gpu and problem in gpu, gpu
    assert any(line.startswith("streams: restored state resumes") and "1 stream" in line for line in table)
    assert table[-1].startswith("Dropout on inputs of 3x4x5: ")
