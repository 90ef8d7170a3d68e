"""The project's own TVM converters (targets/frontend/converters.py, targets/frontend/recurrent.py): each op,
imported through the extended importer, compiled for llvm and run, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nndeploy.oracle import run_model


def compiled_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tvm
    from tvm import relax

    from nndeploy.targets.frontend.converters import from_onnx

    shapes = {name: list(x.shape) for name, x in feeds.items()}
    dtypes = {name: x.dtype.name for name, x in feeds.items()}
    mod = from_onnx(model, shapes, dtypes)
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(x) for x in feeds.values()])
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]


def check(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], atol: float = 1e-5, reference: bool = False
) -> None:
    """TVM's result against onnxruntime (or, with `reference`, onnx's reference implementation, for what
    onnxruntime does not run: batch-first recurrent layouts)."""
    onnx.checker.check_model(model)
    if reference:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(model).run(None, feeds)
        want = dict(zip([o.name for o in model.graph.output], values, strict=True))
    else:
        want = run_model(model, feeds)
    got = compiled_outputs(model, feeds)
    names = [o.name for o in model.graph.output]
    assert len(got) == len(names)
    for name, value in zip(names, got, strict=True):
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=atol, err_msg=name)


def recurrent_model(
    op: str, gates: int, seq: int, batch: int, size: int, hidden: int, layout: int = 0, **attrs: object
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One LSTM/GRU/RNN node with constant weights, biases, initial states (and LSTM peepholes)."""
    rng = np.random.default_rng(7)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    weights = {
        "W": rng.standard_normal((directions, gates * hidden, size)) * 0.4,
        "R": rng.standard_normal((directions, gates * hidden, hidden)) * 0.4,
        "B": rng.standard_normal((directions, 2 * gates * hidden)) * 0.2,
        "lengths": np.full(batch, seq),
    }
    state_shape = (batch, directions, hidden) if layout else (directions, batch, hidden)
    weights["h0"] = rng.standard_normal(state_shape) * 0.3
    inputs = ["x", "W", "R", "B", "lengths", "h0"]
    outputs = ["y", "y_h"]
    if op == "LSTM":
        weights["c0"] = rng.standard_normal(state_shape) * 0.3
        weights["P"] = rng.standard_normal((directions, 3 * hidden)) * 0.2
        inputs += ["c0", "P"]
        outputs.append("y_c")
    initializers = [
        numpy_helper.from_array(v.astype(np.int32 if k == "lengths" else np.float32), k)
        for k, v in weights.items()
    ]
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden, layout=layout, **attrs)
    x_shape = [batch, seq, size] if layout else [seq, batch, size]
    y_shape = [batch, seq, directions, hidden] if layout else [seq, directions, batch, hidden]
    graph = helper.make_graph(
        [node],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
        + [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(state_shape)) for o in outputs[1:]],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return model, {"x": rng.standard_normal(x_shape).astype(np.float32)}


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("LSTM", {"direction": "bidirectional"}),
        ("LSTM", {"direction": "reverse", "clip": 0.8}),
        ("LSTM", {"direction": "reverse", "layout": 1}),  # onnx's reference ignores clip: none here
        ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}),
        ("GRU", {"direction": "forward", "linear_before_reset": 0, "layout": 1}),
        ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"]}),
        ("RNN", {"direction": "forward", "activations": ["HardSigmoid"], "activation_alpha": [0.3]}),
    ],
)
def test_recurrent_ops_match_onnxruntime(op: str, attrs: dict) -> None:
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    layout = int(attrs.pop("layout", 0))
    model, feeds = recurrent_model(op, gates, seq=5, batch=3, size=4, hidden=6, layout=layout, **attrs)
    check(model, feeds, reference=layout == 1)


def test_recurrent_op_with_short_sequences_is_refused() -> None:
    from nndeploy.targets.frontend.converters import from_onnx

    model, _ = recurrent_model("GRU", 3, seq=5, batch=3, size=4, hidden=6)
    lengths = next(t for t in model.graph.initializer if t.name == "lengths")
    lengths.CopyFrom(numpy_helper.from_array(np.array([5, 2, 5], np.int32), "lengths"))
    with pytest.raises(ValueError, match="sequence_lens"):
        from_onnx(model, {"x": [5, 3, 4]}, {"x": "float32"})


@pytest.mark.parametrize(("exclusive", "reverse"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod_matches_onnxruntime(exclusive: int, reverse: int) -> None:
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    node = helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    graph = helper.make_graph(
        [node],
        "cumprod",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [axis],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
    check(model, {"x": np.random.default_rng(3).uniform(0.5, 1.5, (2, 5)).astype(np.float32)})


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_matches_onnxruntime(p: int) -> None:
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=p)
    graph = helper.make_graph(
        [node],
        "lp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    x[1] = 0.0  # a zero row stays zero
    check(model, {"x": x})


@pytest.mark.parametrize("op", ["Softplus", "Mish"])
def test_softplus_and_mish_keep_their_digits_far_below_zero(op: str) -> None:
    """exp(x) is below float32's epsilon for x < -16: log(1 + exp(x)) is then 0, and softplus must be
    exp(x) instead (relative error, not absolute, is what the tolerance below holds)."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2001])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2001])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.linspace(-30, 30, 2001).astype(np.float32)
    (got,) = compiled_outputs(model, {"x": x})
    exact = np.log1p(np.exp(x.astype(np.float64)))
    if op == "Mish":
        exact = x * np.tanh(exact)
    assert abs(got[0] - exact[0]) < 1e-6 * abs(exact[0])  # x = -30: about 9e-14 (Mish: -3e-12)
    np.testing.assert_allclose(got, exact, rtol=2e-6, atol=0)
