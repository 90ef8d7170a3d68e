"""Tiny ONNX models built with onnx.helper, shared by the project's tests (seeded random float32 weights),
plus the model-zoo architectures in the onnx wheel and random inputs for any model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
LIGHT_MODELS = (
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
)


def _weights(seed: int, **shapes: tuple[int, ...]) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
        for name, shape in shapes.items()
    ]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    name: str,
    opset: int = OPSET,
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="nndeploy-tests")
    model.ir_version = max(
        helper.find_min_ir_version_for(opsets[:1], ignore_unknown=True), 4 if opset < 13 else 8
    )
    onnx.checker.check_model(model)
    return model


def _f32(name: str, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def chain_model() -> onnx.ModelProto:
    """x[1,8] -> MatMul -> Add -> Relu -> MatMul -> Add -> Relu -> y[1,4]."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu1"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="mm2"),
        helper.make_node("Add", ["h4", "b2"], ["h5"], name="add2"),
        helper.make_node("Relu", ["h5"], ["y"], name="relu2"),
    ]
    inits = _weights(1, w1=(8, 16), b1=(16,), w2=(16, 4), b2=(4,))
    return _model(nodes, [_f32("x", [1, 8])], [_f32("y", [1, 4])], inits, "chain")


def diamond_model() -> onnx.ModelProto:
    """h = x @ w0 feeds two branches (Relu, and Sigmoid @ w1) that are added."""
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="stem"),
        helper.make_node("Relu", ["h"], ["a"], name="left"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="right_act"),
        helper.make_node("MatMul", ["s", "w1"], ["b"], name="right_mm"),
        helper.make_node("Add", ["a", "b"], ["y"], name="join"),
    ]
    inits = _weights(2, w0=(8, 8), w1=(8, 8))
    return _model(nodes, [_f32("x", [1, 8])], [_f32("y", [1, 8])], inits, "diamond")


def skip_model() -> onnx.ModelProto:
    """A residual block: h1 is produced first and consumed again four nodes later."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="mm2"),
        helper.make_node("Tanh", ["h3"], ["h4"], name="tanh"),
        helper.make_node("Add", ["h4", "h1"], ["h5"], name="residual"),
        helper.make_node("Relu", ["h5"], ["y"], name="relu2"),
    ]
    inits = _weights(3, w1=(8, 8), w2=(8, 8))
    return _model(nodes, [_f32("x", [1, 8])], [_f32("y", [1, 8])], inits, "skip")


def multi_output_model() -> onnx.ModelProto:
    """Two graph outputs: 'early' is produced by the second node, 'late' at the end."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["early"], name="relu1"),
        helper.make_node("MatMul", ["early", "w2"], ["h2"], name="mm2"),
        helper.make_node("Sigmoid", ["h2"], ["h3"], name="sig"),
        helper.make_node("MatMul", ["h3", "w3"], ["late"], name="mm3"),
    ]
    inits = _weights(4, w1=(8, 8), w2=(8, 8), w3=(8, 4))
    return _model(
        nodes, [_f32("x", [1, 8])], [_f32("early", [1, 8]), _f32("late", [1, 4])], inits, "multi_output"
    )


def conv_model() -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv 3x3 (8) -> BatchNorm -> Relu -> MaxPool 2x2 -> Flatten -> Gemm -> y[1,10]."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = _weights(6, cw=(8, 3, 3, 3), cb=(8,), g=(8,), beta=(8,), mean=(8,), fw=(10, 512), fb=(10,))
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"))
    return _model(nodes, [_f32("x", [1, 3, 16, 16])], [_f32("y", [1, 10])], inits, "conv")


def dynamic_batch_model() -> onnx.ModelProto:
    """x['N',4] -> MatMul -> Relu -> y['N',3]: needs --batch or --input-shape."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    return _model(nodes, [_f32("x", ["N", 4])], [_f32("y", ["N", 3])], _weights(7, w=(4, 3)), "dynamic")


def unnamed_nodes_model() -> onnx.ModelProto:
    """A chain whose nodes all have empty names (as many exporters write them)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Mul", ["h2", "s"], ["h3"]),
        helper.make_node("Relu", ["h3"], ["h4"]),
        helper.make_node("MatMul", ["h4", "w2"], ["y"]),
    ]
    inits = _weights(8, w1=(8, 8), s=(8,), w2=(8, 4))
    return _model(nodes, [_f32("x", [1, 8])], [_f32("y", [1, 4])], inits, "unnamed")


def attention_model(seq: int = 8, dim: int = 16, heads: int = 2) -> onnx.ModelProto:
    """One self-attention block without Einsum: Q/K/V MatMuls, head split (Reshape/Transpose),
    Q @ K^T, scale, Softmax, @ V, head merge, output projection and a residual Add."""
    hd = dim // heads
    split = numpy_helper.from_array(np.array([1, seq, heads, hd], np.int64), "split_shape")
    merge = numpy_helper.from_array(np.array([1, seq, dim], np.int64), "merge_shape")
    scale = numpy_helper.from_array(np.array(1.0 / np.sqrt(hd), np.float32), "scale")
    nodes = []
    for p in "qkv":
        nodes += [
            helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"], name=f"{p}_proj"),
            helper.make_node("Reshape", [f"{p}0", "split_shape"], [f"{p}1"], name=f"{p}_split"),
            helper.make_node(
                "Transpose",
                [f"{p}1"],
                [f"{p}"],
                name=f"{p}_heads",
                perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3],
            ),
        ]
    nodes += [
        helper.make_node("MatMul", ["q", "k"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale_mul"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], name="merge_heads", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["ctx_m"], name="merge"),
        helper.make_node("MatMul", ["ctx_m", "wo"], ["o"], name="out_proj"),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    inits = _weights(9, wq=(dim, dim), wk=(dim, dim), wv=(dim, dim), wo=(dim, dim))
    inits += [split, merge, scale]
    return _model(nodes, [_f32("x", [1, seq, dim])], [_f32("y", [1, seq, dim])], inits, "attention")


def opset_ops_model(opset: int) -> onnx.ModelProto:
    """Ops whose form changed between opsets 7 and 21, written the way `opset` spells them: ReduceMean,
    Squeeze/Unsqueeze and Split (axes/split as attribute or input), Upsample/Resize, plus a constant
    subgraph (Constant, Shape of a static tensor, Gather, Concat) that feeds a Reshape."""
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    axes = {"axes": [2, 3]} if opset < 13 else {}
    ax_in = [] if opset < 13 else [const("axes23", np.array([2, 3], np.int64))]
    if opset < 18:
        nodes.append(helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2, 3], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMean", ["x", "axes23"], ["m"], name="mean", keepdims=1))
    nodes += [
        helper.make_node("Squeeze", ["m", *ax_in], ["sq"], name="squeeze", **axes),
        helper.make_node("Unsqueeze", ["sq", *ax_in], ["us"], name="unsqueeze", **axes),
        helper.make_node("Sub", ["x", "us"], ["centered"], name="center"),
    ]
    if opset < 13:
        nodes.append(
            helper.make_node("Split", ["centered"], ["s0", "s1"], name="split", axis=1, split=[2, 2])
        )
    else:
        split = const("split_sizes", np.array([2, 2], np.int64))
        nodes.append(helper.make_node("Split", ["centered", split], ["s0", "s1"], name="split", axis=1))
    nodes += [
        helper.make_node("Relu", ["s0"], ["r0"], name="relu"),
        helper.make_node("Concat", ["r0", "s1"], ["cat"], name="concat", axis=1),
    ]
    scales = np.array([1, 1, 2, 2], np.float32)
    if opset < 9:
        nodes.append(helper.make_node("Upsample", ["cat"], ["up"], name="up", scales=scales.tolist()))
    elif opset < 10:
        nodes.append(helper.make_node("Upsample", ["cat", const("scales", scales)], ["up"], name="up"))
    elif opset < 11:
        nodes.append(helper.make_node("Resize", ["cat", const("scales", scales)], ["up"], name="up"))
    else:
        roi = const("roi", np.zeros(0, np.float32)) if opset < 13 else ""
        nodes.append(helper.make_node("Resize", ["cat", roi, const("scales", scales)], ["up"], name="up"))
    minus_one = np.array([-1], np.int64)
    if opset < 9:  # Constant only holds float tensors before opset 9
        const("tail", minus_one)
    else:
        value = numpy_helper.from_array(minus_one, "minus_one")
        nodes.append(helper.make_node("Constant", [], ["tail"], name="tail_const", value=value))
    nodes += [
        helper.make_node("Shape", ["up"], ["up_shape"], name="shape"),
        helper.make_node(
            "Gather", ["up_shape", const("zero", np.array([0], np.int64))], ["n"], name="gather"
        ),
        helper.make_node("Concat", ["n", "tail"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["up", "target"], ["y"], name="flatten"),
    ]
    return _model(nodes, [_f32("x", [1, 4, 4, 4])], [_f32("y", [1, 256])], inits, f"opset{opset}", opset)


def custom_op_model() -> onnx.ModelProto:
    """A chain with one op from a custom domain ('FooBar'), unknown to shape inference and the cost model."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("FooBar", ["h"], ["f"], name="foo", domain="custom.test"),
        helper.make_node("Relu", ["f"], ["y"], name="relu"),
    ]
    return _model(
        nodes,
        [_f32("x", [1, 8])],
        [_f32("y", ["M", 8])],
        _weights(10, w=(8, 8)),
        "custom",
        extra_opsets=(("custom.test", 1),),
    )


def light_model_path(name: str) -> Path:
    """Path of onnx/backend/test/data/light/light_{name}.onnx in the installed onnx wheel."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random arrays for the model's real inputs (symbolic dims become 1)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def uncompilable_model() -> onnx.ModelProto:
    """x[2,8] -> MatMul -> ReverseSequence -> MatMul -> y: ReverseSequence is an op onnxruntime runs and
    TVM 0.27 cannot import (no converter, and the standard gives it no function body to expand)."""
    weights = _weights(5, w1=(8, 8), w2=(8, 4))
    lengths = numpy_helper.from_array(np.array([1, 2] * 4, dtype=np.int64), "lengths")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node(
            "ReverseSequence", ["h", "lengths"], ["r"], name="reverse", batch_axis=1, time_axis=0
        ),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return _model(nodes, [_f32("x", [2, 8])], [_f32("y", [2, 4])], [*weights, lengths], "reverse", opset=17)


def silu_softmax_model() -> onnx.ModelProto:
    """conv 3->16 (3x3, stride 2), SiLU, global pool, softmax over channels: every exp a CNN stage meets."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Softmax", ["f"], ["probabilities"], axis=1),
    ]
    weights = _weights(0, w=(16, 3, 3, 3), b=(16,))
    return _model(
        nodes, [_f32("x", [1, 3, 64, 64])], [_f32("probabilities", [1, 16])], weights, "silu_softmax"
    )


def conv_residual_model(side: int) -> onnx.ModelProto:
    """x[1,3,side,side] through Relu, a 3x3 conv, Sigmoid and a residual Add: split over several fast-linked
    servers it becomes a multi-stage pipeline (side 640 makes a 4.7 MiB input, over gRPC's default limit)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu1"),
        helper.make_node("Conv", ["a", "w"], ["b"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["b"], ["c"], name="sigmoid"),
        helper.make_node("Add", ["c", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        f"conv_residual_{side}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, side, side])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_stack_model(blocks: int = 4, channels: int = 8, side: int = 16) -> onnx.ModelProto:
    """x[1,C,side,side] -> a Relu, then `blocks` times a 3x3 Conv (C) with Relu and a residual Add: a small
    CNN with one anchor op (Conv) per block."""
    nodes = [helper.make_node("Relu", ["x"], ["h0"], name="relu_in")]
    weights = []
    for block in range(blocks):
        h, c, r = f"h{block}", f"c{block}", f"r{block}"
        nodes += [
            helper.make_node("Conv", [h, f"w{block}"], [c], name=f"conv{block}", pads=[1] * 4),
            helper.make_node("Relu", [c], [r], name=f"relu{block}"),
            helper.make_node("Add", [r, h], [f"h{block + 1}"], name=f"add{block}"),
        ]
        weights += _weights(block, **{f"w{block}": (channels, channels, 3, 3)})
    nodes.append(helper.make_node("Identity", [f"h{blocks}"], ["y"], name="out"))
    shape = [1, channels, side, side]
    return _model(nodes, [_f32("x", shape)], [_f32("y", shape)], weights, "conv_stack")
