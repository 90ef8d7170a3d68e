"""Plan check: the top-k candidate plans (exact, distinct, ranked), timing them on this host, and
`nndeploy plan --check-top K` keeping the best measured one."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from nndeploy.cli.plan_check import check_plans
from nndeploy.errors import PlanError
from nndeploy.graph import load_graph
from nndeploy.partitioner.candidates import candidate_plans, device_subsets, solve_on_subset
from nndeploy.partitioner.planner import plan, setup
from nndeploy.partitioner.search import solve
from nndeploy.planfile import read_plan
from nndeploy.targets.measure import plan_check
from nndeploy.targets.measure.profiling import host_machine, why_not_measurable
from nndeploy.types import Graph, Plan

from conftest import servers
from models import chain_model, conv_model, diamond_model, light_model_path, skip_model

# Fast links: splitting the MLP below over both servers pays, so it has three distinct candidates.
AVX2_SERVERS = servers(2, profile="x86-avx2-server", gbps=100, latency_ms=0.001)
MIXED = {
    "name": "mixed",
    "devices": [
        {"name": "camera", "profile": "raspberry-pi-5"},
        {"name": "host", "profile": "x86-avx2-server"},
        {"name": "gpu", "profile": "nvidia-t4"},
    ],
    "links": [{"between": ["camera", "host"], "gbps": 1, "latency_ms": 1.0}],
    "default_link": {"gbps": 16, "latency_ms": 0.01},
}


def mlp_model(layers: int = 6, width: int = 512) -> onnx.ModelProto:
    """x[32, width] -> (MatMul -> Relu) x layers: about a millisecond per run on two cores."""
    rng = np.random.default_rng(7)
    nodes, weights, prev = [], [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
        scale = 1 / np.sqrt(width)
        weights.append(
            numpy_helper.from_array(rng.normal(0, scale, (width, width)).astype(np.float32), f"w{i}")
        )
        prev = f"r{i}"
    nodes[-1].output[0] = "y"
    shape = [32, width]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def graph_of(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Graph:
    path = tmp_path / name
    onnx.save(model, path)
    return load_graph(path)


def assignment(the_plan: Plan) -> frozenset[tuple[str, frozenset[str]]]:
    return frozenset((stage.device, frozenset(stage.nodes)) for stage in the_plan.stages)


def rank_key(the_plan: Plan) -> tuple[float, ...]:
    if the_plan.objective == "latency":
        return (the_plan.latency_ms,)
    return (the_plan.batch * 1e3 / the_plan.throughput_per_s, the_plan.latency_ms)


def avx2_here() -> bool:
    from nndeploy.targets.devices.registry import device_from_profile, load_profiles

    return why_not_measurable(device_from_profile(load_profiles()["x86-avx2-server"], "x")) is None


needs_avx2 = pytest.mark.skipif(not avx2_here(), reason="this host cannot run x86-avx2-server natively")


@pytest.mark.parametrize("builder", [chain_model, diamond_model, skip_model, conv_model])
@pytest.mark.parametrize("cluster", [servers(3), MIXED], ids=["3-servers", "mixed"])
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_candidates_are_distinct_ranked_and_start_with_the_plan(
    builder: Callable[[], onnx.ModelProto],
    cluster: dict[str, Any],
    objective: str,
    make_cluster: Callable[..., Any],
    tmp_path: Path,
) -> None:
    graph = graph_of(builder(), tmp_path)
    the_cluster = make_cluster(cluster)
    best = plan(graph, the_cluster, objective)
    found = candidate_plans(graph, the_cluster, objective, None, 6)
    assert 2 <= len(found) <= 6
    assert assignment(found[0]) == assignment(best)
    assert found[0].latency_ms == best.latency_ms and found[0].throughput_per_s == best.throughput_per_s
    assert len({assignment(p) for p in found}) == len(found)
    keys = [rank_key(p) for p in found]
    for before, after in itertools.pairwise(keys):
        assert before[0] <= after[0] * (1 + 1e-9), keys
    for the_plan in found:
        assert the_plan.objective == objective
        assert sorted(n for s in the_plan.stages for n in s.nodes) == sorted(n.name for n in graph.nodes)
    assert [assignment(p) for p in candidate_plans(graph, the_cluster, objective, None, 2)] == [
        assignment(p) for p in found[:2]
    ]


def test_k_is_respected_and_checked(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    graph = graph_of(conv_model(), tmp_path)
    the_cluster = make_cluster(servers(3))
    assert len(candidate_plans(graph, the_cluster, "throughput", None, 1)) == 1
    with pytest.raises(PlanError, match="at least 1"):
        candidate_plans(graph, the_cluster, "throughput", None, 0)


def test_subset_solutions_use_only_the_subset(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    graph = graph_of(skip_model(), tmp_path)
    the_cluster = make_cluster({**MIXED, "input_at": "camera", "output_to": "gpu"})
    problem = setup(graph, the_cluster, "throughput").orders[0].problem
    for subset in device_subsets(3):
        solution = solve_on_subset(problem, subset, "throughput")
        assert solution is not None
        assert {device for _, _, device in solution.segments} <= set(subset)
    full = solve(problem, "throughput")
    assert full is not None
    whole = solve_on_subset(problem, (0, 1, 2), "throughput")
    assert whole is not None and whole.bottleneck_ms == pytest.approx(full.bottleneck_ms)


def test_device_subsets_are_capped() -> None:
    assert device_subsets(1) == []
    assert len(device_subsets(3)) == 6 and len(device_subsets(4)) == 14
    six = device_subsets(6)
    assert len(six) <= 24 and len(set(six)) == len(six)
    assert all((d,) in six for d in range(6))


def test_six_devices_stay_fast(make_cluster: Callable[..., Any]) -> None:
    graph = load_graph(light_model_path("squeezenet"))
    the_cluster = make_cluster(servers(6, gbps=10))
    started = time.perf_counter()
    found = candidate_plans(graph, the_cluster, "throughput", None, 5)
    assert time.perf_counter() - started < 10
    assert len(found) == 5 and assignment(found[0]) == assignment(plan(graph, the_cluster, "throughput"))


def test_measured_figures_add_predicted_transfers(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    graph = graph_of(conv_model(), tmp_path)
    the_plan = candidate_plans(graph, make_cluster(servers(2, gbps=0.01, latency_ms=1)), "throughput")[0]
    stage_ms = [2.0 + i for i in range(len(the_plan.stages))]
    measured = plan_check.measured_figures(the_plan, stage_ms, [1] * len(stage_ms))
    transfers = the_plan.input_transfer_ms + sum(s.transfer_ms for s in the_plan.stages)
    assert measured.latency_ms == pytest.approx(sum(stage_ms) + transfers)
    slowest = max(*stage_ms, the_plan.input_transfer_ms, *(s.transfer_ms for s in the_plan.stages))
    assert measured.throughput_per_s == pytest.approx(1e3 / slowest)


@needs_avx2
def test_stages_are_timed_on_this_host(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    graph = load_graph(path)
    result = check_plans(path, graph, make_cluster(AVX2_SERVERS), "throughput", None, 3)
    assert len(result.plans) == len(result.measurements) == 3
    assert 0 <= result.best < 3 and result.chosen is result.plans[result.best]
    for the_plan, measured in zip(result.plans, result.measurements, strict=True):
        assert len(measured.stage_ms) == len(the_plan.stages)
        assert all(0 < ms < 1000 for ms in measured.stage_ms)
        assert measured.latency_ms >= sum(measured.stage_ms)
        assert np.isfinite(measured.throughput_per_s) and measured.throughput_per_s > 0
        assert set(measured.threads) <= set(range(1, 17))


def test_foreign_devices_are_refused_in_one_line(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    graph = graph_of(conv_model(), tmp_path)
    the_cluster = make_cluster({**MIXED, "input_at": "camera"})
    found = candidate_plans(graph, the_cluster, "latency", None, 5)
    assert any(s.device == "camera" for p in found for s in p.stages)
    with pytest.raises(plan_check.PlanCheckError) as caught:
        plan_check.refuse_unrunnable(found, frozenset({"avx2", "fma"}))
    message = str(caught.value)
    assert "\n" not in message and "device 'camera' (raspberry-pi-5)" in message and "aarch64" in message


def nndeploy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nndeploy", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@needs_avx2
def test_check_top_cli_keeps_a_measured_candidate(make_cluster: Callable[..., Any], tmp_path: Path) -> None:
    model, cluster = tmp_path / "mlp.onnx", tmp_path / "cluster.yaml"
    onnx.save(mlp_model(), model)
    cluster.write_text(yaml.safe_dump(AVX2_SERVERS))
    done = nndeploy("plan", model, "--cluster", cluster, "--check-top", "3", "-o", tmp_path / "p.json")
    assert done.returncode == 0, done.stderr
    assert "top 3 candidate plans (throughput): predicted vs measured" in done.stdout
    assert "links between devices cannot be measured" in done.stdout
    assert "the measured best" in done.stdout and "plan written to" in done.stdout
    kept = read_plan(tmp_path / "p.json")
    found = candidate_plans(load_graph(model), make_cluster(AVX2_SERVERS), "throughput", None, 3)
    assert assignment(kept) in [assignment(p) for p in found]
    assert json.loads((tmp_path / "p.json").read_text())["objective"] == "throughput"


@pytest.mark.skipif(host_machine() == "aarch64", reason="an aarch64 host runs raspberry-pi-5 natively")
def test_check_top_cli_refuses_an_aarch64_stage(tmp_path: Path) -> None:
    model, cluster = tmp_path / "conv.onnx", tmp_path / "cluster.yaml"
    onnx.save(conv_model(), model)
    cluster.write_text(yaml.safe_dump({**MIXED, "input_at": "camera", "output_to": "camera"}))
    done = nndeploy("plan", model, "--cluster", cluster, "--check-top", "3", "-o", tmp_path / "p.json")
    assert done.returncode == 2, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot time the candidate plans")
    assert "device 'camera' (raspberry-pi-5)" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "p.json").exists()
