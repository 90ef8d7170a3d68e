"""Wiring a build into a chain: one StageSpec per stage (what it receives, what it sends on, where to),
the executor that runs its artifact, serving one built stage (in this process, or in the emulated python
for an aarch64 stage on another host), and the ModelSpec the endpoint serves."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nndeploy.errors import NNDeployError
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.tls import TlsFiles
from nndeploy.runtime.worker import Execute, StageSpec, serve_stage
from nndeploy.targets.artifacts.loader import emulated_library, run_artifact, start_emulated_worker
from nndeploy.targets.artifacts.manifest import (
    Manifest,
    StageBuild,
    batch_builds,
    checked_artifact_path,
    read_manifest,
)
from nndeploy.types import Plan


class BatchingError(NNDeployError):
    """A build cannot be served with the dynamic batching asked for."""


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
    plan: Plan,
    addresses: list[str],
    timeout_s: float = 60.0,
    max_in_flight: int = 256,
    manifest: Manifest | None = None,
    max_batch: int = 0,
    batch_delay_ms: float = 0.0,
    batch_sizes: tuple[int, ...] = (),
) -> ModelSpec:
    """What the endpoint serves: the model's name (its file's stem), inputs, outputs and first hop, and
    as metadata properties the executor of every stage and the nodes that run on onnxruntime, with why
    (as built when `manifest` is given, else as planned)."""
    return ModelSpec(
        name=Path(plan.model_path).stem,
        version="1",
        inputs=plan.inputs,
        outputs=plan.outputs,
        stages=tuple((stage.device, address) for stage, address in zip(plan.stages, addresses, strict=True)),
        timeout_s=timeout_s,
        max_in_flight=max_in_flight,
        properties=tuple(executor_properties(plan, manifest).items()),
        max_batch=max_batch,
        batch_delay_ms=batch_delay_ms,
        batch_sizes=batch_sizes,
    )


def built_batch_sizes(build_dir: Path, plan: Plan, manifest: Manifest, max_batch: int) -> tuple[int, ...]:
    """The batch sizes a build can run (the plan's and `compile --batch-sizes`'), checked for dynamic
    batching up to `max_batch`: every model input and output must carry the batch as its first dimension
    in every build, one of them must hold `max_batch`, and no stage may run under the emulator (its
    worker loads one build). A one-line BatchingError otherwise."""
    builds = {plan.batch: manifest} | {b: sub for b, (_, sub) in batch_builds(build_dir, manifest).items()}
    sizes = tuple(sorted(builds))
    if max_batch > sizes[-1]:
        raise BatchingError(
            f"--max-batch {max_batch}: the build's largest batch size is {sizes[-1]} (it has {list(sizes)}); "
            f"compile with --batch-sizes ...,{max_batch} or lower --max-batch"
        )
    for batch, built in builds.items():
        first, last = built.stages[0].artifact, built.stages[-1].artifact
        if first is None or last is None:
            raise BatchingError(f"the batch {batch} build has a stage without an artifact; compile again")
        for tensor in (*first.inputs, *last.outputs):
            if not tensor.shape or tensor.shape[0] != batch:
                raise BatchingError(
                    f"--max-batch: tensor '{tensor.name}' has shape {list(tensor.shape)} in the batch "
                    f"{batch} build, not the batch first; this model cannot be batched (serve without "
                    "--max-batch)"
                )
    emulated = [e.stage for e in manifest.stages if emulated_library(build_dir, e) is not None]
    if emulated:
        raise BatchingError(
            f"--max-batch: stage {emulated[0]} runs under the aarch64 emulator here, which serves one batch "
            "size; serve without --max-batch (on a real aarch64 host the stage runs natively and batches)"
        )
    return sizes


def executor_properties(plan: Plan, manifest: Manifest | None) -> dict[str, str]:
    """{'stage_<i>_executor': 'tvm' | 'onnxruntime' | 'tvm+onnxruntime', 'stage_<i>_tvm_flop_share' (where
    the build measured it), 'onnxruntime_nodes': JSON list of {stage, node, op_type (not for whole-stage
    fallbacks), reason}} for the endpoint's model metadata."""
    properties, nodes = {}, []
    built = {e.stage: e.artifact for e in manifest.stages} if manifest is not None else {}
    for stage in plan.stages:
        artifact = built.get(stage.index)
        if artifact is not None and artifact.fallback:
            executor = "onnxruntime"
            reason = str(artifact.options.get("reason", ""))
            nodes += [{"stage": stage.index, "node": n, "reason": reason} for n in stage.nodes]
        else:
            found = (
                artifact.options.get("onnxruntime_nodes", [])
                if artifact is not None
                else [f.to_dict() for f in stage.fallback]
            )
            executor = "tvm+onnxruntime" if found else "tvm"
            nodes += [{"stage": stage.index, **node} for node in found]
        if artifact is not None and "tvm_flop_share" in artifact.options:
            properties[f"stage_{stage.index}_tvm_flop_share"] = str(artifact.options["tvm_flop_share"])
        properties[f"stage_{stage.index}_executor"] = executor
    properties["onnxruntime_nodes"] = json.dumps(nodes)
    return properties


def batched_executor(build_dir: Path, entry: StageBuild) -> Execute:
    """`artifact_executor` over every batch size the build has (`compile --batch-sizes`): each request
    runs on the artifact built for its input shapes; shapes no artifact was built for are a ValueError
    naming the sizes there are."""
    manifest = read_manifest(build_dir)
    builds = [(build_dir, entry)] + [
        (folder, next(e for e in sub.stages if e.stage == entry.stage))
        for folder, sub in batch_builds(build_dir, manifest).values()
    ]
    if len(builds) == 1:
        return artifact_executor(build_dir, entry)
    by_shapes: dict[tuple[tuple[str, tuple[int, ...]], ...], Execute] = {}
    for folder, built in builds:
        if built.artifact is not None:
            key = tuple(sorted((t.name, tuple(t.shape)) for t in built.artifact.inputs))
            by_shapes[key] = artifact_executor(folder, built)

    def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple(sorted((name, tuple(array.shape)) for name, array in inputs.items()))
        run = by_shapes.get(key)
        if run is None:
            built = "; ".join(str(dict(shapes)) for shapes in by_shapes)
            raise ValueError(f"stage {entry.stage} has no build for input shapes {dict(key)}; it has {built}")
        return run(inputs)

    return execute


def artifact_executor(build_dir: Path, entry: StageBuild) -> Execute:
    """A function running the stage's artifact on a dict of tensors. The artifact's sha256 is checked
    here, so a worker refuses to start on a corrupted or replaced file, and again whenever it changes."""
    if entry.artifact is not None:
        checked_artifact_path(build_dir, entry.artifact)

    def execute(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, _ = run_artifact(build_dir, entry, inputs)
        return outputs

    return execute


async def serve_built_stage(
    build_dir: Path,
    entry: StageBuild,
    spec: StageSpec,
    port: int,
    host: str = "127.0.0.1",
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    tls: TlsFiles | None = None,
    side_port: int = 0,
) -> None:
    """Serve one built stage on host:port (side connections on `side_port`, runtime.bulk) until `stop` is
    set (`ready` gets the bound port). A stage this
    machine runs under the aarch64 emulator runs its whole worker, gRPC server included, in the emulated
    python for as long as this call lasts, so a request pays only its own emulated compute (before, each
    request started qemu afresh: ~11 s for the example's camera stage); any other stage runs in this
    process. EmulatorError if the emulated worker dies, so a supervisor (Ray) starts the stage again."""
    library = emulated_library(build_dir, entry)
    if library is None:
        execute = batched_executor(build_dir, entry)
        await serve_stage(
            spec, execute, port, host=host, ready=ready, stop=stop, tls=tls, side_port=side_port
        )
        return
    from nndeploy.errors import EmulatorError

    stop = stop or asyncio.Event()
    path, inputs, outputs = library
    with tempfile.TemporaryDirectory(prefix="nndeploy-emulated-tls-") as secrets:
        config = {
            "library": str(path.resolve()),
            "inputs": inputs,
            "outputs": outputs,
            "spec": dataclasses.asdict(spec),
            "port": port,
            "side_port": side_port,
            "host": host,
            "tls": _write_tls(tls, Path(secrets)) if tls is not None else None,
        }
        loop = asyncio.get_running_loop()
        worker, bound = await loop.run_in_executor(None, start_emulated_worker, config)
        said: collections.deque[str] = collections.deque(maxlen=5)
        assert worker.stdout is not None
        threading.Thread(target=lambda: said.extend(worker.stdout), daemon=True).start()  # never a full pipe
        try:
            if ready is not None:
                ready(bound)
            while not stop.is_set() and worker.poll() is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            if not stop.is_set():
                last = said[-1].strip() if said else f"exit status {worker.returncode}"
                raise EmulatorError(f"stage {spec.index}'s worker under qemu-aarch64 exited: {last}")
        finally:
            worker.terminate()
            try:
                await loop.run_in_executor(None, worker.wait, 10)
            except Exception:  # did not stop on SIGTERM
                worker.kill()
            shutil.rmtree(worker.overlay, ignore_errors=True)  # type: ignore[attr-defined]


def _write_tls(tls: TlsFiles, folder: Path) -> dict[str, str]:
    """The TLS files written into `folder` (readable by this user only), by role."""
    paths = {}
    for role, data in (("cert", tls.cert), ("key", tls.key), ("ca", tls.ca)):
        path = folder / f"{role}.pem"
        path.touch(mode=0o600)
        path.write_bytes(data)
        paths[role] = str(path)
    os.chmod(folder, 0o700)
    paths["server_name"] = tls.server_name
    return paths


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
