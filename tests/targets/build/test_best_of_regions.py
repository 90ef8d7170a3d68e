"""Best-of per region: a stage's fused op groups, regions of equal FLOPs, and the stage kept, mixed or moved
to onnxruntime by what is measured (real timings, and made-up ones that force each outcome)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import nndeploy

from nndeploy.graph import io_specs
from nndeploy.oracle import random_inputs, run_model
from nndeploy.targets.artifacts.loader import run_artifact
from nndeploy.targets.artifacts.manifest import StageBuild
from nndeploy.targets.build import best_of_regions
from nndeploy.targets.build.best_of_regions import MARGIN, PREFIX, op_groups, sized_regions
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles

from models import conv_stack_model

SERVER = device_from_profile(load_profiles()["x86-avx512-server"], "server")
BOARD = device_from_profile(load_profiles()["raspberry-pi-5"], "board")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path / "build-cache"))


def stage_file(tmp_path: Path, model: onnx.ModelProto) -> Path:
    path = tmp_path / "stage.onnx"
    onnx.save(model, path)
    return path


def test_op_groups_start_at_each_anchor_and_leading_nodes_join_the_first() -> None:
    groups = op_groups(conv_stack_model(3))
    assert groups == [
        ["relu_in", "conv0", "relu0", "add0"],
        ["conv1", "relu1", "add1"],
        ["conv2", "relu2", "add2", "out"],
    ]


def test_sized_regions_keep_order_and_balance_flops() -> None:
    groups = [["a"], ["b"], ["c"], ["d"], ["e"]]
    flops = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 40}
    assert sized_regions(groups, flops, 2) == [["a", "b", "c", "d"], ["e"]]
    three = sized_regions(groups, flops, 3)
    assert len(three) <= 3 and [n for r in three for n in r] == ["a", "b", "c", "d", "e"]
    assert sized_regions(groups, flops, 8) == groups  # never more regions than groups
    assert sized_regions(groups, flops, 1) == [["a", "b", "c", "d", "e"]]


def made_up_timer(ort_wins: set[int], mixed_ms: float = 1.0):
    """A timer that says onnxruntime is faster for the whole stage and for the regions in `ort_wins`,
    TVM for the others, and the mixed stage `mixed_ms` (still running every candidate once, so a broken
    artifact fails the test). Returns the timer and the list of what it was asked to time."""
    asked: list[set[str]] = []

    def timer(candidates: dict[str, tuple[Path, StageBuild]], feed: dict) -> dict[str, float]:
        asked.append(set(candidates))
        for folder, entry in candidates.values():
            run_artifact(folder, entry, feed)
        tvm = candidates.get("tvm")
        region = None
        if tvm is not None and ".region" in tvm[1].artifact.path:
            region = int(tvm[1].artifact.path.split(".region")[1].split(".")[0])
        if (
            region is None
            and "tvm" in candidates
            and "region" not in candidates["onnxruntime"][1].artifact.path
        ):
            times = {"tvm": 10.0, "onnxruntime": 5.0}
            if "tvm+onnxruntime" in candidates:
                times["tvm+onnxruntime"] = mixed_ms
            return times
        ort_faster = region in ort_wins or "tvm" not in candidates
        return {"tvm": 2.0, "onnxruntime": 1.0} if ort_faster else {"tvm": 1.0, "onnxruntime": 2.0}

    return timer, asked


def whole_tvm(tmp_path: Path, model: onnx.ModelProto):
    path = stage_file(tmp_path, model)
    out = tmp_path / "build"
    record = build_stage(path, 0, SERVER, out)
    assert record.artifact is not None and record.artifact.fallback is None
    return path, out, record


def test_regions_onnxruntime_wins_run_there_and_the_mixed_stage_matches(tmp_path: Path) -> None:
    model = conv_stack_model(4)
    path, out, record = whole_tvm(tmp_path, model)
    timer, asked = made_up_timer(ort_wins={0})
    chosen = best_of_regions.best_of_regions(path, 0, SERVER, out, record, None, timer=timer)
    artifact = chosen.artifact
    assert artifact is not None and artifact.fallback is None and artifact.parts
    found = artifact.options["best_of"]
    assert found["selected"] == "tvm+onnxruntime"
    assert found["regions"][0]["selected"] == "onnxruntime"
    assert all(r["selected"] == "tvm" for r in found["regions"][1:])
    moved = artifact.options["onnxruntime_nodes"]
    regions = sized_regions(op_groups(model), best_of_regions.node_flops(model), best_of_regions.MAX_REGIONS)
    assert [n["node"] for n in moved] == regions[0]
    assert all(n["reason"].startswith(PREFIX) and "measured faster" in n["reason"] for n in moved)
    assert 0.0 < artifact.options["tvm_flop_share"] < 1.0
    assert {"tvm", "onnxruntime", "tvm+onnxruntime"} in asked
    assert not (out / record.artifact.path).exists()  # the whole-stage library made way
    entry = StageBuild(0, "server", SERVER.arch, artifact, 0.0, cached=False)
    inputs = random_inputs(io_specs(model)[0], 3)
    got, _ = run_artifact(out, entry, inputs)
    want = run_model(model, inputs)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-4, atol=1e-4)


def test_stage_moves_whole_to_onnxruntime_when_every_region_is_faster_there(tmp_path: Path) -> None:
    model = conv_stack_model(3)
    path, out, record = whole_tvm(tmp_path, model)
    timer, _ = made_up_timer(ort_wins={0, 1, 2})
    chosen = best_of_regions.best_of_regions(path, 0, SERVER, out, record, None, timer=timer)
    artifact = chosen.artifact
    assert artifact is not None and artifact.fallback == "onnxruntime"
    assert artifact.options["reason"].startswith(PREFIX)
    assert artifact.options["tvm_flop_share"] == 0.0
    assert (out / artifact.path).is_file() and not (out / record.artifact.path).exists()


def test_mixed_stage_slower_than_onnxruntime_is_not_kept(tmp_path: Path) -> None:
    model = conv_stack_model(4)
    path, out, record = whole_tvm(tmp_path, model)
    timer, _ = made_up_timer(ort_wins={0}, mixed_ms=7.0)  # onnxruntime whole: 5 ms
    chosen = best_of_regions.best_of_regions(path, 0, SERVER, out, record, None, timer=timer)
    assert chosen.artifact is not None and chosen.artifact.fallback == "onnxruntime"
    assert chosen.artifact.options["best_of"]["measured_ms"]["tvm+onnxruntime"] == 7.0


def test_real_timings_keep_the_measured_fastest(tmp_path: Path) -> None:
    model = conv_stack_model(4, channels=16, side=32)
    path = stage_file(tmp_path, model)
    record = build_stage(path, 0, SERVER, tmp_path / "build", best_of=True)
    artifact = record.artifact
    assert artifact is not None
    found = artifact.options["best_of"]
    measured = found["measured_ms"]
    assert set(measured) >= {"tvm", "onnxruntime"} and all(ms > 0 for ms in measured.values())
    fastest = min(measured.values())
    if found["selected"] == "tvm":
        assert measured["tvm"] <= fastest * (1 + MARGIN)
        assert artifact.fallback is None and not artifact.parts and artifact.options["tvm_flop_share"] == 1.0
    else:
        assert measured[found["selected"]] == fastest and measured["tvm"] > fastest * (1 + MARGIN)
    entry = StageBuild(0, "server", SERVER.arch, artifact, 0.0, cached=False)
    inputs = random_inputs(io_specs(model)[0], 1)
    np.testing.assert_allclose(
        run_artifact(tmp_path / "build", entry, inputs)[0]["y"],
        run_model(model, inputs)["y"],
        rtol=1e-3,
        atol=1e-3,
    )


def test_a_stage_this_machine_cannot_run_natively_is_not_timed(tmp_path: Path) -> None:
    assert best_of_regions.runs_here(BOARD) is not None
    record = build_stage(
        stage_file(tmp_path, conv_stack_model(2)), 0, BOARD, tmp_path / "build", best_of=True
    )
    assert record.artifact is not None and "best_of" not in record.artifact.options


def test_compile_measures_by_default_and_no_best_of_keeps_pure_tvm(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_stack_model(3), model)
    cluster = tmp_path / "c.yaml"
    cluster.write_text("devices:\n  - {name: server, profile: x86-avx512-server}\n")
    plan = tmp_path / "plan.json"
    assert nndeploy("plan", model, "--cluster", cluster, "-o", plan).returncode == 0
    done = nndeploy("compile", plan, "-o", tmp_path / "on", env={"NNDEPLOY_BEST_OF": "1"})
    assert done.returncode == 0, done.stderr
    assert "stage 0: best of TVM" in done.stdout
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    artifact = manifest["stages"][0]["artifact"]
    assert artifact["options"]["best_of"]["selected"] in ("tvm", "onnxruntime", "tvm+onnxruntime")
    built_plan = json.loads((tmp_path / "on" / "plan.json").read_text())
    fallback = built_plan["stages"][0].get("fallback", [])
    if artifact["options"]["best_of"]["selected"] == "tvm":
        assert fallback == []
    else:
        assert fallback and all(f["reason"].startswith(PREFIX) for f in fallback)
    done = nndeploy("compile", plan, "-o", tmp_path / "off", "--no-best-of", env={"NNDEPLOY_BEST_OF": "1"})
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert "best_of" not in manifest["stages"][0]["artifact"]["options"]
    assert "best of" not in done.stdout
