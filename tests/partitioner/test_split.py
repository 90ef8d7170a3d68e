"""split: the stage models chained in onnxruntime reproduce the original model (the first oracle check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from nndeploy.errors import SplitError
from nndeploy.graph import load_graph, load_prepared_model
from nndeploy.oracle import assert_matches_onnxruntime, run_chain
from nndeploy.partitioner.planner import plan
from nndeploy.partitioner.split import split, write_stages
from nndeploy.types import Plan, Stage

from conftest import servers
from models import chain_model, diamond_model, light_model_path, multi_output_model, random_inputs, skip_model

LIGHT_FAST = ["squeezenet", "shufflenet", "inception_v1", "bvlc_alexnet", "zfnet512"]
LIGHT_SLOW = ["resnet50", "densenet121", "inception_v2", "vgg19"]


def split_and_check(path: Path, cluster, tmp_path: Path, input_shapes=None, min_stages: int = 2) -> Plan:
    """Plan `path` over `cluster`, cut it, chain the stages in onnxruntime and compare with the whole."""
    graph = load_graph(path, input_shapes)
    result = plan(graph, cluster, "throughput")
    assert len(result.stages) >= min_stages
    stage_paths = write_stages(split(load_prepared_model(path, input_shapes), result), tmp_path / "stages")
    assert [p.name for p in stage_paths] == [f"stage_{i}.onnx" for i in range(len(result.stages))]
    for stage, stage_path in zip(result.stages, stage_paths, strict=True):
        stage_model = onnx.load(stage_path)
        onnx.checker.check_model(stage_model)
        assert [n.name for n in stage_model.graph.node] == list(stage.nodes)
        sent = {t.name for t in stage.outputs} - set(stage.forwarded)
        assert {o.name for o in stage_model.graph.output} == sent
    original = onnx.load(path)
    inputs = random_inputs(original, seed=1)
    if input_shapes:
        rng = np.random.default_rng(1)
        inputs = {
            vi.name: _random_tensor(rng, vi, input_shapes[vi.name])
            for vi in original.graph.input
            if vi.name in input_shapes
        }
    chained = run_chain([str(p) for p in stage_paths], inputs)
    assert_matches_onnxruntime(str(path), chained, inputs, atol=1e-5)
    return result


def _random_tensor(rng: np.random.Generator, vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> np.ndarray:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 2 if "mask" in vi.name else 100, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize(
    "builder",
    [chain_model, diamond_model, skip_model, multi_output_model],
    ids=["chain", "diamond", "skip", "multi"],
)
def test_small_graphs_split_and_match(builder, make_cluster, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(builder(), path)
    split_and_check(
        path, make_cluster(servers(3, profile="raspberry-pi-5", gbps=400.0, latency_ms=1e-4)), tmp_path
    )


@pytest.mark.parametrize("name", ["camera_cnn", "tiny_bert"])
def test_example_models_split_and_match(name, example_models, make_cluster, tmp_path: Path) -> None:
    shapes = {"input_ids": (2, 32), "attention_mask": (2, 32)} if name == "tiny_bert" else None
    split_and_check(example_models[name], make_cluster(servers(3, gbps=100.0)), tmp_path, shapes)


@pytest.mark.parametrize("name", LIGHT_FAST)
def test_model_zoo_splits_and_matches(name, make_cluster, tmp_path: Path) -> None:
    split_and_check(light_model_path(name), make_cluster(servers(3, gbps=100.0)), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_SLOW)
def test_big_model_zoo_splits_and_matches(name, make_cluster, tmp_path: Path) -> None:
    split_and_check(light_model_path(name), make_cluster(servers(3, gbps=100.0)), tmp_path)


def test_plan_naming_unknown_nodes_is_refused(make_cluster, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(chain_model(), path)
    result = plan(load_graph(path), make_cluster(servers(1)), "throughput")
    stage = result.stages[0]
    renamed = Stage(**{**stage.__dict__, "nodes": ("no_such_node", *stage.nodes[1:])})
    bad = Plan(**{**result.__dict__, "stages": (renamed,)})
    with pytest.raises(SplitError, match="no_such_node"):
        split(load_prepared_model(path), bad)


def test_stages_out_of_order_are_refused(make_cluster, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(chain_model(), path)
    result = plan(
        load_graph(path),
        make_cluster(servers(3, profile="raspberry-pi-5", gbps=400.0, latency_ms=1e-4)),
        "throughput",
    )
    assert len(result.stages) >= 2
    swapped = Plan(**{**result.__dict__, "stages": tuple(reversed(result.stages))})
    with pytest.raises(SplitError, match="cycle"):
        split(load_prepared_model(path), swapped)
