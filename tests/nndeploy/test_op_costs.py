"""Cost model: FLOPs of the main ops against hand-computed values, zero-FLOP data movement, bytes, and
the conservative estimate for ops the table does not know."""

from __future__ import annotations

import pytest
from onnx import helper

from nndeploy.graph import analyze
from nndeploy.model_prep import prepare_model
from nndeploy.op_costs import OpCost, conservative_flops, node_cost
from nndeploy.types import TensorSpec

from models import custom_op_model


def cost(
    op: str,
    ins: dict[str, tuple[int, ...] | None],
    outs: dict[str, tuple[int, ...]],
    params: dict[str, tuple[int, ...]] | None = None,
    domain: str = "",
    **attrs: object,
) -> OpCost:
    """node_cost of one node; `ins` keys in input order ('' or a None shape leaves an input empty)."""
    params = params or {}
    names = [n for n in ins]
    tensors = {n: TensorSpec(n, s, "float32") for n, s in {**ins, **outs}.items() if s is not None and n}
    specs = {n: TensorSpec(n, s, "float32") for n, s in params.items()}
    node = helper.make_node(op, names + list(params), list(outs), domain=domain, **attrs)
    return node_cost(node, tensors, specs)


def test_conv_with_bias_counts_mac_as_two_plus_bias() -> None:
    c = cost("Conv", {"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)}, {"w": (4, 3, 3, 3), "b": (4,)}, pads=[1] * 4)
    assert c.flops == 2 * (4 * 8 * 8) * (3 * 3 * 3) + 4 * 8 * 8
    assert c.known
    assert c.bytes_read == 4 * (3 * 64 + 4 * 27 + 4)
    assert c.bytes_written == 4 * 4 * 64


def test_grouped_and_dilated_conv() -> None:
    grouped = cost(
        "Conv", {"x": (1, 4, 8, 8)}, {"y": (1, 4, 8, 8)}, {"w": (4, 2, 3, 3)}, group=2, pads=[1] * 4
    )
    assert grouped.flops == 2 * 256 * (2 * 9)
    depthwise = cost(
        "Conv", {"x": (2, 6, 5, 5)}, {"y": (2, 6, 5, 5)}, {"w": (6, 1, 3, 3)}, group=6, pads=[1] * 4
    )
    assert depthwise.flops == 2 * (2 * 6 * 25) * 9
    dilated = cost("Conv", {"x": (1, 1, 9, 9)}, {"y": (1, 2, 5, 5)}, {"w": (2, 1, 3, 3)}, dilations=[2, 2])
    assert dilated.flops == 2 * 50 * 9


def test_conv_transpose_scatters_each_input_through_the_kernel() -> None:
    c = cost(
        "ConvTranspose",
        {"x": (1, 2, 4, 4)},
        {"y": (1, 3, 9, 9)},
        {"w": (2, 3, 3, 3), "b": (3,)},
        strides=[2, 2],
    )
    assert c.flops == 2 * (2 * 16) * (3 * 9) + 3 * 81


def test_matmul_batched_broadcast_and_vector() -> None:
    assert cost("MatMul", {"a": (2, 3, 4, 5)}, {"y": (2, 3, 4, 6)}, {"b": (5, 6)}).flops == 2 * 144 * 5
    assert (
        cost("MatMul", {"a": (4, 1, 3, 5), "b": (2, 5, 7)}, {"y": (4, 2, 3, 7)}).flops == 2 * (4 * 2 * 21) * 5
    )
    assert cost("MatMul", {"a": (5,)}, {"y": (6,)}, {"b": (5, 6)}).flops == 2 * 6 * 5


def test_gemm_with_transposes_and_bias() -> None:
    plain = cost("Gemm", {"a": (3, 4)}, {"y": (3, 5)}, {"b": (5, 4), "c": (5,)}, transB=1)
    assert plain.flops == 2 * 15 * 4 + 15
    trans_a = cost("Gemm", {"a": (4, 3)}, {"y": (3, 5)}, {"b": (4, 5)}, transA=1)
    assert trans_a.flops == 2 * 15 * 4


def test_einsum_contraction_matches_matmul() -> None:
    e = cost("Einsum", {"a": (2, 3, 4), "b": (2, 4, 5)}, {"y": (2, 3, 5)}, equation="bij,bjk->bik")
    m = cost("MatMul", {"a": (2, 3, 4), "b": (2, 4, 5)}, {"y": (2, 3, 5)})
    assert e.flops == m.flops == 2 * 2 * 3 * 4 * 5
    ell = cost(
        "Einsum", {"a": (7, 2, 3, 4), "b": (7, 2, 4, 5)}, {"y": (7, 2, 3, 5)}, equation="...ij,...jk->...ik"
    )
    assert ell.flops == 2 * 7 * 2 * 3 * 4 * 5


def test_pooling() -> None:
    out = {"y": (1, 4, 4, 4)}
    assert cost("MaxPool", {"x": (1, 4, 8, 8)}, out, kernel_shape=[2, 2], strides=[2, 2]).flops == 64 * 4
    assert cost("AveragePool", {"x": (1, 4, 6, 6)}, out, kernel_shape=[3, 3]).flops == 64 * (9 + 1)
    assert cost("LpPool", {"x": (1, 4, 8, 8)}, out, kernel_shape=[2, 2], strides=[2, 2]).flops == 64 * 9
    assert cost("GlobalAveragePool", {"x": (1, 4, 8, 8)}, {"y": (1, 4, 1, 1)}).flops == 256
    assert cost("GlobalMaxPool", {"x": (1, 4, 8, 8)}, {"y": (1, 4, 1, 1)}).flops == 256


def test_normalisations_softmax_and_lrn() -> None:
    x = {"x": (2, 8, 4, 4)}
    y = {"y": (2, 8, 4, 4)}
    n = 2 * 8 * 16
    bn = cost("BatchNormalization", x, y, {"s": (8,), "b": (8,), "m": (8,), "v": (8,)})
    assert bn.flops == 2 * n
    assert cost("LayerNormalization", x, y, {"s": (4,)}, axis=-1).flops == 7 * n
    assert cost("InstanceNormalization", x, y, {"s": (8,), "b": (8,)}).flops == 7 * n
    assert cost("Softmax", x, y).flops == 5 * n
    assert cost("LRN", x, y, size=5).flops == n * (2 * 5 + 3)
    assert cost("ReduceMean", x, {"y": (2, 8, 1, 1)}, axes=[2, 3]).flops == n


def test_elementwise_and_variadic() -> None:
    assert cost("Add", {"a": (2, 3), "b": (3,)}, {"y": (2, 3)}).flops == 6
    assert cost("Relu", {"a": (2, 3)}, {"y": (2, 3)}).flops == 6
    assert cost("Sigmoid", {"a": (2, 3)}, {"y": (2, 3)}).flops == 4 * 6
    assert cost("Sum", {"a": (2, 3), "b": (2, 3), "c": (2, 3)}, {"y": (2, 3)}).flops == 2 * 6
    assert cost("Mean", {"a": (2, 3), "b": (2, 3)}, {"y": (2, 3)}).flops == 2 * 6
    assert cost("Where", {"c": (2, 3), "a": (2, 3), "b": (2, 3)}, {"y": (2, 3)}).flops == 6


@pytest.mark.parametrize(
    "op",
    ["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Expand", "Shape"],
)
def test_reshape_like_ops_cost_no_flops(op: str) -> None:
    c = cost(op, {"x": (2, 3, 4)}, {"y": (6, 4) if op != "Shape" else (3,)})
    assert c.flops == 0 and c.known


def test_views_move_no_bytes_but_transpose_does() -> None:
    view = cost("Reshape", {"x": (2, 3, 4)}, {"y": (6, 4)}, {"s": (2,)})
    assert view.bytes_read == view.bytes_written == 0
    transpose = cost("Transpose", {"x": (2, 3, 4)}, {"y": (4, 3, 2)}, perm=[2, 1, 0])
    assert transpose.bytes_read == transpose.bytes_written == 96


@pytest.mark.parametrize(
    "op", ["Concat", "Split", "Slice", "Gather", "GatherElements", "ScatterND", "Pad", "Tile"]
)
def test_data_movement_ops_cost_no_flops(op: str) -> None:
    c = cost(op, {"x": (4, 8), "i": (2,)}, {"y": (4, 8)})
    assert c.flops == 0 and c.known and c.bytes_written == 128


def test_gather_reads_what_it_gathers_not_the_whole_table() -> None:
    node_ins = ["table", "ids"]
    node = helper.make_node("Gather", node_ins, ["y"])
    tensors = {"ids": TensorSpec("ids", (1, 3), "int64"), "y": TensorSpec("y", (1, 3, 16), "float32")}
    params = {"table": TensorSpec("table", (1000, 16), "float32")}
    c = node_cost(node, tensors, params)
    assert c.bytes_read == 3 * 16 * 4 + 3 * 8
    assert c.bytes_read < 1000 * 16 * 4


def test_resize_cost_depends_on_mode() -> None:
    x, y = {"x": (1, 2, 4, 4), "roi": None, "scales": (4,)}, {"y": (1, 2, 8, 8)}
    nearest = cost("Resize", x, y, mode="nearest")
    linear = cost("Resize", x, y, mode="linear")
    cubic = cost("Resize", x, y, mode="cubic")
    assert nearest.flops == 128
    assert linear.flops == 128 * 2 * 4
    assert cubic.flops == 128 * 2 * 16
    assert cost("Upsample", {"x": (1, 2, 4, 4), "s": (4,)}, y, mode="nearest").flops == 128


def test_topk_argmax_nms_and_lstm_are_known() -> None:
    assert cost("TopK", {"x": (2, 64), "k": (1,)}, {"v": (2, 8), "i": (2, 8)}).flops == 128 * 3
    assert cost("ArgMax", {"x": (2, 64)}, {"y": (2, 1)}).flops == 128
    nms = cost("NonMaxSuppression", {"boxes": (1, 10, 4), "scores": (1, 3, 10)}, {"sel": (30, 3)})
    assert nms.known and nms.flops >= 3 * 10 * 10
    lstm = cost("LSTM", {"x": (5, 2, 8)}, {"y": (5, 1, 2, 16)}, {"w": (1, 64, 8), "r": (1, 64, 16)})
    assert lstm.known and lstm.flops == 10 * (2 * 64 * (8 + 16) + 10 * 16)


def test_unknown_op_gets_a_conservative_estimate() -> None:
    c = cost("FooBar", {"x": (2, 8)}, {"y": (2, 4)}, domain="custom.test")
    assert not c.known
    assert (
        c.flops
        == 8 * (16 + 8)
        == conservative_flops([TensorSpec("x", (2, 8), "f")], [TensorSpec("y", (2, 4), "f")])
    )
    assert not cost("NotAnOnnxOp", {"x": (2, 8)}, {"y": (2, 4)}).known


def test_known_op_with_missing_shapes_is_estimated() -> None:
    c = cost("Conv", {"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})  # no weight spec
    assert not c.known and c.flops > 0


def test_unknown_op_is_named_in_the_graph_warnings() -> None:
    graph = analyze(prepare_model(custom_op_model()), "custom.onnx", "0" * 64, {"x": (1, 8)}, 1)
    foo = next(n for n in graph.nodes if n.name == "foo")
    assert foo.estimated and foo.flops > 0
    assert not next(n for n in graph.nodes if n.name == "mm").estimated
    assert any("'FooBar'" in w and "1 node, e.g. foo" in w for w in graph.warnings)
    assert any("no static shape" in w and "'f'" in w for w in graph.warnings)
