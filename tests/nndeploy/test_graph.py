"""Graph analysis: nodes, activation inputs vs weights, hand-computed costs, tensors, warnings, and
load_graph's determinism on files (plain, external data, old and new opsets, model-zoo)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from nndeploy.errors import ModelError
from nndeploy.graph import analyze, elem_type_name, load_graph, load_prepared_model
from nndeploy.model_prep import file_sha256, prepare_model
from nndeploy.types import Graph

from models import (
    attention_model,
    chain_model,
    conv_model,
    custom_op_model,
    diamond_model,
    dynamic_batch_model,
    light_model_path,
    multi_output_model,
    opset_ops_model,
    skip_model,
)


def graph_of(model: onnx.ModelProto) -> Graph:
    """Analyse an in-memory model (prepared first)."""
    return analyze(prepare_model(model), "mem.onnx", "0" * 64, {}, 1)


def test_chain_nodes_costs_and_tensors() -> None:
    g = graph_of(chain_model())
    assert [n.name for n in g.nodes] == ["mm1", "add1", "relu1", "mm2", "add2", "relu2"]
    mm1 = g.nodes[0]
    assert mm1.inputs == ("x",) and mm1.params == ("w1",) and mm1.outputs == ("h1",)
    assert mm1.param_bytes == 8 * 16 * 4 and mm1.out_bytes == 16 * 4
    assert mm1.bytes_read == (8 + 8 * 16) * 4 and mm1.bytes_written == 16 * 4
    assert [n.flops for n in g.nodes] == [2 * 8 * 16, 16, 16, 2 * 16 * 4, 4, 4]
    assert g.inputs == ("x",) and g.outputs == ("y",)
    assert set(g.tensors) == {"x", "h1", "h2", "h3", "h4", "h5", "y"}
    assert g.tensors["h3"].shape == (1, 16) and g.tensors["y"].dtype == "float32"
    assert g.param_bytes == {"w1": 512, "b1": 64, "w2": 256, "b2": 16}
    assert g.total_param_bytes == 848
    assert all(n.dtype == "float32" and not n.estimated for n in g.nodes)
    assert g.warnings == ()


def test_diamond_skip_and_multi_output_edges() -> None:
    diamond = graph_of(diamond_model())
    readers = [n.name for n in diamond.nodes if "h" in n.inputs]
    assert readers == ["left", "right_act"]
    assert next(n for n in diamond.nodes if n.name == "join").inputs == ("a", "b")
    skip = graph_of(skip_model())
    assert next(n for n in skip.nodes if n.name == "residual").inputs == ("h4", "h1")
    multi = graph_of(multi_output_model())
    assert multi.outputs == ("early", "late")
    assert multi.tensors["early"].shape == (1, 8) and multi.tensors["late"].shape == (1, 4)


def test_conv_model_costs() -> None:
    g = graph_of(conv_model())
    by_name = {n.name: n for n in g.nodes}
    assert by_name["conv"].flops == 2 * (8 * 16 * 16) * 27 + 8 * 16 * 16
    assert by_name["conv"].params == ("cw", "cb") and by_name["conv"].inputs == ("x",)
    assert by_name["bn"].params == ("g", "beta", "mean", "var")
    assert by_name["pool"].flops == 8 * 8 * 8 * 4
    assert by_name["flatten"].flops == 0
    assert by_name["fc"].flops == 2 * 10 * 512 + 10
    assert g.tensors["p"].shape == (1, 8, 8, 8)


def test_attention_costs() -> None:
    g = graph_of(attention_model())
    by_name = {n.name: n for n in g.nodes}
    proj = 2 * (8 * 16) * 16
    assert by_name["q_proj"].flops == proj
    assert by_name["qk"].flops == 2 * (2 * 8 * 8) * 8
    assert by_name["pv"].flops == 2 * (2 * 8 * 8) * 8
    assert by_name["softmax"].flops == 5 * 2 * 8 * 8
    assert by_name["k_heads"].flops == 0 and by_name["k_heads"].bytes_written == 8 * 16 * 4
    assert g.tensors["k"].shape == (1, 2, 8, 8) and g.tensors["scores"].shape == (1, 2, 8, 8)
    assert by_name["q_split"].params == ("split_shape",) and by_name["q_split"].inputs == ("q0",)
    assert g.total_flops == 4 * proj + 2 * 2048 + 128 + 640 + 128


def test_unknown_op_and_unknown_shapes_are_estimated() -> None:
    g = graph_of(custom_op_model())
    assert g.tensors["f"].shape == (1, 8)  # estimated from the FooBar node's input
    assert g.tensors["y"].shape == (1, 8)
    assert next(n for n in g.nodes if n.name == "foo").estimated
    assert len(g.warnings) == 2
    assert g.warnings[0] == (
        "op 'FooBar' (1 node, e.g. foo) is not known to the cost model; its cost is a conservative estimate"
    )


def test_elem_type_names() -> None:
    assert elem_type_name(TensorProto.FLOAT) == "float32"
    assert elem_type_name(TensorProto.FLOAT16) == "float16"
    assert elem_type_name(TensorProto.BFLOAT16) == "bfloat16"
    assert elem_type_name(TensorProto.INT64) == "int64"
    assert elem_type_name(TensorProto.BOOL) == "bool"
    assert elem_type_name(TensorProto.UINT8) == "uint8"


def test_load_graph_is_deterministic_and_matches_the_prepared_model(tmp_path: Path) -> None:
    path = tmp_path / "unnamed.onnx"
    model = chain_model()
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, path)
    a, b = load_graph(path), load_graph(path)
    names = [n.name for n in a.nodes]
    assert names == [n.name for n in b.nodes]
    assert names == [n.name for n in load_prepared_model(path).graph.node]
    assert len(set(names)) == len(names) == 6
    assert a.model_sha256 == file_sha256(path) and a.model_path == str(path)
    assert a.input_shapes == {"x": (1, 8)} and a.batch == 1


def test_load_graph_binds_batch(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.onnx"
    onnx.save(dynamic_batch_model(), path)
    g = load_graph(path, batch=4)
    assert g.input_shapes == {"x": (4, 4)} and g.batch == 4
    assert g.tensors["y"].shape == (4, 3)
    assert g.nodes[0].flops == 2 * 4 * 3 * 4
    shaped = load_graph(path, input_shapes={"x": [2, 4]})
    assert shaped.input_shapes == {"x": (2, 4)} and shaped.batch == 2
    with pytest.raises(ModelError, match=r"dynamic dims \['N'\]"):
        load_graph(path)


@pytest.mark.parametrize("opset", [7, 21])
def test_old_and_new_opsets_analyse(tmp_path: Path, opset: int) -> None:
    path = tmp_path / f"opset{opset}.onnx"
    onnx.save(opset_ops_model(opset), path)
    g = load_graph(path)
    assert g.tensors["y"].shape == (1, 256)
    assert g.tensors["up"].shape == (1, 4, 8, 8)
    assert not any(n.estimated for n in g.nodes) and g.warnings == ()
    assert next(n for n in g.nodes if n.name == "up").flops == 256


def test_external_data_model_analyses(tmp_path: Path) -> None:
    path = tmp_path / "conv.onnx"
    onnx.save(conv_model(), path, save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)
    g = load_graph(path)
    assert g.param_bytes["fw"] == 10 * 512 * 4
    assert g.tensors["y"].shape == (1, 10)


def test_resnet50_light_graph() -> None:
    g = load_graph(light_model_path("resnet50"))
    assert g.inputs == ("gpu_0/data_0",)
    assert 7.9e9 < g.total_flops < 8.4e9  # ~4.1 GMACs
    assert 25.0e6 * 4 < g.total_param_bytes < 26.0e6 * 4
    assert len(g.nodes) == 176 and not any(n.estimated for n in g.nodes)
    assert all(n.params for n in g.nodes if n.op_type == "Conv")
    assert not any(p in g.tensors for p in g.param_bytes)
