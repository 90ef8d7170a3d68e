"""The build-time check: every TVM-built part run on sample inputs against onnxruntime; a part that
differs goes to onnxruntime with fallback, and fails the build without."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_user_error, nndeploy

from nndeploy.targets.build.check import BuildCheck, StageSamples, _sample_inputs
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.types import Device

EXACT = BuildCheck({dtype: (0.0, 0.0) for dtype in ("float32", "float16", "float64")})


def x86() -> Device:
    return device_from_profile(load_profiles()["x86-avx512-server"], "server")


def exp_model() -> onnx.ModelProto:
    """x[8,256] -> Neg -> Exp (TVM's exp and onnxruntime's differ in the last bits) -> y -> Neg -> z;
    negation is exact on both."""
    nodes = [
        helper.make_node("Neg", ["x"], ["a"], name="neg1"),
        helper.make_node("Exp", ["a"], ["y"], name="exp"),
        helper.make_node("Neg", ["y"], ["z"], name="neg2"),
    ]
    graph = helper.make_graph(
        nodes,
        "exp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 256])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 256]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 256]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def three(tmp_path: Path) -> Path:
    path = tmp_path / "exp.onnx"
    onnx.save(exp_model(), path)
    return path


def test_a_build_within_tolerance_records_its_check(three: Path, tmp_path: Path) -> None:
    record = build_stage(three, 0, x86(), tmp_path / "build", check=BuildCheck())
    assert record.artifact is not None, record.error
    check = record.artifact.options["check"]
    assert check["status"] == "pass" and "matches onnxruntime on 1 sample" in check["detail"]


def test_a_build_that_differs_fails_without_fallback(three: Path, tmp_path: Path) -> None:
    record = build_stage(three, 0, x86(), tmp_path / "build", check=EXACT)
    assert record.artifact is None
    assert "TVM's build differs from onnxruntime on sample inputs" in (record.error or "")
    assert "--fallback onnxruntime" in (record.error or "")
    assert build_stage(three, 0, x86(), tmp_path / "unchecked").artifact is not None


def test_the_differing_node_alone_goes_to_onnxruntime_with_fallback(three: Path, tmp_path: Path) -> None:
    """Checked node by node on onnxruntime's own values, only the Exp differs: both negations stay
    compiled, and the stage computes what onnxruntime computes."""
    from nndeploy.oracle import run_model
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import StageBuild

    record = build_stage(three, 0, x86(), tmp_path / "build", "onnxruntime", check=EXACT)
    artifact = record.artifact
    assert artifact is not None, record.error
    moved = {n["node"]: n["reason"] for n in artifact.options["onnxruntime_nodes"]}
    assert list(moved) == ["exp"]
    assert "differs from onnxruntime" in moved["exp"]
    assert [p.fallback for p in artifact.parts] == [None, "onnxruntime", None]
    assert {p.options["check"]["status"] for p in artifact.parts[::2]} == {"pass"}
    feeds = {"x": np.random.default_rng(5).standard_normal((8, 256)).astype(np.float32)}
    entry = StageBuild(0, "server", "x86_64", artifact, record.seconds, False)
    got, _ = run_artifact(tmp_path / "build", entry, feeds)
    want = run_model(exp_model(), feeds)
    np.testing.assert_array_equal(got["z"], want["z"])


def test_boolean_inputs_are_also_sampled_all_false_and_all_true() -> None:
    nodes = [helper.make_node("Where", ["mask", "x", "y"], ["z"], name="where")]
    graph = helper.make_graph(
        nodes,
        "masked",
        [
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 3]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = _sample_inputs(model, seed=0)
    assert len(samples) == 3
    assert not samples[1]["mask"].any() and samples[2]["mask"].all()
    assert all(np.array_equal(s["x"], samples[0]["x"]) for s in samples)
    found = StageSamples(model, 0).samples()
    assert found is not None
    np.testing.assert_array_equal(found[1].outputs["z"], samples[1]["y"])


def test_a_stage_onnxruntime_cannot_run_on_random_inputs_is_not_checked(tmp_path: Path) -> None:
    """Gather from a one-row table with indices from a graph input: the sample's indices (0-2) fall
    outside it, so the check cannot run, and says so instead of blocking the build."""
    table = numpy_helper.from_array(np.ones((1, 2), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="gather")],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 2])],
        [table],
    )
    path = tmp_path / "lookup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    record = build_stage(path, 0, x86(), tmp_path / "build", check=BuildCheck())
    assert record.artifact is not None, record.error
    check = record.artifact.options["check"]
    assert check["status"] == "not run" and "onnxruntime cannot run the stage" in check["detail"]


def test_compile_checks_by_default_and_names_what_to_do(three: Path, tmp_path: Path) -> None:
    cluster = tmp_path / "one.yaml"
    cluster.write_text("devices:\n  - {name: server, profile: x86-avx512-server}\n")
    plan = tmp_path / "plan.json"
    done = nndeploy("plan", three, "--cluster", cluster, "-o", plan)
    assert done.returncode == 0, done.stderr
    strict = ["--check-atol", "0", "--check-rtol", "0"]
    assert_user_error(
        nndeploy("compile", plan, "-o", tmp_path / "strict", *strict),
        "differs from onnxruntime",
        "--no-check",
    )
    done = nndeploy("compile", plan, "-o", tmp_path / "fallback", *strict, "--fallback", "onnxruntime")
    assert done.returncode == 0, done.stderr
    assert "'exp' (Exp) on onnxruntime: TVM's build differs from onnxruntime" in " ".join(done.stderr.split())
    done = nndeploy("compile", plan, "-o", tmp_path / "default")
    assert done.returncode == 0, done.stderr
    stage = json.loads((tmp_path / "default" / "manifest.json").read_text())["stages"][0]
    assert stage["artifact"]["options"]["check"]["status"] == "pass"
