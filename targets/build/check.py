"""The build-time check: each TVM-built part run on sample values and compared with onnxruntime.

The sample values come from one onnxruntime run of the whole stage model on seeded random inputs, with
every intermediate tensor kept, so a part is fed what it would meet inside the stage (indices in range,
shapes that agree) and its outputs are compared with what onnxruntime computed for them. A part that
differs beyond the tolerances, or that fails at run time where onnxruntime does not, is reported so the
build can send it to onnxruntime (or fail, without fallback) instead of answering wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from nndeploy.cutting import value_infos
from nndeploy.errors import first_line
from nndeploy.types import Artifact

if TYPE_CHECKING:
    from nndeploy.targets.build.record import BuildRecord

PASSED, DIFFERS, NOT_RUN = "pass", "differs", "not run"


@dataclass(frozen=True)
class BuildCheck:
    """How compiled parts are checked: per-dtype (atol, rtol) and the seed of the random stage inputs."""

    tolerances: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0

    def table(self) -> dict[str, tuple[float, float]]:
        """The tolerances in force: `verify`'s defaults, overridden by this check's."""
        from nndeploy.oracle import VERIFY_TOLERANCES

        return {**VERIFY_TOLERANCES, **self.tolerances}


@dataclass(frozen=True)
class CheckOutcome:
    """A part's check: 'pass', 'differs' or 'not run', and the one-line detail."""

    status: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        """The outcome as kept in an artifact's options."""
        return {"status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Sample:
    """One sample: every tensor of an onnxruntime run with each intermediate exposed (the reference for
    a part), and the stage's outputs from a plain run (the reference for the stage as a whole: exposing
    intermediates stops onnxruntime fusing nodes, which changes float16 rounding)."""

    values: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


class StageSamples:
    """onnxruntime runs of a stage model on seeded random inputs (run on first use): one sample, and when
    the stage has boolean inputs (masks), two more with them all false and all true, the edge cases
    random masks rarely hit (a fully masked row, say)."""

    def __init__(self, model: onnx.ModelProto, seed: int) -> None:
        self._model = model
        self._seed = seed
        self._samples: list[Sample] | None = None
        self.problem: str | None = None

    def samples(self) -> list[Sample] | None:
        """The samples, or None (with `problem` set) when onnxruntime cannot run the stage."""
        if self._samples is None and self.problem is None:
            try:
                self._samples = [
                    _sample(self._model, inputs) for inputs in _sample_inputs(self._model, self._seed)
                ]
            except Exception as exc:  # onnxruntime's errors have no common base class
                self.problem = (
                    f"onnxruntime cannot run the stage on random inputs ({first_line(exc, with_type=True)})"
                )
        return self._samples


def check_part(artifact: Artifact, samples: StageSamples, check: BuildCheck) -> CheckOutcome:
    """Run a TVM-built part on the sample values of its inputs and compare its outputs with onnxruntime's
    values for them."""
    return _check(artifact, Path(), samples, check, whole_stage=False)


def check_stage(artifact: Artifact, out_dir: Path, samples: StageSamples, check: BuildCheck) -> CheckOutcome:
    """Run a built stage (its TVM parts from the build cache, its onnxruntime regions from `out_dir`) on
    the sample stage inputs and compare its outputs with onnxruntime's run of the stage model."""
    return _check(artifact, out_dir, samples, check, whole_stage=True)


def _check(
    artifact: Artifact, out_dir: Path, samples: StageSamples, check: BuildCheck, whole_stage: bool
) -> CheckOutcome:
    from nndeploy.oracle import compare
    from nndeploy.targets.artifacts.loader import NotRunnable

    compiled = [part for part in artifact.parts or (artifact,) if part.fallback is None]
    problem = next(filter(None, map(_not_checked_here, compiled)), None)
    if problem is not None:
        return CheckOutcome(NOT_RUN, problem)
    found = samples.samples()
    if found is None:
        return CheckOutcome(NOT_RUN, samples.problem or "no sample values")
    missing = [
        spec.name for spec in (*artifact.inputs, *artifact.outputs) if spec.name not in found[0].values
    ]
    if missing:
        return CheckOutcome(NOT_RUN, f"onnxruntime gave no value for '{missing[0]}'")
    worst = 0.0
    for sample in found:
        reference = sample.outputs if whole_stage else sample.values
        try:
            got = _run(artifact, out_dir, sample.values)
        except NotRunnable as exc:
            return CheckOutcome(NOT_RUN, str(exc))
        except Exception as exc:  # TVM's runtime errors: the part cannot be trusted to run
            return CheckOutcome(
                DIFFERS,
                f"TVM's build fails at run time where onnxruntime runs: {first_line(exc, with_type=True)}",
            )
        comparisons = compare({s.name: reference[s.name] for s in artifact.outputs}, got, check.table())
        bad = [c for c in comparisons if not c.ok]
        if bad:
            c = bad[0]
            error = (
                "NaN where onnxruntime has a number" if c.max_abs == 0 else f"max abs error {c.max_abs:.3g}"
            )
            what = "TVM's parts of the stage together differ" if artifact.parts else "TVM's build differs"
            return CheckOutcome(
                DIFFERS,
                f"{what} from onnxruntime on sample inputs: '{c.name}' {error} beyond atol {c.atol:g} + "
                f"rtol {c.rtol:g}",
            )
        worst = max([worst, *(c.max_abs for c in comparisons)])
    return CheckOutcome(
        PASSED, f"matches onnxruntime on {len(found)} sample input set(s) (max abs error {worst:.3g})"
    )


def _not_checked_here(artifact: Artifact) -> str | None:
    if artifact.target.get("kind") != "llvm" or str(artifact.target.get("mtriple", "")).startswith("aarch64"):
        return "checked at build time only for x86 builds; run nndeploy verify on a machine that runs it"
    return None


def _run(artifact: Artifact, out_dir: Path, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The artifact's outputs (each part in order) on the given tensors."""
    from nndeploy.oracle import run_model
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import StageBuild
    from nndeploy.targets.build.record import cache_dir

    tensors = dict(values)
    for part in artifact.parts or (artifact,):
        feed = {spec.name: tensors[spec.name] for spec in part.inputs}
        if part.fallback is not None:
            tensors.update(run_model(str(out_dir / part.path), feed))
            continue
        # The build cache's copy is named by content: the loader's per-path caches never see a stale file.
        folder = cache_dir() / str(part.options.get("cache_key"))
        library = replace(part, path=_library_name(folder))
        tensors.update(run_artifact(folder, StageBuild(part.stage, "check", "", library, 0.0, True), feed)[0])
    return {spec.name: tensors[spec.name] for spec in artifact.outputs}


def check_summary(artifact: Artifact) -> str:
    """The build-time check of an artifact's TVM-built parts, in a few words ('-' when none ran)."""
    outcomes = [part.options["check"] for part in artifact.parts or (artifact,) if "check" in part.options]
    if not outcomes:
        return "-"
    if any(o["status"] == NOT_RUN for o in outcomes):
        return "not run"
    return f"pass ({len(outcomes)} part{'s' if len(outcomes) > 1 else ''})" if artifact.parts else "pass"


def checked(artifact: Artifact, outcome: CheckOutcome) -> Artifact:
    """The artifact with its check outcome recorded in its options."""
    return replace(artifact, options={**artifact.options, "check": outcome.to_dict()})


def with_outcome(record: BuildRecord, outcome: CheckOutcome, keep: bool = True) -> BuildRecord:
    """A built record after its check: failed with the outcome's detail if it differs, else (with `keep`)
    its artifact carrying the outcome."""
    assert record.artifact is not None
    if outcome.status == DIFFERS:
        return replace(record, artifact=None, error=outcome.detail)
    return replace(record, artifact=checked(record.artifact, outcome)) if keep else record


def _sample_inputs(model: onnx.ModelProto, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded random stage inputs (standard normal floats; integers 0-2, since an integer input may set a
    size at run time, a repeat count or a shape, and large random ones would ask for any amount of
    memory), plus all-false and all-true variants of any boolean ones."""
    from nndeploy.graph import io_specs
    from nndeploy.oracle import random_inputs

    inputs = random_inputs(io_specs(model)[0], seed, int_high=3)
    masks = [name for name, array in inputs.items() if array.dtype == np.bool_]
    if not masks:
        return [inputs]
    return [inputs, *({**inputs, **{n: np.full_like(inputs[n], v) for n in masks}} for v in (False, True))]


def _sample(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Sample:
    """The inputs and every typed tensor of one onnxruntime run of the model on them, and its outputs
    from a plain run."""
    from nndeploy.oracle import run_model

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    declared = {vi.name for vi in exposed.graph.output}
    types = value_infos(model)
    for node in model.graph.node:
        for name in node.output:
            vi = types.get(name)
            if name and name not in declared and vi is not None and _typed_tensor(vi):
                exposed.graph.output.append(vi)
                declared.add(name)
    return Sample({**inputs, **run_model(exposed, inputs)}, run_model(model, inputs))


def _typed_tensor(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type != 0


def _library_name(folder: Path) -> str:
    import json

    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return str(meta["library"])
