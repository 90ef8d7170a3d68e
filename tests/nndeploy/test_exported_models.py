"""What exporters write and real models hit: inputs declared -1 or '?', outputs declared -1, symbolic or
without a shape, data-dependent sizes, and old opsets onnxruntime has no kernel for. Each plans, compiles
and verifies as a user runs it (or is refused at plan time in one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error, nndeploy

from nndeploy.model_prep import prepare_model
from nndeploy.shape_probe import fill_open_shapes, open_tensors, probe_shapes

TWO_SERVERS = """
devices:
  - {name: a, profile: x86-avx512-server}
  - {name: b, profile: x86-avx512-server}
links:
  - {between: [a, b], gbps: 100, latency_ms: 0.01}
input_at: a
output_to: b
"""
ONE_SERVER = "devices:\n  - {name: a, profile: x86-avx512-server}\n"


def _weights(**shapes: tuple[int, ...]) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(5)
    return [
        numpy_helper.from_array(rng.uniform(0.1, 0.9, s).astype(np.float32), n) for n, s in shapes.items()
    ]


def classifier(input_dims: list, output: onnx.ValueInfoProto, opset: int = 13) -> onnx.ModelProto:
    """Conv -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, as an exporter writes it."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "exported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [output],
        _weights(w=(8, 3, 3, 3), fw=(2, 8), fb=(2,)),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


OUTPUTS = {
    "output -1": helper.make_tensor_value_info("prob", TensorProto.FLOAT, [-1, 2]),
    "output symbolic": helper.make_tensor_value_info(
        "prob", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 2]
    ),
    "output without shape": helper.make_tensor_value_info("prob", TensorProto.FLOAT, None),
}
INPUTS = {"input -1": [-1, 3, -1, -1], "input ?": ["?", 3, "?", "?"]}


def _plan_compile_verify(
    tmp_path: Path, model: onnx.ModelProto, cluster: str, *plan_args: str, fallback: bool = False
) -> dict:
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "cluster.yaml").write_text(cluster)
    plan = tmp_path / "plan.json"
    extra = ("--fallback", "onnxruntime") if fallback else ()
    done = nndeploy(
        "plan", tmp_path / "m.onnx", "--cluster", tmp_path / "cluster.yaml", "-o", plan, *plan_args, *extra
    )
    assert done.returncode == 0, done.stderr
    built = nndeploy("compile", plan, "-o", tmp_path / "build", *extra)
    assert built.returncode == 0, built.stdout + built.stderr
    checked = nndeploy("verify", tmp_path / "build", "--samples", "2")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout
    return json.loads((tmp_path / "build" / "manifest.json").read_text())


def _all_specs(manifest: dict) -> list[list[int]]:
    specs = []
    for stage in manifest["stages"]:
        specs += [s["shape"] for s in stage["artifact"]["inputs"] + stage["artifact"]["outputs"]]
    return specs


@pytest.mark.parametrize("declared", list(OUTPUTS))
def test_declared_output_shapes_are_replaced_by_the_inferred_ones(declared: str) -> None:
    prepared = prepare_model(classifier(INPUTS["input -1"], OUTPUTS[declared]), {"x": [2, 3, 8, 8]})
    dims = [d.dim_value for d in prepared.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 2]
    assert open_tensors(prepared) == []


@pytest.mark.slow
@pytest.mark.parametrize(("declared", "inputs"), [("output -1", "input -1"), ("output symbolic", "input ?"),
                                                  ("output without shape", "input -1")])  # fmt: skip
def test_exported_shapes_plan_compile_and_verify(tmp_path: Path, declared: str, inputs: str) -> None:
    model = classifier(INPUTS[inputs], OUTPUTS[declared])
    manifest = _plan_compile_verify(tmp_path, model, TWO_SERVERS, "--input-shape", "x=2x3x16x16")
    specs = _all_specs(manifest)
    assert specs and all(all(isinstance(d, int) and d >= 0 for d in shape) for shape in specs), specs
    assert manifest["stages"][-1]["artifact"]["outputs"][0]["shape"] == [2, 2]


def test_inputs_declared_minus_one_ask_for_their_shape(tmp_path: Path) -> None:
    onnx.save(classifier(INPUTS["input -1"], OUTPUTS["output -1"]), tmp_path / "m.onnx")
    (tmp_path / "cluster.yaml").write_text(ONE_SERVER)
    done = nndeploy(
        "plan", tmp_path / "m.onnx", "--cluster", tmp_path / "cluster.yaml", "-o", tmp_path / "p.json"
    )
    assert_user_error(done, "input 'x' has dynamic dims", "--input-shape x=")


def nonzero_model(nonzero_is_an_output: bool) -> onnx.ModelProto:
    """x -> Relu -> NonZero -> ReduceSum (a count of the positive entries, added to x): the NonZero's size
    depends on the values of x."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("NonZero", ["r"], ["nz"], name="nonzero"),
        helper.make_node("ReduceSum", ["nz"], ["s"], name="count", keepdims=0),
        helper.make_node("Cast", ["s"], ["sf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "sf"], ["y"], name="add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])]
    if nonzero_is_an_output:
        outputs.append(helper.make_tensor_value_info("nz", TensorProto.INT64, [2, -1]))
    graph = helper.make_graph(
        nodes, "nz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 4])], outputs
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_data_dependent_shapes_are_found_and_never_filled() -> None:
    prepared = prepare_model(nonzero_model(False), {"x": [3, 4]})
    assert open_tensors(prepared) == ["nz"]
    shapes, dependent, problem = probe_shapes(prepared, ["nz"])
    assert problem is None and shapes == {} and dependent == {"nz"}
    dims = [d.dim_value for d in prepared.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [3, 4]


def test_open_shapes_are_measured_with_onnxruntime() -> None:
    """A tensor inference leaves open but a run fixes (here: its shape was removed by hand)."""
    prepared = prepare_model(classifier([1, 3, 8, 8], OUTPUTS["output -1"]), {})
    prepared.graph.output[0].type.tensor_type.ClearField("shape")
    next(vi for vi in prepared.graph.value_info if vi.name == "f").type.tensor_type.ClearField("shape")
    assert open_tensors(prepared) == ["f", "prob"]
    warnings: list[str] = []
    assert fill_open_shapes(prepared, warnings) == set() and warnings == []
    assert open_tensors(prepared) == []
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in prepared.graph.value_info
    }
    assert shapes["f"] == [1, 8]
    assert [d.dim_value for d in prepared.graph.output[0].type.tensor_type.shape.dim] == [1, 2]


def test_a_data_dependent_output_is_refused_at_plan_time(tmp_path: Path) -> None:
    onnx.save(nonzero_model(True), tmp_path / "m.onnx")
    (tmp_path / "cluster.yaml").write_text(ONE_SERVER)
    done = nndeploy(
        "plan", tmp_path / "m.onnx", "--cluster", tmp_path / "cluster.yaml", "-o", tmp_path / "p.json",
        "--input-shape", "x=3x4", "--fallback", "onnxruntime",
    )  # fmt: skip
    assert_user_error(done, "output 'nz' (from NonZero 'nonzero')", "depends on the input data")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_a_data_dependent_tensor_inside_runs_on_onnxruntime_and_is_never_cut(tmp_path: Path) -> None:
    manifest = _plan_compile_verify(
        tmp_path, nonzero_model(False), TWO_SERVERS, "--input-shape", "x=3x4", fallback=True
    )
    plan = json.loads((tmp_path / "plan.json").read_text())
    boundary = {s["name"] for stage in plan["stages"] for s in stage["inputs"] + stage["outputs"]}
    assert "nz" not in boundary
    ort_nodes = {n["node"] for stage in manifest["stages"] for n in stage["artifact"]["options"].get(
        "onnxruntime_nodes", [])}  # fmt: skip
    assert "nonzero" in ort_nodes
    assert all(all(d >= 0 for d in shape) for shape in _all_specs(manifest))


def _old(node: onnx.NodeProto, opset: int, shape: list[int], out: list[int], **weights) -> onnx.ModelProto:
    """A one-node model of an old opset, written as IR 3 files were (weights listed as graph inputs)."""
    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    graph = helper.make_graph(
        [node],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
        + [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    return model


SLOPE = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
OLD_OPSETS = {
    # per-channel slope of shape (C,): PRelu-7 would broadcast it over the last dim
    "PRelu-6 per channel": _old(helper.make_node("PRelu", ["x", "slope"], ["y"]), 6, [1, 4, 6, 6],
                                [1, 4, 6, 6], slope=SLOPE),
    "AveragePool-1": _old(helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
                          1, [1, 4, 6, 6], [1, 4, 3, 3]),
    "Gemm-6 broadcast": _old(helper.make_node("Gemm", ["x", "w", "c"], ["y"], broadcast=1), 6, [2, 4], [2, 3],
                             w=np.arange(12, dtype=np.float32).reshape(4, 3) / 10, c=np.ones(3, np.float32)),
}  # fmt: skip


def test_onnxruntime_has_no_kernel_for_these_old_opsets() -> None:
    """The premise: onnxruntime refuses each, so the oracle and the upgrade check need the reference."""
    import onnxruntime as ort

    for name, model in OLD_OPSETS.items():
        with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
            ort.InferenceSession(model.SerializeToString())
        assert name


@pytest.mark.parametrize("name", list(OLD_OPSETS))
def test_old_opsets_are_upgraded_when_the_reference_agrees(name: str) -> None:
    from nndeploy.oracle import run_model
    from nndeploy.targets.frontend.opset_upgrade import upgrade_opset

    model = OLD_OPSETS[name]
    upgraded = upgrade_opset(model)
    assert upgraded is not model and upgraded.opset_import[0].version == 13
    x = (
        np.random.default_rng(1)
        .standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
        .astype(np.float32)
    )
    want = run_model(model, {"x": x})["y"]  # onnx's reference evaluator: onnxruntime has no kernel
    got = run_model(upgraded, {"x": x})["y"]  # onnxruntime
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if name.startswith("PRelu"):
        np.testing.assert_allclose(want[0, 2], np.where(x[0, 2] > 0, x[0, 2], 0.3 * x[0, 2]), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OLD_OPSETS))
def test_old_opsets_plan_compile_and_verify(tmp_path: Path, name: str) -> None:
    manifest = _plan_compile_verify(tmp_path, OLD_OPSETS[name], ONE_SERVER)
    artifact = manifest["stages"][0]["artifact"]
    assert artifact["path"].endswith(".so") and not artifact["fallback"]
