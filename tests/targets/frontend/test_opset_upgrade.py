"""The opset upgrade before TVM's import: old ops keep their meaning, and TVM then builds them right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nndeploy.oracle import run_model
from nndeploy.targets.artifacts.loader import run_artifact
from nndeploy.targets.artifacts.manifest import StageBuild
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.targets.frontend.opset_upgrade import FRONTEND_OPSET, default_opset, upgrade_opset


def one_node(node: onnx.NodeProto, opset: int, shape: list[int], out: list[int], inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def resize_models() -> list[tuple[str, onnx.ModelProto]]:
    """Upsample-7 (scales attribute), Upsample-9 and Resize-10 (scales input), nearest and linear, at
    scales where Resize-11's default coordinate mapping and rounding would differ."""
    scales = [1.0, 1.0, 3.0, 1.5]
    found = []
    for mode in ("nearest", "linear"):
        found.append(
            (
                f"Upsample-7 {mode}",
                one_node(
                    helper.make_node("Upsample", ["x"], ["y"], scales=scales, mode=mode),
                    7,
                    [1, 2, 4, 4],
                    [1, 2, 12, 6],
                ),
            )
        )
        for op, opset in (("Upsample", 9), ("Resize", 10)):
            node = helper.make_node(op, ["x", "s"], ["y"], mode=mode)
            init = numpy_helper.from_array(np.array(scales, np.float32), "s")
            found.append((f"{op}-{opset} {mode}", one_node(node, opset, [1, 2, 4, 4], [1, 2, 12, 6], [init])))
    return found


def feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(3).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize(("name", "model"), resize_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_upgraded_resizes_keep_their_meaning(name: str, model: onnx.ModelProto) -> None:
    upgraded = upgrade_opset(model)
    assert default_opset(upgraded) == FRONTEND_OPSET
    assert [n.op_type for n in upgraded.graph.node if n.op_type != "Constant"] == ["Resize"]
    x = feeds(model)
    np.testing.assert_array_equal(run_model(upgraded, x)["y"], run_model(model, x)["y"])


def test_an_upgrade_that_changes_the_meaning_is_not_kept() -> None:
    """onnx's Hardmax 12 -> 13 adapter only renumbers the op, whose axis meaning changed."""
    hardmax = one_node(helper.make_node("Hardmax", ["x"], ["y"], axis=1), 12, [2, 3, 4], [2, 3, 4])
    assert upgrade_opset(hardmax) is hardmax
    current = one_node(helper.make_node("Relu", ["x"], ["y"]), 17, [2, 3], [2, 3])
    assert upgrade_opset(current) is current


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("Upsample-7 linear", resize_models()[3][1]),
        (
            "Slice-1",
            one_node(
                helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[3], axes=[1]), 7, [2, 4], [2, 2]
            ),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_old_ops_tvm_got_wrong_or_refused_now_build_right(
    name: str, model: onnx.ModelProto, tmp_path: Path
) -> None:
    """Without the upgrade TVM computed Upsample-7 linear wrongly and refused to import Slice-1."""
    path = tmp_path / "old.onnx"
    onnx.save(model, path)
    device = device_from_profile(load_profiles()["x86-avx512-server"], "server")
    record = build_stage(path, 0, device, tmp_path / "build")
    assert record.artifact is not None, record.error
    x = feeds(model)
    entry = StageBuild(0, "server", "x86_64", record.artifact, 0.0, False)
    got, _ = run_artifact(tmp_path / "build", entry, x)
    np.testing.assert_allclose(got["y"], run_model(model, x)["y"], rtol=1e-5, atol=1e-5)
