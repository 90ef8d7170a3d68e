"""The `compile` verb: build every stage of a plan for its device, in parallel, into one build folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from nndeploy.errors import HostToolError
from nndeploy.targets.artifacts.host_tools import ensure_cross_compiler
from nndeploy.targets.artifacts.manifest import Manifest, StageBuild, write_manifest
from nndeploy.targets.build.best_of import choose
from nndeploy.targets.build.best_of_regions import enabled
from nndeploy.targets.build.check import BuildCheck
from nndeploy.targets.build.compiled import fallback_build
from nndeploy.targets.build.record import BuildRecord, tvm_version
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.tuning.database import has_records, target_db_dir
from nndeploy.targets.tuning.tuner import why_not_tunable
from nndeploy.types import Device, Plan

ProgressCallback = Callable[[BuildRecord], None]


def compile_plan(
    plan: Plan,
    plan_file: str,
    stage_models: Sequence[Path],
    out_dir: Path,
    jobs: int = 1,
    fallback: str | None = None,
    on_done: ProgressCallback | None = None,
    model_path: str | None = None,
    tuning_db_root: Path | None = None,
    best_of: bool | None = None,
    check: BuildCheck | None = None,
    log: Callable[[str], None] = print,
) -> Manifest:
    """Build each stage model for its plan device into `out_dir` and write manifest.json.

    Builds run in worker processes (a crash in TVM cannot take the tool down with it); a stage that fails
    is recorded with its reason and the others are still built. With `tuning_db_root`, stages whose
    target has tuning records get the tuned build. With `best_of` (default: on, unless NNDEPLOY_BEST_OF
    is 0), each stage that this machine can run is timed against onnxruntime, region by region, and the
    faster kept (see build.best_of_regions); stages with tuning records are instead timed whole: tuned,
    untuned and onnxruntime, the fastest kept.
    With `check`, each TVM-built part is checked against onnxruntime as it is built (see build.check).
    A missing cross compiler is installed first where this host can (`log` says so), else its stages fail
    with the command to run."""
    best_of = enabled() if best_of is None else best_of
    out_dir.mkdir(parents=True, exist_ok=True)
    no_tools = _install_cross_compilers(plan, log)
    candidates_dir = out_dir / "candidates"
    records: dict[int, BuildRecord] = {}
    alternatives: dict[int, dict[str, BuildRecord]] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = {}
        for stage, path in zip(plan.stages, stage_models, strict=True):
            device = plan.cluster.device(stage.device)
            if device.name in no_tools:
                record = BuildRecord(stage.index, device.name, None, 0.0, False, no_tools[device.name])
                records[stage.index] = record
                if on_done is not None:
                    on_done(record)
                continue
            db_dir = _tuned_db_dir(tuning_db_root, device)
            submit = partial(pool.submit, build_stage, path, stage.index, device, check=check)
            # With tuning records, best-of compares whole stages: tuned, untuned (each with the shipped
            # knowledge) and onnxruntime; without, it compares TVM and onnxruntime region by region.
            whole = db_dir is not None and best_of and not stage.fallback and why_not_tunable(device) is None
            main = submit(out_dir, fallback, db_dir, stage.fallback, best_of=best_of and not whole)
            futures[main] = (stage, "main")
            if whole:
                futures[submit(candidates_dir / "untuned")] = (stage, "tvm-untuned")
                ort = pool.submit(fallback_build, path, stage.index, device, candidates_dir / "ort")
                futures[ort] = (stage, "onnxruntime")
        for future in as_completed(futures):
            stage, role = futures[future]
            try:
                record = future.result()
            except BrokenProcessPool:
                record = BuildRecord(
                    stage.index, stage.device, None, 0.0, False, "the TVM build crashed (worker died)"
                )
            except Exception as exc:  # a bug in a build must not lose the other stages
                record = BuildRecord(stage.index, stage.device, None, 0.0, False, f"build failed: {exc}")
            if role != "main":
                alternatives.setdefault(stage.index, {})[role] = record
                continue
            records[stage.index] = record
            if on_done is not None:
                on_done(record)
    for index, others in sorted(alternatives.items()):
        tuned = records[index]
        untuned = others.get("tvm-untuned")
        if tuned.artifact is None or untuned is None or untuned.artifact is None:
            continue
        records[index] = choose(
            out_dir,
            tuned,
            untuned,
            candidates_dir / "untuned",
            others.get("onnxruntime"),
            candidates_dir / "ort",
            plan.cluster.device(tuned.device).arch,
        )
    if candidates_dir.exists():
        shutil.rmtree(candidates_dir)
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


def as_built(plan: Plan, manifest: Manifest, stage_models: Sequence[Path]) -> Plan:
    """The plan with each stage's `fallback` as its build has it: every node of a stage built for
    onnxruntime, the onnxruntime regions of a stage built in parts (best-of's among them), else as
    planned."""
    from dataclasses import replace

    import onnx

    from nndeploy.types import FallbackNode

    built = {entry.stage: entry.artifact for entry in manifest.stages}
    stages = []
    for stage in plan.stages:
        artifact = built.get(stage.index)
        if artifact is None:
            stages.append(stage)
            continue
        if artifact.fallback:
            reason = str(artifact.options.get("reason", "")) or f"built for {artifact.fallback}"
            model = onnx.load(str(stage_models[stage.index]), load_external_data=False)
            nodes = tuple(FallbackNode(n.name, n.op_type, reason) for n in model.graph.node)
        else:
            nodes = tuple(FallbackNode.from_dict(n) for n in artifact.options.get("onnxruntime_nodes", []))
        stages.append(replace(stage, fallback=nodes))
    return replace(plan, stages=tuple(stages))


def _install_cross_compilers(plan: Plan, log: Callable[[str], None]) -> dict[str, str]:
    """Install the cross compilers the plan's devices lack; {device name: why it cannot be} for the rest."""
    problems: dict[str, str] = {}
    for name in dict.fromkeys(stage.device for stage in plan.stages):
        try:
            ensure_cross_compiler(plan.cluster.device(name), log)
        except HostToolError as exc:
            problems[name] = str(exc)
    return problems


def _tuned_db_dir(db_root: Path | None, device: Device) -> Path | None:
    """The target's folder of the tuning database, if it has records for this (CPU) target."""
    if db_root is None or device.tvm_target.get("kind") != "llvm":
        return None
    folder = target_db_dir(db_root, device.tvm_target)
    return folder if has_records(folder) else None
