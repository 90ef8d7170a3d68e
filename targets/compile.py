"""The `compile` verb: build every stage of a plan for its device, in parallel, into one build folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from nndeploy.targets.build import BuildRecord, build_stage, tvm_version
from nndeploy.targets.manifest import Manifest, StageBuild, write_manifest
from nndeploy.types import Plan

ProgressCallback = Callable[[BuildRecord], None]


def compile_stages(
    plan: Plan,
    plan_file: str,
    stage_models: Sequence[Path],
    out_dir: Path,
    jobs: int = 1,
    fallback: str | None = None,
    on_done: ProgressCallback | None = None,
    model_path: str | None = None,
) -> Manifest:
    """Build each stage model for its plan device into `out_dir` and write manifest.json.

    Builds run in worker processes (a crash in TVM cannot take the tool down with it); a stage that fails
    is recorded with its reason and the others are still built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[int, BuildRecord] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(
                build_stage, path, stage.index, plan.cluster.device(stage.device), out_dir, fallback
            ): stage
            for stage, path in zip(plan.stages, stage_models, strict=True)
        }
        for future in as_completed(futures):
            stage = futures[future]
            try:
                record = future.result()
            except BrokenProcessPool:
                record = BuildRecord(
                    stage.index, stage.device, None, 0.0, False, "the TVM build crashed (worker died)"
                )
            except Exception as exc:  # a bug in a build must not lose the other stages
                record = BuildRecord(stage.index, stage.device, None, 0.0, False, f"build failed: {exc}")
            records[stage.index] = record
            if on_done is not None:
                on_done(record)
    manifest = Manifest(
        plan_file=plan_file,
        model_path=model_path or plan.model_path,
        model_sha256=plan.model_sha256,
        tvm_version=tvm_version(),
        stages=tuple(
            StageBuild(
                stage=i,
                device=records[i].device,
                device_arch=plan.cluster.device(records[i].device).arch,
                artifact=records[i].artifact,
                build_seconds=records[i].seconds,
                cached=records[i].cached,
                error=records[i].error,
            )
            for i in sorted(records)
        ),
    )
    write_manifest(manifest, out_dir)
    return manifest
