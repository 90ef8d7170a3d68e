"""Fine-grained onnxruntime fallback: which nodes TVM cannot compile (found before planning), how the
planner places and flags them, how a stage is built as TVM parts around onnxruntime regions, and how
the endpoint's metadata reports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nndeploy.errors import PlanError
from nndeploy.graph import load_graph, load_prepared_model
from nndeploy.partitioner.planner import plan
from nndeploy.planfile import read_plan, write_plan
from nndeploy.targets.artifacts.loader import run_artifact
from nndeploy.targets.artifacts.manifest import Manifest, StageBuild
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.targets.frontend import coverage as tvm_coverage
from nndeploy.targets.frontend.coverage import compiler_problems
from nndeploy.types import Device, FallbackNode

from conftest import servers


def mixed_model() -> onnx.ModelProto:
    """x[4,16] -> MatMul -> Relu -> ReverseSequence (no TVM converter, no function body) -> MatMul ->
    CumSum over an axis given as a graph input (TVM imports only constant axes) -> + skip -> y."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    lengths = numpy_helper.from_array(np.array([4, 1, 2, 3] * 4, dtype=np.int64), "lengths")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node(
            "ReverseSequence", ["b", "lengths"], ["c"], name="reverse", batch_axis=1, time_axis=0
        ),
        helper.make_node("MatMul", ["c", "w"], ["d"], name="mm2"),
        helper.make_node("CumSum", ["d", "axis"], ["e"], name="cumsum"),
        helper.make_node("Add", ["e", "a"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
            helper.make_tensor_value_info("axis", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [weight, lengths],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.onnx"
    onnx.save(mixed_model(), path)
    return path


def test_nodes_tvm_cannot_compile_are_found_with_their_reason(mixed: Path) -> None:
    problems = compiler_problems(load_prepared_model(mixed))
    assert sorted(problems) == ["cumsum", "reverse"]
    assert "no converter for ReverseSequence" in problems["reverse"].reason
    assert "TVM cannot import it" in problems["cumsum"].reason and "axis" in problems["cumsum"].reason


def test_known_wrong_list_flags_matching_nodes_only(
    mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_prepared_model(mixed)
    types = {vi.name: vi for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    inits = {t.name: t for t in model.graph.initializer}
    relu = next(n for n in model.graph.node if n.name == "relu")
    signature = tvm_coverage.node_signature(relu, types, inits)
    assert signature == "ai.onnx.Relu(float32[2]; ) -> 1"
    monkeypatch.setattr(tvm_coverage, "KNOWN_WRONG_FILE", tmp_path / "known_wrong.json")
    tvm_coverage.load_known_wrong.cache_clear()
    try:
        tvm_coverage.write_known_wrong(
            {signature: "test_relu"}, {"run": "test"}, tmp_path / "known_wrong.json"
        )
        flagged = compiler_problems(model)
        assert sorted(flagged) == ["cumsum", "relu", "reverse"]
        assert "measured wrong" in flagged["relu"].reason and "test_relu" in flagged["relu"].reason
        assert "relu" not in compiler_problems(model, use_known_wrong=False)
    finally:
        tvm_coverage.load_known_wrong.cache_clear()


def test_plan_places_fallback_nodes_on_cpus_and_records_them(
    mixed: Path, make_cluster, tmp_path: Path
) -> None:
    graph = load_graph(mixed)
    problems = compiler_problems(load_prepared_model(mixed))
    the_plan = plan(graph, make_cluster(servers(1)), "latency", None, problems)
    assert [f.node for s in the_plan.stages for f in s.fallback] == ["reverse", "cumsum"]
    write_plan(the_plan, tmp_path / "plan.json")
    again = read_plan(tmp_path / "plan.json")
    assert again.stages[0].fallback == the_plan.stages[0].fallback
    gpu_only = make_cluster({"name": "gpu", "devices": [{"name": "g", "profile": "nvidia-a100"}]})
    with pytest.raises(PlanError, match="CPU devices"):
        plan(graph, gpu_only, "latency", None, problems)


def test_mixed_cluster_keeps_fallback_nodes_off_the_gpu(mixed: Path, make_cluster) -> None:
    cluster = make_cluster(
        {
            "name": "mixed",
            "devices": [
                {"name": "cpu", "profile": "x86-avx512-server"},
                {"name": "gpu", "profile": "nvidia-a100"},
            ],
            "default_link": {"gbps": 100, "latency_ms": 0.001},
        }
    )
    problems = compiler_problems(load_prepared_model(mixed))
    the_plan = plan(load_graph(mixed), cluster, "latency", None, problems)
    for stage in the_plan.stages:
        if stage.device == "gpu":
            assert not {"reverse", "cumsum"} & set(stage.nodes)
    assert sorted(f.node for s in the_plan.stages for f in s.fallback) == ["cumsum", "reverse"]


def x86() -> Device:
    return device_from_profile(load_profiles()["x86-avx512-server"], "server")


def test_stage_with_regions_runs_as_onnxruntime_would(mixed: Path, tmp_path: Path) -> None:
    from nndeploy.oracle import run_model

    problems = compiler_problems(load_prepared_model(mixed))
    record = build_stage(mixed, 0, x86(), tmp_path / "build", regions=tuple(problems.values()))
    artifact = record.artifact
    assert artifact is not None, record.error
    assert [p.fallback for p in artifact.parts] == [None, "onnxruntime", None, "onnxruntime", None]
    nodes_per_part = [
        [n.name for n in onnx.load(tmp_path / "build" / p.path).graph.node] for p in artifact.parts[1::2]
    ]
    assert nodes_per_part == [["reverse"], ["cumsum"]]
    entry = StageBuild(0, "server", "x86_64", artifact, record.seconds, False)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32), "axis": np.array(1)}
    got, times = run_artifact(tmp_path / "build", entry, feeds, repeats=2)
    want = run_model(mixed_model(), feeds)["y"]
    np.testing.assert_allclose(got["y"], want, rtol=1e-4, atol=1e-4)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_build_failure_not_foreseen_falls_back_for_the_failing_node_only(mixed: Path, tmp_path: Path) -> None:
    """A stage built with no planned regions, where TVM fails: each node is tried alone, and only the
    ones that fail move to onnxruntime."""
    record = build_stage(mixed, 0, x86(), tmp_path / "build", fallback="onnxruntime")
    artifact = record.artifact
    assert artifact is not None, record.error
    moved = {n["node"]: n["reason"] for n in artifact.options["onnxruntime_nodes"]}
    assert sorted(moved) == ["cumsum", "reverse"]
    assert all("TVM failed to build it" in reason for reason in moved.values())
    without = build_stage(mixed, 0, x86(), tmp_path / "plain")
    assert without.artifact is None and "reverse" in without.error


def test_endpoint_metadata_names_the_onnxruntime_nodes(mixed: Path, make_cluster, tmp_path: Path) -> None:
    from nndeploy.runtime.chain import model_spec

    problems = compiler_problems(load_prepared_model(mixed))
    the_plan = plan(load_graph(mixed), make_cluster(servers(1)), "latency", None, problems)
    planned = dict(model_spec(the_plan, ["127.0.0.1:1"]).properties)
    assert planned["stage_0_executor"] == "tvm+onnxruntime"
    assert [n["node"] for n in json.loads(planned["onnxruntime_nodes"])] == ["reverse", "cumsum"]
    whole = FallbackNode("x", "Y", "z")
    assert whole.to_dict() == {"node": "x", "op_type": "Y", "reason": "z"}
    record = build_stage(mixed, 0, x86(), tmp_path / "b", fallback="onnxruntime")
    onnx_only = StageBuild(0, "server-0", "x86_64", record.artifact, 0.0, False)
    manifest = Manifest("plan.json", str(mixed), "0" * 64, "0.27", (onnx_only,))
    built = dict(model_spec(the_plan, ["127.0.0.1:1"], manifest=manifest).properties)
    assert built["stage_0_executor"] == "tvm+onnxruntime"
    assert {n["reason"].split(":")[0] for n in json.loads(built["onnxruntime_nodes"])} == {
        "TVM failed to build it"
    }


@pytest.mark.parametrize(
    ("op", "attributes"),
    [("Celu", {"alpha": 0.7}), ("Mish", {}), ("HardSwish", {}), ("ThresholdedRelu", {"alpha": 0.3})],
)
def test_ops_tvm_lacks_are_expanded_into_their_standard_definition(op: str, attributes: dict) -> None:
    """The expansion computes what onnxruntime computes on the original node, and TVM then imports it."""
    from nndeploy.oracle import run_model
    from nndeploy.targets.frontend.expansion import expand_functions
    from nndeploy.targets.frontend.ops import tvm_onnx_ops

    node = helper.make_node(op, ["x"], ["y"], name="op", **attributes)
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    supported = tvm_onnx_ops()
    expanded = expand_functions(model, supported - {op})
    assert op not in {n.op_type for n in expanded.graph.node}
    assert {n.op_type for n in expanded.graph.node} <= supported
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(run_model(expanded, {"x": x})["y"], run_model(model, {"x": x})["y"], atol=1e-6)


def test_local_functions_are_inlined(tmp_path: Path) -> None:
    from nndeploy.oracle import run_model
    from nndeploy.targets.frontend.expansion import expand_functions

    body = helper.make_function(
        "local",
        "AddTwice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["t"]), helper.make_node("Add", ["t", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("AddTwice", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=[body]
    )
    inlined = expand_functions(model, {"Add"})
    assert [n.op_type for n in inlined.graph.node] == ["Add", "Add"] and not inlined.functions
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run_model(inlined, {"x": x})["y"], 3 * x)


def inner_sequence_model() -> onnx.ModelProto:
    """x -> Relu -> SplitToSequence -> (a sequence) -> ConcatFromSequence -> Sigmoid -> y: tensors at
    the model's edges, a sequence inside."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("SplitToSequence", ["r"], ["s"], name="split", axis=1),
        helper.make_node("ConcatFromSequence", ["s"], ["c"], name="concat", axis=1),
        helper.make_node("Sigmoid", ["c"], ["y"], name="sig"),
    ]
    graph = helper.make_graph(
        nodes,
        "inner_sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_sequence_inside_the_model_stays_on_onnxruntime_inside_one_stage(
    tmp_path: Path, make_cluster
) -> None:
    import dataclasses

    path = tmp_path / "inner.onnx"
    onnx.save(inner_sequence_model(), path)
    problems = compiler_problems(load_prepared_model(path))
    assert {"split", "concat"} <= set(problems)
    assert "'s', a sequence" in problems["split"].reason
    graph = load_graph(path)
    assert graph.non_tensors == frozenset({"s"})
    cluster = make_cluster(servers(2, gbps=400, latency_ms=0.0001))
    carried = [
        {i.name for s in plan(g, cluster, "throughput", None, problems).stages for i in s.inputs}
        for g in (graph, dataclasses.replace(graph, non_tensors=frozenset()))
    ]
    assert "s" in carried[1]  # left free, the search would hand the sequence from one server to the next
    assert "s" not in carried[0]
