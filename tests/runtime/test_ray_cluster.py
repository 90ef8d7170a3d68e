"""The stage actor on its node: a stage that node cannot run is refused before anything is loaded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nndeploy.runtime import ray_cluster
from nndeploy.runtime.worker import StageSpec


def test_a_stage_its_node_cannot_run_is_refused_in_one_line_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = SimpleNamespace(stage=0)
    monkeypatch.setattr(
        "nndeploy.targets.artifacts.manifest.read_manifest", lambda _: SimpleNamespace(stages=[entry])
    )
    monkeypatch.setattr(  # what loader.missing_cpu_features says of an aarch64 build on this x86 node
        "nndeploy.targets.artifacts.loader.why_not_runnable",
        lambda _: "this CPU lacks the aarch64 instruction set",
    )
    loaded: list[object] = []
    monkeypatch.setattr("nndeploy.runtime.chain.serve_built_stage", lambda *args, **kw: loaded.append(args))
    spec = StageSpec(0, "board", ("x",), ("y",), None)
    actor = ray_cluster.StageActorImpl("build", 0, spec, 50100, "10.0.0.2")
    with pytest.raises(RuntimeError) as refused:
        actor.ping()
    message = str(refused.value)
    assert "\n" not in message
    assert "stage 0 (board) cannot run on node" in message and "10.0.0.2" in message
    assert message.endswith("this CPU lacks the aarch64 instruction set")
    assert loaded == []  # nothing was loaded or served
