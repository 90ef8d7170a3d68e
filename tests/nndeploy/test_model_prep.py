"""Model preparation: loading errors, input binding, topological sort, constant folding, node naming and
static shapes, checked against onnxruntime on the model-zoo architectures and tiny models."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nndeploy.errors import ModelError
from nndeploy.model_prep import (
    bind_input_shapes,
    file_sha256,
    load_model,
    prepare_model,
    real_inputs,
)

from models import (
    LIGHT_MODELS,
    chain_model,
    conv_model,
    dynamic_batch_model,
    light_model_path,
    opset_ops_model,
    random_inputs,
    skip_model,
    unnamed_nodes_model,
)

SLOW_LIGHT = {"vgg19"}  # > 5 s here; the other big ones take ~1 s


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` under onnxruntime's CPU provider."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    """Max abs difference within 1e-5 of each output's scale."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        scale = max(1.0, float(np.abs(x).max(initial=0.0)))
        assert float(np.abs(x.astype(np.float64) - y).max(initial=0.0)) <= 1e-5 * scale


def static_shape_of_every_activation(model: onnx.ModelProto) -> None:
    """Every graph input and node output has a full static shape declared."""
    declared = {vi.name: vi for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    for name in [vi.name for vi in model.graph.input] + [o for n in model.graph.node for o in n.output if o]:
        assert name in declared, f"no type for {name}"
        shape = declared[name].type.tensor_type.shape
        assert declared[name].type.tensor_type.HasField("shape"), name
        assert all(d.HasField("dim_value") for d in shape.dim), f"{name} is not static"


def expose_softmax_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` with the input of its last Softmax as an extra output (the logits differ between
    classes, unlike the near-uniform probabilities of a model with constant weights)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    softmax = [n for n in out.graph.node if n.op_type == "Softmax"]
    if softmax:
        out.graph.output.append(helper.make_empty_tensor_value_info(softmax[-1].input[0]))
        out.graph.output[-1].type.tensor_type.elem_type = TensorProto.FLOAT
    return out


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LIGHT else n for n in LIGHT_MODELS]
)
def test_light_models_fold_weights_and_match_onnxruntime(name: str) -> None:
    original = expose_softmax_input(load_model(light_model_path(name)))
    prepared = prepare_model(original)
    inits = {t.name for t in prepared.graph.initializer}
    inputs = [vi.name for vi in prepared.graph.input]
    assert len(inputs) == 1 and inputs[0].endswith("data_0")
    assert not inits & set(inputs)
    assert not [n for n in prepared.graph.node if n.op_type in ("ConstantOfShape", "Constant")]
    conv_weights = [n.input[1] for n in prepared.graph.node if n.op_type == "Conv"]
    assert conv_weights and all(w in inits for w in conv_weights)
    used = {i for n in prepared.graph.node for i in n.input}
    assert inits <= used
    names = [n.name for n in prepared.graph.node]
    assert all(names) and len(set(names)) == len(names)
    static_shape_of_every_activation(prepared)
    onnx.checker.check_model(prepared)
    feeds = random_inputs(original)
    assert_same_outputs(run_ort(original, feeds), run_ort(prepared, feeds))


def test_resnet50_keeps_only_its_data_input() -> None:
    prepared = prepare_model(load_model(light_model_path("resnet50")))
    assert [vi.name for vi in prepared.graph.input] == ["gpu_0/data_0"]
    assert len(prepared.graph.initializer) > 200


def test_bind_batch_on_dynamic_model() -> None:
    bound = bind_input_shapes(dynamic_batch_model(), None, 3)
    dims = [d.dim_value for d in bound.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 4]
    prepared = prepare_model(dynamic_batch_model(), batch=3)
    assert [d.dim_value for d in prepared.graph.output[0].type.tensor_type.shape.dim] == [3, 3]
    feeds = {"x": np.ones((3, 4), np.float32)}
    assert_same_outputs(run_ort(dynamic_batch_model(), feeds), run_ort(prepared, feeds))


def test_batch_overrides_a_fixed_first_dim_and_input_shapes_win() -> None:
    conv = bind_input_shapes(conv_model(), None, 2)
    assert [d.dim_value for d in conv.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 16, 16]
    both = bind_input_shapes(dynamic_batch_model(), {"x": [5, 4]}, 3)
    assert [d.dim_value for d in both.graph.input[0].type.tensor_type.shape.dim] == [5, 4]


def test_missing_input_shape_error_says_what_to_pass() -> None:
    with pytest.raises(ModelError) as err:
        prepare_model(dynamic_batch_model(), name="model.onnx")
    assert str(err.value) == (
        "model.onnx: input 'x' has dynamic dims ['N']; "
        "pass --input-shape x=<N>x4 (or --batch N for the first dim)"
    )


def test_unknown_input_name_lists_the_real_inputs() -> None:
    with pytest.raises(ModelError, match=r"no input named 'y'; the model's inputs are: 'x' \[N, 4\]"):
        bind_input_shapes(dynamic_batch_model(), {"y": [1, 4]}, None)


def test_rank_mismatch_and_bad_dims_are_errors() -> None:
    with pytest.raises(ModelError, match="rank 2"):
        bind_input_shapes(dynamic_batch_model(), {"x": [1, 4, 1]}, None)
    with pytest.raises(ModelError, match="negative"):
        bind_input_shapes(dynamic_batch_model(), {"x": [-1, 4]}, None)
    empty = bind_input_shapes(dynamic_batch_model(), {"x": [0, 4]}, None)  # an empty tensor is allowed
    assert [d.dim_value for d in empty.graph.input[0].type.tensor_type.shape.dim] == [0, 4]


@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13, 17, 18, 21])
def test_opset_forms_fold_and_match_onnxruntime(opset: int) -> None:
    model = opset_ops_model(opset)
    prepared = prepare_model(model)
    ops = [n.op_type for n in prepared.graph.node]
    assert "Shape" not in ops and "Constant" not in ops and "Gather" not in ops
    assert ops.count("Concat") == 1  # the activation Concat stays; the shape Concat is folded
    static_shape_of_every_activation(prepared)
    feeds = random_inputs(model)
    assert_same_outputs(run_ort(model, feeds), run_ort(prepared, feeds))


def test_version_converted_model_prepares() -> None:
    converted = onnx.version_converter.convert_version(conv_model(), 21)
    prepared = prepare_model(converted)
    assert prepared.opset_import[0].version == 21
    feeds = random_inputs(converted)
    assert_same_outputs(run_ort(converted, feeds), run_ort(prepared, feeds))


def test_unsorted_nodes_are_sorted_and_a_cycle_is_an_error(tmp_path: Path) -> None:
    model = skip_model()
    nodes = list(model.graph.node)
    random.Random(3).shuffle(nodes)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    path = tmp_path / "shuffled.onnx"
    onnx.save(model, path)
    prepared = prepare_model(load_model(path))
    assert [n.name for n in prepared.graph.node] == [n.name for n in skip_model().graph.node]
    feeds = random_inputs(model)
    assert_same_outputs(run_ort(skip_model(), feeds), run_ort(prepared, feeds))

    cyclic = helper.make_graph(
        [
            helper.make_node("Add", ["x", "t2"], ["t1"], name="a"),
            helper.make_node("Relu", ["t1"], ["t2"], name="b"),
            helper.make_node("Relu", ["t1"], ["y"], name="c"),
        ],
        "cyclic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    cyclic_model = helper.make_model(cyclic, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(cyclic_model, tmp_path / "cyclic.onnx")
    with pytest.raises(ModelError, match="cycle"):
        load_model(tmp_path / "cyclic.onnx")
    with pytest.raises(ModelError, match="cycle"):
        prepare_model(cyclic_model)


def test_unnamed_and_duplicate_names_become_unique_and_stable() -> None:
    prepared = prepare_model(unnamed_nodes_model())
    assert [n.name for n in prepared.graph.node] == ["MatMul_0", "Relu_1", "Mul_2", "Relu_3", "MatMul_4"]
    model = chain_model()
    model.graph.node[1].name = "mm1"  # a duplicate of node 0's name: renamed
    model.graph.node[2].name = "MatMul_3"  # takes the name node 3 would be given
    model.graph.node[3].name = ""
    names = [n.name for n in prepare_model(model).graph.node]
    assert names == ["mm1", "Add_1", "MatMul_3", "MatMul_3_1", "add2", "relu2"]
    assert names == [n.name for n in prepare_model(model).graph.node]


def test_constant_subgraphs_fold_but_random_ops_stay() -> None:
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["w"],
            name="w",
            value=numpy_helper.from_array(np.array([0.5], np.float32)),
        ),
        helper.make_node("Transpose", ["w"], ["wt"], name="wt", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["h"], name="mm"),
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[1, 3], seed=1.0),
        helper.make_node("Mul", ["noise", "zero"], ["z"], name="zero_noise"),
        helper.make_node("Add", ["h", "z"], ["y"], name="add"),
    ]
    inits = [
        numpy_helper.from_array(np.array([3, 4], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((1, 3), np.float32), "zero"),
        numpy_helper.from_array(np.ones(7, np.float32), "unused"),
    ]
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    prepared = prepare_model(model)
    assert [n.name for n in prepared.graph.node] == ["mm", "noise", "zero_noise", "add"]
    weights = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    assert set(weights) == {"wt", "zero"}
    assert weights["wt"].shape == (4, 3) and np.all(weights["wt"] == 0.5)
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}
    assert_same_outputs(run_ort(model, feeds), run_ort(prepared, feeds))


def test_prepare_is_deterministic_and_leaves_its_input_alone() -> None:
    model = load_model(light_model_path("squeezenet"))
    before = model.SerializeToString()
    a = prepare_model(model).SerializeToString()
    b = prepare_model(model).SerializeToString()
    assert a == b
    assert model.SerializeToString() == before


def test_external_data_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    onnx.save(
        conv_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="conv.data",
        size_threshold=0,
    )
    assert path.stat().st_size < 4000 and (tmp_path / "conv.data").exists()
    model = load_model(path)
    weight = next(t for t in model.graph.initializer if t.name == "fw")
    assert numpy_helper.to_array(weight).shape == (10, 512)
    prepared = prepare_model(model)
    feeds = random_inputs(conv_model())
    assert_same_outputs(run_ort(conv_model(), feeds), run_ort(prepared, feeds))
    (tmp_path / "conv.data").unlink()
    with pytest.raises(ModelError, match=r"external data file 'conv.data'.* is missing"):
        load_model(path)


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "model.onnx")
    assert str(err.value) == f"{tmp_path / 'model.onnx'}: no such file"
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(text)
    broken = chain_model()
    broken.graph.node[1].input[0] = "does_not_exist"
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="no node, initializer or graph input provides") as err:
        load_model(tmp_path / "broken.onnx")
    assert "\n" not in str(err.value) and "broken.onnx" in str(err.value)
    assert "'does_not_exist'" in str(err.value)


def test_old_ir_weights_listed_as_inputs_are_not_real_inputs() -> None:
    model = load_model(light_model_path("squeezenet"))
    assert len(model.graph.input) > 1
    assert [vi.name for vi in real_inputs(model)] == ["data_0"]


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
