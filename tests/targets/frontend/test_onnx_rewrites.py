"""ONNX rewrites applied before TVM import: each keeps onnxruntime's answer."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nndeploy.oracle import run_model
from nndeploy.targets.frontend.rewrites import fold_batch_norms

from models import conv_model, light_model_path, random_inputs


def conv_bn(with_bias: bool, shared_weight: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"))
    for name, values in (
        ("scale", rng.uniform(0.5, 2, 8)),
        ("shift", rng.standard_normal(8)),
        ("mean", rng.standard_normal(8)),
        ("var", rng.uniform(0.1, 3, 8)),
    ):
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
    conv_inputs = ["x", "w", "b"] if with_bias else ["x", "w"]
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])]
    if shared_weight:  # a second Conv reads the same weight and must keep the original
        nodes.append(helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1], name="other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 6, 6]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def assert_same_answers(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    onnx.checker.check_model(after, full_check=True)
    inputs = random_inputs(before)
    expected, got = run_model(before, inputs), run_model(after, inputs)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_conv_then_batch_norm_becomes_one_conv() -> None:
    for with_bias in (True, False):
        model = conv_bn(with_bias)
        folded = fold_batch_norms(model)
        assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
        assert {i.name for i in folded.graph.initializer}.isdisjoint({"scale", "shift", "mean", "var"})
        assert_same_answers(model, folded)
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu"]  # not modified


def test_a_shared_weight_is_left_for_its_other_reader() -> None:
    model = conv_bn(True, shared_weight=True)
    folded = fold_batch_norms(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv"]
    assert "w" in {i.name for i in folded.graph.initializer}
    assert_same_answers(model, folded)


def test_unfoldable_patterns_are_untouched() -> None:
    model = conv_model()  # the test suite's Conv -> BatchNormalization -> Relu -> ...
    folded = fold_batch_norms(model)
    assert "BatchNormalization" not in [n.op_type for n in folded.graph.node]
    assert_same_answers(model, folded)
    plain = conv_bn(True)
    plain.graph.node[1].input[3] = "x_mean"  # the mean is now a graph input, not a constant
    plain.graph.input.append(helper.make_tensor_value_info("x_mean", TensorProto.FLOAT, [8]))
    assert fold_batch_norms(plain) is plain


def test_resnet50_keeps_its_answer_with_every_batch_norm_folded() -> None:
    from nndeploy.model_prep import prepare_model

    model = prepare_model(onnx.load(str(light_model_path("resnet50"))), {})
    folded = fold_batch_norms(model)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 53
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert_same_answers(model, folded)
