"""The planner on real graphs: sensible plans, constraints respected, predictions consistent."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from nndeploy.errors import PlanError
from nndeploy.graph import load_graph
from nndeploy.partitioner.planner import plan
from nndeploy.planfile import read_plan, write_plan
from nndeploy.types import Graph, Plan

from conftest import servers
from models import chain_model, light_model_path, multi_output_model, skip_model

CLUSTERS = Path(__file__).resolve().parents[2] / "examples" / "clusters"


def graph_of(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Graph:
    path = tmp_path / name
    onnx.save(model, path)
    return load_graph(path)


def assert_consistent(graph: Graph, result: Plan) -> None:
    """Stages cover every node once, in a topological order, and hand over exactly what the next needs."""
    placed = [name for stage in result.stages for name in stage.nodes]
    assert sorted(placed) == sorted(node.name for node in graph.nodes)
    position = {name: i for i, name in enumerate(placed)}
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor in producer:
                assert position[producer[tensor]] < position[node.name]
    for before, after in zip(result.stages, result.stages[1:], strict=False):
        assert [t.name for t in before.outputs] == [t.name for t in after.inputs]
    assert {t.name for t in result.stages[-1].outputs} == set(graph.outputs)
    assert {t.name for t in result.stages[0].inputs} <= set(graph.inputs)
    devices = [stage.device for stage in result.stages]
    assert len(devices) == len(set(devices))
    for stage in result.stages:
        assert stage.mem_bytes <= result.cluster.device(stage.device).mem_bytes


def test_two_equal_servers_split_resnet50_evenly(make_cluster) -> None:
    graph = load_graph(light_model_path("resnet50"))
    result = plan(graph, make_cluster(servers(2)), "throughput")
    assert_consistent(graph, result)
    assert len(result.stages) == 2
    times = sorted(stage.compute_ms for stage in result.stages)
    assert times[1] / times[0] < 1.15, times
    single = plan(graph, make_cluster(servers(1)), "throughput")
    assert result.throughput_per_s > 1.7 * single.throughput_per_s


def test_slow_edge_link_keeps_big_activations_off_it(make_cluster) -> None:
    graph = load_graph(light_model_path("resnet50"))
    cluster = make_cluster(
        {
            "devices": [
                {"name": "camera", "profile": "raspberry-pi-5"},
                {"name": "server", "profile": "x86-avx512-server"},
            ],
            "links": [{"between": ["camera", "server"], "gbps": 0.05, "latency_ms": 3.0}],
            "input_at": "camera",
            "output_to": "server",
        }
    )
    for objective in ("throughput", "latency"):
        result = plan(graph, cluster, objective)
        assert_consistent(graph, result)
        sent = (
            sum(t.nbytes for t in result.stages[0].outputs)
            if result.stages[0].device == "camera"
            else sum(t.nbytes for t in result.inputs)
        )
        # What crosses the slow link is no bigger than the raw image and far below the largest activation.
        assert sent <= sum(t.nbytes for t in result.inputs)
        assert sent < max(node.out_bytes for node in graph.nodes) / 4


def test_latency_and_throughput_objectives_trade_off(make_cluster) -> None:
    graph = load_graph(light_model_path("squeezenet"))
    cluster = make_cluster(servers(3, gbps=10.0))
    fast = plan(graph, cluster, "latency")
    wide = plan(graph, cluster, "throughput")
    assert_consistent(graph, fast)
    assert_consistent(graph, wide)
    assert fast.latency_ms <= wide.latency_ms + 1e-9
    assert wide.throughput_per_s >= fast.throughput_per_s - 1e-9
    assert len(wide.stages) > 1


def test_predictions_add_up(make_cluster, tmp_path: Path) -> None:
    graph = graph_of(chain_model(), tmp_path)
    cluster = make_cluster(
        {
            "devices": [
                {"name": "edge", "profile": "raspberry-pi-5"},
                {"name": "server", "profile": "x86-avx2-server"},
            ],
            "links": [{"between": ["edge", "server"], "gbps": 1.0, "latency_ms": 0.5}],
            "input_at": "edge",
            "output_to": "edge",
        }
    )
    result = plan(graph, cluster, "latency")
    total = result.input_transfer_ms + sum(s.compute_ms + s.transfer_ms for s in result.stages)
    assert result.latency_ms == pytest.approx(total, rel=1e-9)
    slowest = max([result.input_transfer_ms] + [max(s.compute_ms, s.transfer_ms) for s in result.stages])
    assert result.throughput_per_s == pytest.approx(1e3 / slowest, rel=1e-6)


@pytest.mark.parametrize("builder", [skip_model, multi_output_model], ids=["skip", "multi_output"])
def test_forwarded_tensors_cross_every_cut(builder, make_cluster, tmp_path: Path) -> None:
    graph = graph_of(builder(), tmp_path)
    # Slow compute everywhere and fast links: the throughput plan uses every device.
    result = plan(
        graph, make_cluster(servers(3, profile="raspberry-pi-5", gbps=400.0, latency_ms=1e-4)), "throughput"
    )
    assert_consistent(graph, result)
    assert len(result.stages) >= 2


def test_device_without_an_op_never_gets_it(make_cluster, tmp_path: Path) -> None:
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    base = (
        Path(__file__).resolve().parents[2] / "targets" / "devices" / "profiles" / "x86-avx512-server.yaml"
    ).read_text()
    no_relu = base.replace("name: x86-avx512-server", "name: npu-no-relu").replace(
        "ops: null", "ops: [MatMul, Add]"
    )
    assert "npu-no-relu" in no_relu and "[MatMul, Add]" in no_relu
    (profile_dir / "npu.yaml").write_text(no_relu)
    graph = graph_of(chain_model(), tmp_path)
    cluster = make_cluster(
        {
            "devices": [
                {"name": "npu", "profile": "npu-no-relu"},
                {"name": "cpu", "profile": "raspberry-pi-5"},
            ],
            "default_link": {"gbps": 100, "latency_ms": 0.001},
        },
        (profile_dir,),
    )
    result = plan(graph, cluster, "throughput")
    ops = {node.name: node.op_type for node in graph.nodes}
    for stage in result.stages:
        if stage.device == "npu":
            assert all(ops[name] in ("MatMul", "Add") for name in stage.nodes)
    only_npu = make_cluster({"devices": [{"name": "npu", "profile": "npu-no-relu"}]}, (profile_dir,))
    with pytest.raises(PlanError, match=r"no device in cluster .* supports: Relu"):
        plan(graph, only_npu, "throughput")


def test_memory_capacity_is_respected_and_reported(make_cluster, tmp_path: Path) -> None:
    graph = load_graph(light_model_path("vgg19"))  # ~550 MB of weights
    profile_dir = tmp_path / "profiles"
    profile_dir.mkdir()
    base = (
        Path(__file__).resolve().parents[2] / "targets" / "devices" / "profiles" / "raspberry-pi-5.yaml"
    ).read_text()
    small = base.replace("name: raspberry-pi-5", "name: tiny-board").replace("mem_gib: 8", "mem_gib: 0.5")
    assert "mem_gib: 0.5" in small
    (profile_dir / "tiny.yaml").write_text(small)
    three = make_cluster(
        {"devices": [{"name": f"b{i}", "profile": "tiny-board"} for i in range(3)]}, (profile_dir,)
    )
    result = plan(graph, three, "latency")
    assert len(result.stages) >= 2  # the weights alone overflow one 0.5 GiB board
    assert_consistent(graph, result)
    one = make_cluster({"devices": [{"name": "b0", "profile": "tiny-board"}]}, (profile_dir,))
    with pytest.raises(PlanError, match="does not fit"):
        plan(graph, one, "latency")


def test_plan_json_round_trips_through_the_schema(make_cluster, tmp_path: Path) -> None:
    graph = graph_of(chain_model(), tmp_path)
    result = plan(graph, make_cluster(servers(2)), "throughput")
    path = write_plan(result, tmp_path / "out" / "plan.json")
    again = read_plan(path)
    assert again == result
    broken = path.read_text().replace('"objective": "throughput"', '"objective": "fastest"')
    path.write_text(broken)
    with pytest.raises(PlanError, match="objective"):
        read_plan(path)


def test_unknown_objective_is_refused(make_cluster, tmp_path: Path) -> None:
    graph = graph_of(chain_model(), tmp_path)
    with pytest.raises(PlanError, match="unknown objective 'fastest'"):
        plan(graph, make_cluster(servers(1)), "fastest")
