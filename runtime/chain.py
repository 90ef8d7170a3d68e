"""Wiring a build into a chain: one StageSpec per stage (what it receives, what it sends on, where to),
the executor that runs its artifact, and the ModelSpec the endpoint serves."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from nndeploy.runtime.endpoint import ModelSpec
from nndeploy.runtime.worker import Execute, StageSpec
from nndeploy.targets.loader import run_artifact
from nndeploy.targets.manifest import StageBuild, checked_artifact_path
from nndeploy.types import Plan


def stage_specs(plan: Plan, addresses: list[str], queue_size: int = 16) -> list[StageSpec]:
    """The chain's stages, each pointing at the next one's worker address."""
    return [
        StageSpec(
            index=stage.index,
            device=stage.device,
            inputs=tuple(t.name for t in stage.inputs),
            outputs=tuple(t.name for t in stage.outputs),
            downstream=addresses[i + 1] if i + 1 < len(plan.stages) else None,
            queue_size=queue_size,
        )
        for i, stage in enumerate(plan.stages)
    ]


def model_spec(
    plan: Plan, addresses: list[str], timeout_s: float = 60.0, max_in_flight: int = 256
) -> ModelSpec:
    """What the endpoint serves: the model's name (its file's stem), inputs, outputs and first hop."""
    return ModelSpec(
        name=Path(plan.model_path).stem,
        version="1",
        inputs=plan.inputs,
        outputs=plan.outputs,
        stages=tuple((stage.device, address) for stage, address in zip(plan.stages, addresses, strict=True)),
        timeout_s=timeout_s,
        max_in_flight=max_in_flight,
    )


def artifact_executor(build_dir: Path, entry: StageBuild) -> Execute:
    """A function running the stage's artifact on a dict of tensors. The artifact's sha256 is checked
    here, so a worker refuses to start on a corrupted or replaced file, and again whenever it changes."""
    if entry.artifact is not None:
        checked_artifact_path(build_dir, entry.artifact)

    def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, _ = run_artifact(build_dir, entry, inputs)
        return outputs

    return execute


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` currently free TCP ports on `host`."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
