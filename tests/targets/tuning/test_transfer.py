"""Schedules carried over to workloads never tuned (tuning.transfer), the knowledge that ships in the
package (tuning.shipped) and the cost model that ranks carried-over candidates (tuning.cost_model)."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import nndeploy

from nndeploy.errors import TuningDatabaseError
from nndeploy.targets.tuning import shipped as shipped_knowledge
from nndeploy.targets.tuning import transfer

ROOT = Path(__file__).parents[3]


def conv_relu(channels: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """x[1,C,S,S] -> Conv 3x3 (C) + bias -> Relu: one fused conv task whose shape follows C and S."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32), "w"
        ),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def server() -> Any:
    from nndeploy.targets.devices.registry import device_from_profile, load_profiles

    return device_from_profile(load_profiles()["x86-avx2-server"], "server")


def tasks_of(model: onnx.ModelProto) -> list[tuple[str, Any]]:
    import tvm

    from nndeploy.targets.tuning.tuner import tuning_module

    device = server()
    return transfer.workload_tasks(tuning_module(model, device), tvm.target.Target(device.tvm_target))


@pytest.mark.parametrize(
    ("extent", "old", "innermost"),
    [
        (56, [1, 7, 2, 4], 64),
        (40, [2, 2, 5, 2], 64),
        (7, [1, 1, 1, 7], 4),
        (512, [4, 4, 2, 16], 16),
        (1, [1, 1], 0),
    ],
)
def test_refitted_tiles_multiply_to_the_new_extent(extent: int, old: list[int], innermost: int) -> None:
    factors = transfer.fit_tiles(extent, old, innermost)
    assert len(factors) == len(old)
    assert math.prod(factors) == extent
    assert innermost <= 0 or factors[-1] <= innermost


def test_refitted_tiles_stay_close_to_the_old_ones() -> None:
    assert transfer.fit_tiles(48, [1, 3, 2, 8], 64) == [1, 3, 2, 8]  # the same extent: unchanged
    assert transfer.fit_tiles(96, [1, 3, 2, 8], 64) == [2, 3, 2, 8]  # the outermost takes the growth
    assert transfer.fit_tiles(28, [1, 7, 2, 4], 64) == [1, 7, 1, 4]  # inner factors kept where they divide
    assert transfer.fit_tiles(12, [1, 1, 1, 16], 8) == [2, 1, 1, 6]  # innermost capped at 8: 6 is closest


def test_workloads_of_one_kind_share_a_signature_across_sizes() -> None:
    small, large, other = (tasks_of(conv_relu(c, s)) for c, s in ((8, 16), (16, 24), (8, 16)))
    conv = lambda tasks: next(mod for name, mod in tasks if "conv2d" in name)  # noqa: E731
    assert transfer.signature(conv(small)) == transfer.signature(conv(large))
    assert transfer.shape_of(conv(small)) != transfer.shape_of(conv(large))
    assert transfer.distance(transfer.shape_of(conv(small)), transfer.shape_of(conv(other))) == 0
    matmul = tasks_of(_matmul())
    assert all(transfer.signature(mod) != transfer.signature(conv(small)) for _, mod in matmul)


def _matmul() -> onnx.ModelProto:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_tuning import matmul_model

    return matmul_model(0, "mm")


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with one measured batch of the 8-channel 16x16 conv task (a real, short tuning run)."""
    from nndeploy.targets.tuning.database import target_db_dir
    from nndeploy.targets.tuning.tuner import extract_tasks, tune_tasks

    root = tmp_path_factory.mktemp("transfer-db")
    device = server()
    db_dir = target_db_dir(root, device.tvm_target)
    tasks = extract_tasks([(0, conv_relu(8, 16))], device, db_dir)
    conv = [task for task in tasks if "conv2d" in task.name]
    assert tune_tasks(conv, device, db_dir, budget_s=1, trials_per_task=16) >= 1
    return root


@pytest.mark.slow
def test_a_shape_never_tuned_gets_a_transferred_schedule_and_keeps_the_answer(
    tuned_db: Path, tmp_path: Path
) -> None:
    from nndeploy.oracle import random_inputs, session
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import StageBuild
    from nndeploy.targets.build.compiled import build_compiled
    from nndeploy.targets.tuning.database import target_db_dir

    device = server()
    path = tmp_path / "wide.onnx"
    onnx.save(conv_relu(16, 24, seed=1), path)  # other channels and size: not in the database
    record = build_compiled(path, 0, device, tmp_path / "build", target_db_dir(tuned_db, device.tvm_target))
    assert record.artifact is not None, record.error
    assert record.artifact.options["schedules"]["transferred"] >= 1
    assert record.artifact.options["schedules"]["tuned"] == 0
    entry = StageBuild(0, "server", "x86_64", record.artifact, record.seconds, cached=False)
    feed = random_inputs(record.artifact.inputs, 0)
    got, _ = run_artifact(tmp_path / "build", entry, feed)
    (expected,) = session(str(path), 1).run(None, feed)
    np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_packed_knowledge_loads_only_what_a_stage_needs_and_ranks_with_its_cost_model(
    tuned_db: Path, tmp_path: Path
) -> None:
    import tvm

    from nndeploy.targets.tuning.cost_model import ranker

    device = server()
    summary = shipped_knowledge.pack(tuned_db, device.tvm_target, ["conv_relu"], root=tmp_path)
    assert summary["workloads"] == 1 and summary["trials"] >= 1 and summary["cost_model_records"] >= 1
    folder = shipped_knowledge.shipped_folder(device.tvm_target, root=tmp_path)
    assert folder is not None and (folder / shipped_knowledge.COST_MODEL).is_file()
    # another core count of the same CPU finds the same folder
    assert shipped_knowledge.shipped_folder({**device.tvm_target, "num-cores": 3}, root=tmp_path) == folder
    assert shipped_knowledge.shipped_folder({**device.tvm_target, "mcpu": "znver3"}, root=tmp_path) is None
    knowledge = shipped_knowledge._knowledge(folder)
    ((_, conv),) = [(n, m) for n, m in tasks_of(conv_relu(16, 24, seed=1)) if "conv2d" in n]
    keys = transfer.wanted_keys([conv], knowledge.index)
    assert len(keys) == 1  # the nearest (only) workload of its kind
    assert transfer.wanted_keys([m for n, m in tasks_of(_matmul())], knowledge.index) == set()
    ((cold, database),) = shipped_knowledge.subset(knowledge, keys)
    assert not cold
    sources = transfer.sources_of(database)
    target = tvm.target.Target(device.tvm_target)
    rank = ranker(knowledge.cost_model, device.tvm_target)
    found = transfer.transfer(conv, sources, target, rank)
    assert found is not None and found.candidates >= 1 and found.estimate_s > 0

    (folder / shipped_knowledge.COST_MODEL).write_text("{not a model")
    with pytest.raises(TuningDatabaseError, match="cost model"):
        ranker(folder / shipped_knowledge.COST_MODEL, device.tvm_target)
    records = folder / "database_tuning_record.json.gz"
    records.write_bytes(records.read_bytes()[:40])  # truncated
    shipped_knowledge._lines.cache_clear()
    with pytest.raises(TuningDatabaseError, match=r"shipped tuning database .* cannot be read"):
        shipped_knowledge.subset(shipped_knowledge._knowledge(folder), keys)


def test_the_package_ships_knowledge_for_the_avx512_server_and_not_the_held_out_models() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import held_out

    from nndeploy.targets.devices.registry import load_profiles

    target = load_profiles()["x86-avx512-server"].tvm_target
    folder = shipped_knowledge.shipped_folder(target)
    assert folder is not None
    corpus = json.loads((folder / shipped_knowledge.CORPUS).read_text())
    assert corpus["trials"] >= corpus["workloads"] > 0
    assert not set(corpus["models"]) & set(held_out.MODELS)
    index = json.loads((folder / shipped_knowledge.INDEX).read_text())
    with gzip.open(folder / "database_workload.json.gz", "rt") as handle:
        warm = sum(1 for line in handle if line.strip())
    assert sum(key.startswith("warm:") for key in index) == warm
    size = sum(p.stat().st_size for p in shipped_knowledge.SHIPPED_ROOT.rglob("*") if p.is_file())
    assert size <= 50 << 20


def test_compile_uses_the_shipped_knowledge_unless_told_not_to(tmp_path: Path) -> None:
    onnx.save(conv_relu(8, 16), tmp_path / "m.onnx")
    (tmp_path / "c.yaml").write_text("name: one\ndevices:\n  - {name: server, profile: x86-avx512-server}\n")
    plan = tmp_path / "plan.json"
    assert nndeploy("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "c.yaml", "-o", plan).returncode == 0
    for flag, pipeline in (("--shipped", "llvm-metaschedule"), ("--no-shipped", "llvm-default")):
        build = tmp_path / flag
        done = nndeploy("compile", plan, "-o", build, flag, "--no-check")
        assert done.returncode == 0, done.stderr
        options = json.loads((build / "manifest.json").read_text())["stages"][0]["artifact"]["options"]
        assert options["pipeline"] == pipeline
        assert ("kernels:" in done.stdout) == (flag == "--shipped")
        assert ("shipped_db" in options) == (flag == "--shipped")


@pytest.mark.slow
def test_tunings_first_batch_of_a_new_shape_is_the_transferred_schedules(
    tuned_db: Path, tmp_path: Path
) -> None:
    import shutil

    from nndeploy.targets.tuning.database import target_db_dir, trials_per_workload
    from nndeploy.targets.tuning.tuner import extract_tasks, tune_tasks

    device = server()
    db_dir = target_db_dir(tmp_path, device.tvm_target)
    shutil.copytree(target_db_dir(tuned_db, device.tvm_target), db_dir, ignore=shutil.ignore_patterns("logs"))
    before = trials_per_workload(db_dir)
    tasks = [t for t in extract_tasks([(0, conv_relu(16, 24, seed=1))], device, db_dir) if "conv2d" in t.name]
    assert tasks[0].trials_done == 0
    measured = tune_tasks(tasks, device, db_dir, budget_s=1, trials_per_task=64)
    # one batch: the source workload's TOP_K records re-applied (a replay batch would be 16 random ones)
    assert measured == transfer.TOP_K
    after = trials_per_workload(db_dir)
    assert after[tasks[0].workload] == transfer.TOP_K
    assert {k: v for k, v in after.items() if k in before} == before


@pytest.mark.slow
def test_a_task_within_reach_of_its_predicted_best_goes_on_when_no_other_needs_the_budget(
    tuned_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from nndeploy.targets.tuning import seeds
    from nndeploy.targets.tuning.database import target_db_dir, trials_per_workload
    from nndeploy.targets.tuning.tuner import extract_tasks, tune_tasks

    device = server()
    db_dir = target_db_dir(tmp_path, device.tvm_target)
    shutil.copytree(target_db_dir(tuned_db, device.tvm_target), db_dir, ignore=shutil.ignore_patterns("logs"))
    tasks = [t for t in extract_tasks([(0, conv_relu(16, 24, seed=1))], device, db_dir) if "conv2d" in t.name]
    assert seeds.reached(1.02, 1.0) and not seeds.reached(1.05, 1.0) and not seeds.reached(1.0, None)
    # Any measured time counts as within reach: after its transferred first batch the task is within
    # reach, and as no other task needs the budget it goes on searching, up to its trials.
    monkeypatch.setattr(seeds, "NEAR_PREDICTED", 1e9)
    measured = tune_tasks(tasks, device, db_dir, budget_s=600, trials_per_task=transfer.TOP_K + 5)
    assert measured == transfer.TOP_K + 5  # before, it stopped after its first batch with 10 minutes left
    assert trials_per_workload(db_dir)[tasks[0].workload] == transfer.TOP_K + 5
