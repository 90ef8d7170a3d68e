"""Golden plans: resnet50 from the onnx wheel on every example cluster, in the stable text form.

A change to the cost model, the registry or the search shows up here as a readable diff. After an intended
change, regenerate with:  NNDEPLOY_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nndeploy.graph import load_graph
from nndeploy.partitioner.planner import plan
from nndeploy.planfile import plan_text
from nndeploy.targets.devices.cluster import load_cluster

from models import light_model_path

GOLDEN = Path(__file__).parents[1] / "golden"
CLUSTERS = sorted((Path(__file__).resolve().parents[2] / "examples" / "clusters").glob("*.yaml"))


@pytest.fixture(scope="module")
def resnet50():
    return load_graph(light_model_path("resnet50"))


@pytest.mark.parametrize("cluster_path", CLUSTERS, ids=[p.stem for p in CLUSTERS])
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_resnet50_plans_match_golden(resnet50, cluster_path: Path, objective: str) -> None:
    text = plan_text(plan(resnet50, load_cluster(cluster_path), objective))
    golden = GOLDEN / f"resnet50.{cluster_path.stem}.{objective}.txt"
    if os.environ.get("NNDEPLOY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.is_file(), f"missing {golden.name}: run with NNDEPLOY_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


@pytest.mark.parametrize("cluster_path", CLUSTERS, ids=[p.stem for p in CLUSTERS])
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_no_stage_is_worth_less_than_its_hop(resnet50, cluster_path: Path, objective: str) -> None:
    # A hop costs the data plane a fixed time (partitioner.cost.DEFAULT_HOP): a one-op stage (resnet50's
    # Softmax, 0.002 ms) would cost more than it saves.
    result = plan(resnet50, load_cluster(cluster_path), objective)
    assert all(len(stage.nodes) > 1 for stage in result.stages), [len(s.nodes) for s in result.stages]


def test_a_free_hop_in_cluster_yaml_brings_back_the_split_it_was_not_worth(resnet50, tmp_path: Path) -> None:
    import yaml

    gpu_server = next(p for p in CLUSTERS if p.stem == "cpu-gpu-server")
    described = yaml.safe_load(gpu_server.read_text())
    with_hop = plan(resnet50, load_cluster(gpu_server), "latency")
    (tmp_path / "free.yaml").write_text(
        yaml.safe_dump({**described, "hop": {"fixed_ms": 0, "ms_per_mib": 0}})
    )
    free = plan(resnet50, load_cluster(tmp_path / "free.yaml"), "latency")
    assert len(with_hop.stages) == 1 and [len(s.nodes) for s in free.stages] == [175, 1]  # Softmax alone
    assert free.cluster.hop is not None and free.cluster.hop.fixed_ms == 0
    assert free.latency_ms < with_hop.latency_ms
