"""ONNX in and out (cnnx.interop): every preset and a nested residual model export, pass onnx.checker
and give onnxruntime's logits (an implementation no test here wrote) within 1e-5 of cnnx's, at batch
sizes 1 and 256 and on 1,000 real test images; the round trip cnnx -> ONNX -> cnnx gives identical
logits and weights; a graph from PyTorch's own exporter imports; and each hostile file is one line."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import cnnx
from cnnx.cli import cli
from cnnx.data import SYSTEM_DIR, find_dataset, load_fashion_mnist
from cnnx.errors import CheckpointError, ConfigError
from cnnx.interop import from_onnx, to_onnx
from cnnx.interop.onnx_export import EXPORTERS, register_onnx

from helpers import INTEROP_CASES, train_blob_run
from helpers import interop_model as _model

# onnxruntime adds in its own order (its convolutions and GEMMs block differently from OpenBLAS's), so
# float32 logits differ in the last bits: measured up to 1.1e-6 of the largest logit.
RELATIVE = 1e-5
CASES = INTEROP_CASES


def _session(data: bytes):
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_gives_cnnx_logits_at_batch_sizes_1_and_256(case):
    model = _model(case)
    data = to_onnx(model)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # the batch size is open
    session = _session(data)
    for n in (1, 256):
        x = np.random.default_rng(n).random((n, *model.input_shape), dtype=np.float32)
        ours, theirs = model(x), session.run(["logits"], {"pixels": x})[0]
        assert theirs.shape == ours.shape == (n, 10)
        assert _relative(theirs, ours) < RELATIVE, (case, n, _relative(theirs, ours))
        assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))


@pytest.mark.skipif(
    find_dataset(SYSTEM_DIR) is None, reason=f"Fashion-MNIST is not installed at {SYSTEM_DIR}"
)
@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_agrees_on_1000_real_test_images(case, real_test_images):
    model = _model(case)
    x = cnnx.data.scale_pixels(real_test_images).reshape(len(real_test_images), *model.input_shape)
    ours, theirs = model(x), _session(to_onnx(model)).run(["logits"], {"pixels": x})[0]
    assert _relative(theirs, ours) < RELATIVE
    assert np.array_equal(theirs.argmax(axis=1), ours.argmax(axis=1))


@pytest.fixture(scope="module")
def real_test_images():
    return load_fashion_mnist(SYSTEM_DIR, download=False, quiet=True).test_images[:1000]


@pytest.mark.parametrize("case", CASES)
def test_the_round_trip_gives_identical_logits_and_weights(case, tmp_path):
    model = _model(case)
    path = to_onnx(model, tmp_path / "m.onnx")
    back = from_onnx(path)
    x = np.random.default_rng(0).random((16, *model.input_shape), dtype=np.float32)
    assert np.array_equal(back(x), model(x))
    ours, theirs = model.state_dict(), back.state_dict()
    weights = [k for k in ours if not isinstance(ours[k], dict)]
    assert all(np.array_equal(ours[k], theirs[k]) for k in weights if k in theirs)
    assert sorted(k for k in weights) == sorted(k for k in theirs if not isinstance(theirs[k], dict))
    assert back.input_shape == model.input_shape and back.output_shapes()[-1] == (10,)


def test_the_graph_names_its_input_scaling_and_class_names(tmp_path):
    model = _model("seed")
    model.data_info = cnnx.nn.datainfo.DataInfo("fashion-mnist", cnnx.data.CLASS_NAMES)
    proto = onnx.load_from_string(to_onnx(model))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["cnnx.scaling"] == "pixels/255" and "[0, 1]" in props["cnnx.input"]
    assert props["cnnx.classes"].startswith('["T-shirt/top", "Trouser"')
    assert proto.producer_name == "cnnx" and proto.opset_import[0].version == 17
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    assert from_onnx(path).data_info.classes == cnnx.data.CLASS_NAMES


def test_float64_models_export_as_float32():
    model = _model("mlp", dtype="float64")
    x = np.random.default_rng(2).random((8, 1, 28, 28))
    theirs = _session(to_onnx(model)).run(["logits"], {"pixels": x.astype(np.float32)})[0]
    assert _relative(theirs, model(x)) < RELATIVE  # float32 weights and pixels against float64


def test_a_layer_without_a_mapping_is_one_line(user_layer_module):
    module = user_layer_module("LeakyNoOnnx")
    model = cnnx.build_model([cnnx.layer("Flatten"), cnnx.layer("Dense", in_features=784, out_features=10),
                              cnnx.layer(module.LeakyNoOnnx.layer_type)])  # fmt: skip
    with pytest.raises(ConfigError, match=r"^no ONNX mapping for a LeakyNoOnnx layer: register one with"):
        to_onnx(model)


def test_a_user_registers_a_mapping_beside_the_layer(user_layer_module, tmp_path):
    module = user_layer_module("LeakyOnnx")

    @register_onnx("LeakyOnnx")
    def _leaky(graph, layer, x, shape):
        return graph.node("LeakyRelu", [x], alpha=layer.slope)

    try:
        dense = cnnx.layer("Dense", in_features=784, out_features=10)
        model = cnnx.build_model([cnnx.layer("Flatten"), dense, cnnx.layer("LeakyOnnx", slope=0.2)], seed=0)
        assert isinstance(model.layers[-1], module.LeakyOnnx)
        x = np.random.default_rng(1).random((32, 1, 28, 28), dtype=np.float32)
        data = to_onnx(model)
        assert _relative(_session(data).run(["logits"], {"pixels": x})[0], model(x)) < RELATIVE
        path = tmp_path / "leaky.onnx"
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=r"unsupported ONNX operation 'LeakyRelu'"):
            from_onnx(path)  # the importer reads only cnnx's own operations
    finally:
        EXPORTERS.pop("LeakyOnnx")


def test_a_graph_from_pytorchs_exporter_imports_and_gives_its_logits(tmp_path):
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(x + self.norm(self.conv(x)))

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), Block(),
                                 torch.nn.MaxPool2d(2), torch.nn.Dropout(0.3), torch.nn.Flatten(),
                                 torch.nn.Linear(8 * 14 * 14, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 10))  # fmt: skip
    for norm in (module[2].norm, module[7]):
        norm.running_mean.uniform_(-0.3, 0.3)
        norm.running_var.uniform_(0.5, 2.0)
    module.eval()
    x = torch.rand(5, 1, 28, 28)
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        names = {"input_names": ["pixels"], "output_names": ["logits"]}
        batch = {"pixels": {0: "N"}, "logits": {0: "N"}}
        torch.onnx.export(module, (x,), str(path), dynamo=False, dynamic_axes=batch, **names)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Conv", "Add", "Gemm", "MaxPool"} <= ops
    model = from_onnx(path)
    with torch.no_grad():
        expected = module(x).numpy()
    assert _relative(model(x.numpy()), expected) < RELATIVE


# ---------------------------------------------------------------- hostile files


def _write(proto, path):
    path.write_bytes(proto.SerializeToString())
    return path


def _graph(nodes, initializers, inputs=None, output="logits"):
    inputs = inputs or [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 784])]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 10])]
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _huge_claim(tmp_path):
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 19, 1 << 10], raw_data=b"\0" * 16)
    return _write(
        _graph([helper.make_node("MatMul", ["pixels", "W"], ["logits"])], [tensor]), tmp_path / "h.onnx"
    )


def _outside(tmp_path):
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[784, 10],
                         data_location=TensorProto.EXTERNAL)  # fmt: skip
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", str(784 * 40))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return _write(
        _graph([helper.make_node("MatMul", ["pixels", "W"], ["logits"])], [tensor]), tmp_path / "e.onnx"
    )


def _unknown_op(tmp_path):
    proto = onnx.load_from_string(to_onnx(_model("seed")))
    next(node for node in proto.graph.node if node.op_type == "Relu").op_type = "Elu"
    return _write(proto, tmp_path / "u.onnx")


def _cycle(tmp_path):
    w = onnx.numpy_helper.from_array(np.zeros((784, 10), np.float32), "W")
    nodes = [helper.make_node("Add", ["pixels", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "W"], ["logits"])]  # fmt: skip
    return _write(_graph(nodes, [w]), tmp_path / "c.onnx")


def _truncated(tmp_path):
    data = to_onnx(_model("seed"))
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def _lying_gru(tmp_path):
    proto = onnx.load_from_string(to_onnx(_model("gru")))
    gru = next(node for node in proto.graph.node if node.op_type == "GRU")
    next(a for a in gru.attribute if a.name == "hidden_size").i = 64  # its W, R and B say 128
    return _write(proto, tmp_path / "g.onnx")


HOSTILE = {
    "a 2 GB tensor claim": (_huge_claim, r"tensor 'W' claims 536,870,912 values \(2,147,483,648 bytes\)"),
    "external data outside its folder": (
        _outside,
        r"its data at '../../etc/passwd', outside the model's folder",
    ),
    "an unknown operation": (
        _unknown_op,
        r"unsupported ONNX operation 'Elu' \(node 'Relu_\d+'\); cnnx reads",
    ),
    "a cycle": (_cycle, r"the graph has a cycle through node"),
    "a truncated file": (_truncated, r"not an ONNX file \(truncated or corrupt\)"),
    "a GRU whose weight shapes lie": (
        _lying_gru,
        r"\(GRU\): W has shape \(1, 384, 28\) where hidden_size 64 and inputs of 28 need \(1, 192, 28\)",
    ),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_onnx_file_is_one_line(what, tmp_path):
    make, message = HOSTILE[what]
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        from_onnx(path)
    done = CliRunner().invoke(cli, ["import", str(path), "-o", str(tmp_path / "out.npz")])
    assert done.exit_code == 1, done.output
    assert done.output.startswith("cnnx: error: ") and done.output.count("\n") == 1, done.output
    assert "Traceback" not in done.output and not (tmp_path / "out.npz").exists()


def test_external_data_inside_its_folder_is_read(tmp_path):
    model = _model("mlp")
    proto = onnx.load_from_string(to_onnx(model))
    onnx.save_model(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
                    size_threshold=1024)  # fmt: skip
    assert (tmp_path / "m.data").stat().st_size > 400_000
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(from_onnx(tmp_path / "m.onnx")(x), model(x))


# ---------------------------------------------------------------- the commands


def test_cnnx_export_and_import_on_a_trained_run(tmp_path):
    run, data = train_blob_run(tmp_path, model="cnn-bn", train=200, test=50)
    runner = CliRunner()
    done = runner.invoke(cli, ["export", str(run)])
    assert done.exit_code == 0 and "as ONNX: " in done.output, done.output
    back = tmp_path / "back.npz"
    done = runner.invoke(cli, ["import", str(run / "model.onnx"), "-o", str(back)])
    assert done.exit_code == 0 and "15 layers" in done.output, done.output
    first = runner.invoke(cli, ["evaluate", str(run), "--data-dir", str(data)])
    second = runner.invoke(cli, ["evaluate", str(back), "--data-dir", str(data)])
    assert first.exit_code == second.exit_code == 0
    assert first.output.splitlines()[1] == second.output.splitlines()[1]  # "accuracy ... loss ..."
    done = runner.invoke(cli, ["export", str(tmp_path / "nowhere")])
    assert done.exit_code != 0 and "Traceback" not in done.output


def test_cnnx_info_says_whether_onnx_is_usable():
    done = CliRunner().invoke(cli, ["info"])
    assert done.exit_code == 0
    assert f"onnx (cnnx export, cnnx import):\n  usable, onnx {onnx.__version__}" in done.output


def test_damaged_files_are_refused_in_one_line_or_read_whole(tmp_path):
    """Bytes changed at random in small graphs (where the graph, not the weights, is most of the file):
    each file is either read into a model or refused with a one-line CnnxError, never another error.
    9,000 such files found three unguarded paths before they were closed; 600 keep them closed."""
    from cnnx import layer
    from cnnx.errors import CnnxError

    conv = [layer("Conv2D", in_channels=1, out_channels=2, kernel_size=3, padding="same"),
            layer("BatchNorm2D", num_features=2), layer("ReLU"),
            layer("Residual", body=layer("Conv2D", in_channels=2, out_channels=2, kernel_size=3, padding=1)),
            layer("MaxPool2D", kernel_size=2), layer("Dropout", p=0.2), layer("GlobalAvgPool2D"),
            layer("Dense", in_features=2, out_features=3)]  # fmt: skip
    gru = [layer("GRU", input_size=4, hidden_size=2), layer("Dense", in_features=2, out_features=3)]
    models = [cnnx.build_model(conv, input_shape=(1, 6, 6)), cnnx.build_model(gru, input_shape=(1, 3, 4))]
    rng, path, refused = np.random.default_rng(1), tmp_path / "damaged.onnx", 0
    for model in models:
        data = to_onnx(model)
        for _ in range(300):
            damaged = bytearray(data)
            for _ in range(rng.integers(1, 4)):
                damaged[rng.integers(0, len(damaged))] = rng.integers(0, 256)
            path.write_bytes(bytes(damaged))
            try:
                from_onnx(path)
            except CnnxError as exc:
                refused += 1
                assert "\n" not in str(exc)
    assert refused > 100  # the damage is real: most files are refused
