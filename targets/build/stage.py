"""Build one stage model for its device: compiled whole by TVM, or as TVM parts around onnxruntime
regions, each TVM-built part checked against onnxruntime (the `compile` verb's unit of work)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from nndeploy.targets.build.best_of_regions import best_of_regions, runs_here
from nndeploy.targets.build.check import BuildCheck, StageSamples, check_stage, with_outcome
from nndeploy.targets.build.compiled import build_compiled
from nndeploy.targets.build.record import BuildRecord
from nndeploy.targets.build.regions import build_with_regions
from nndeploy.types import Device, FallbackNode


def build_stage(
    stage_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    fallback: str | None = None,
    tuning_db_dir: Path | None = None,
    regions: Sequence[FallbackNode] = (),
    name: str | None = None,
    check: BuildCheck | None = None,
    best_of: bool = False,
) -> BuildRecord:
    """Build the stage model at `stage_path` for `device` into `out_dir` as `name` (default
    stage_<index>; reusing a cached build); with `tuning_db_dir` (the target's folder of a tuning
    database) its tuned schedules are applied. Nodes in `regions` run on onnxruntime, the rest is built
    by TVM part by part; with `fallback` 'onnxruntime', nodes TVM then fails to build join them. With
    `check`, every TVM-built part is run on sample inputs against onnxruntime: one that differs is sent
    to onnxruntime with `fallback`, and fails the build without. With `best_of`, a stage TVM built whole
    and this machine can run is timed against onnxruntime, region by region (see build.best_of_regions)."""
    failure = None
    samples = None
    if not regions:
        record = build_compiled(stage_path, index, device, out_dir, tuning_db_dir, name)
        if record.artifact is not None and check is not None:
            samples = _stage_samples(stage_path, check)
            record = with_outcome(record, check_stage(record.artifact, Path(), samples, check))
            if record.artifact is None and fallback != "onnxruntime":
                return _with_hint(record)
        if record.artifact is not None and best_of and name is None and runs_here(device) is None:
            return best_of_regions(stage_path, index, device, out_dir, record, tuning_db_dir, check, samples)
        if record.artifact is not None or fallback != "onnxruntime":
            return record
        failure = record.error
    return build_with_regions(
        stage_path, index, device, out_dir, regions, tuning_db_dir, fallback, failure, check, samples
    )


def _with_hint(record: BuildRecord) -> BuildRecord:
    from dataclasses import replace

    hint = "pass --fallback onnxruntime to run what differs on onnxruntime, or compile with --no-check"
    return replace(record, error=f"{record.error}; {hint}")


def _stage_samples(stage_path: Path, check: BuildCheck) -> StageSamples:
    """The check's samples of a stage model (its tensors' types filled in by shape inference)."""
    return StageSamples(onnx.shape_inference.infer_shapes(onnx.load(str(stage_path))), check.seed)
