"""The `verify` verb: every stage artifact, and the whole chain of them, against onnxruntime.

Per stage, the artifact and onnxruntime (on the stage's ONNX model) get the same inputs: the tensors that
flow into that stage when onnxruntime runs the stage models in order on the model inputs. End to end, the
artifacts run in order on their own outputs and are compared with onnxruntime on the original model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nndeploy.errors import VerifyError, first_line
from nndeploy.oracle import VERIFY_TOLERANCES, Comparison, compare, random_inputs, run_chain, run_model
from nndeploy.targets.artifacts.loader import NotRunnable, run_artifact, why_not_runnable
from nndeploy.targets.artifacts.manifest import Manifest, StageBuild
from nndeploy.types import Artifact, TensorSpec


@dataclass(frozen=True)
class Check:
    """One comparison target (a stage, or the whole chain): its verdict and per-output errors."""

    name: str
    device: str
    executor: str
    status: str  # "pass", "FAIL" or "not run"
    comparisons: tuple[Comparison, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """Every stage's check, the end-to-end check, and how many input samples were used."""

    stages: tuple[Check, ...]
    end_to_end: Check
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        """Whether anything that ran disagreed with onnxruntime."""
        return any(c.status == "FAIL" for c in (*self.stages, self.end_to_end))


def executor_of(entry: StageBuild) -> str:
    """How a stage's artifact runs, in words."""
    artifact = entry.artifact
    if artifact is None:
        return "not built"
    if artifact.fallback:
        return f"{artifact.fallback} (fallback)"
    regions = artifact.options.get("onnxruntime_nodes", [])
    if artifact.parts and regions:
        compiled = [part for part in artifact.parts if not part.fallback]
        compiled_text = _compiled_text(compiled[0]) if compiled else "TVM"
        share = artifact.options.get("tvm_flop_share")
        runs = f"; TVM runs {share:.0%} of its FLOPs" if share is not None else ""
        return f"{compiled_text} + onnxruntime for {len(regions)} node(s) (fallback{runs})"
    return _compiled_text(artifact)


def _compiled_text(artifact: Artifact) -> str:
    kind = artifact.target.get("kind")
    if kind == "cuda":
        return f"TVM CUDA {artifact.target.get('arch')}"
    triple = str(artifact.target.get("mtriple", "x86_64"))
    return f"TVM llvm {triple.split('-')[0]}" + (" (emulated)" if triple.startswith("aarch64") else "")


def _reference(run: Callable[..., dict[str, np.ndarray]], models: Any, inputs: dict) -> dict[str, np.ndarray]:
    """`run(models, inputs)` (the oracle), with its failure turned into one VerifyError line."""
    try:
        return run(models, inputs)
    except Exception as exc:  # onnxruntime's errors have no common base class
        raise VerifyError(f"the reference (onnxruntime) cannot run the model: {first_line(exc)}") from None


def load_npz_inputs(path: Path, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """Model inputs from a user's .npz, checked by name, shape and dtype (one-line errors)."""
    if not path.is_file():
        raise VerifyError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            given = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{path}: not a readable .npz file ({exc})") from None
    tensors = {}
    for spec in specs:
        if spec.name not in given:
            raise VerifyError(
                f"{path}: no array named '{spec.name}' (has: {', '.join(sorted(given)) or 'none'})"
            )
        array = given[spec.name]
        if tuple(array.shape) != spec.shape:
            raise VerifyError(
                f"{path}: '{spec.name}' has shape {list(array.shape)}, the model needs {list(spec.shape)}"
            )
        tensors[spec.name] = array.astype(spec.dtype, copy=False)
    return tensors


def verify_build(
    build_dir: Path,
    manifest: Manifest,
    stage_models: list[Path],
    original_model: Path,
    model_inputs: tuple[TensorSpec, ...],
    samples: int = 1,
    npz: Path | None = None,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> VerifyReport:
    """Check every runnable stage and the whole chain against onnxruntime on `samples` input sets."""
    table = {**VERIFY_TOLERANCES, **(tolerances or {})}
    per_stage: dict[int, list[Comparison]] = {s.stage: [] for s in manifest.stages}
    skipped = {s.stage: why_not_runnable(s) for s in manifest.stages}
    whole: list[Comparison] = []
    for sample in range(1 if npz else samples):
        inputs = load_npz_inputs(npz, model_inputs) if npz else random_inputs(model_inputs, seed=sample)
        reference = _reference(run_chain, [str(p) for p in stage_models], inputs)
        flowing = dict(inputs)
        for entry in manifest.stages:
            if skipped[entry.stage] is not None:
                continue
            assert entry.artifact is not None
            names = [s.name for s in entry.artifact.outputs]
            try:
                got, _ = run_artifact(build_dir, entry, reference)
            except NotRunnable as exc:
                skipped[entry.stage] = str(exc)
                continue
            per_stage[entry.stage] += compare({n: reference[n] for n in names}, got, table)
            if all(v is None for v in skipped.values()):
                chained, _ = run_artifact(build_dir, entry, flowing)
                flowing.update(chained)
        if all(v is None for v in skipped.values()):
            expected = _reference(run_model, str(original_model), inputs)
            whole += compare(expected, flowing, table)
    stages = tuple(
        Check(
            name=f"stage {entry.stage}",
            device=entry.device,
            executor=executor_of(entry),
            status="not run" if skipped[entry.stage] else _status(per_stage[entry.stage]),
            comparisons=_worst(per_stage[entry.stage]),
            reason=skipped[entry.stage] or "",
        )
        for entry in manifest.stages
    )
    not_run = [f"stage {i}" for i, reason in skipped.items() if reason]
    end_to_end = Check(
        name="end to end",
        device=" -> ".join(s.device for s in manifest.stages),
        executor="all artifacts in order",
        status="not run" if not_run else _status(whole),
        comparisons=_worst(whole),
        reason=f"{', '.join(not_run)} cannot run here" if not_run else "",
    )
    return VerifyReport(stages, end_to_end, 1 if npz else samples)


def _status(comparisons: list[Comparison]) -> str:
    return "pass" if comparisons and all(c.ok for c in comparisons) else "FAIL"


def _worst(comparisons: list[Comparison]) -> tuple[Comparison, ...]:
    """One comparison per output name: the worst over all samples (a failure wins over a pass)."""
    worst: dict[str, Comparison] = {}
    for c in comparisons:
        prev = worst.get(c.name)
        if prev is None or (prev.ok and not c.ok) or (prev.ok == c.ok and c.max_abs > prev.max_abs):
            worst[c.name] = c
    return tuple(worst.values())
