"""Best-of per region: a stage TVM built whole, timed on this machine against onnxruntime running the same
nodes, the faster kept for each region of the stage.

The stage is timed whole first (TVM's build against onnxruntime on the stage model). When TVM is not
slower, it stays as built. Otherwise the stage is cut into regions: its fused op groups (an anchor op such
as Conv or MatMul with the elementwise ops after it), joined in order into at most MAX_REGIONS runs of about
equal FLOPs. Each region is built by TVM on its own and timed against onnxruntime on the values it meets
inside the stage (one onnxruntime run of the stage on the check's seeded inputs). Regions where onnxruntime
is faster by more than MARGIN go to onnxruntime, flagged like any fallback with both times; the mixed
stage is then timed against the whole-stage candidates and the fastest of the three is kept. The record's
options say what was measured (`best_of`) and the share of the stage's FLOPs that TVM runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from nndeploy.cutting import cut
from nndeploy.targets.artifacts.manifest import StageBuild
from nndeploy.targets.build.best_of import time_candidates
from nndeploy.targets.build.check import BuildCheck, StageSamples, check_part, with_outcome
from nndeploy.targets.build.compiled import build_compiled, onnxruntime_record
from nndeploy.targets.build.record import BuildRecord
from nndeploy.targets.build.regions import build_with_regions, node_flops, run_groups
from nndeploy.types import Artifact, Device, FallbackNode

MARGIN = 0.05  # onnxruntime must be this much faster to take a region or a stage (timing noise)
MAX_REGIONS = 8
ANCHOR_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul",
        "Gemm", "Einsum", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention",
    }
)  # fmt: skip
PREFIX = "best-of: "  # starts the reason of every node or stage this module sends to onnxruntime

SWITCH_ENV = "NNDEPLOY_BEST_OF"  # "0": compile keeps pure TVM unless told --best-of

Timer = Callable[[dict[str, tuple[Path, StageBuild]], dict[str, np.ndarray]], dict[str, float]]


def _timed(candidates: dict[str, tuple[Path, StageBuild]], feed: dict[str, np.ndarray]) -> dict[str, float]:
    return time_candidates(candidates, feed=feed)


def enabled() -> bool:
    """Whether best-of is on by default (it is, unless NNDEPLOY_BEST_OF is 0)."""
    import os

    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def runs_here(device: Device) -> str | None:
    """None if this machine runs the device's code natively (so timing it here means something), else
    why not."""
    from nndeploy.targets.artifacts.loader import missing_cpu_features

    if device.tvm_target.get("kind") != "llvm":
        return "best-of times CPU stages only"
    missing = missing_cpu_features(device.tvm_target)
    return f"this machine cannot run {device.name}'s code natively" if missing else None


def op_groups(model: onnx.ModelProto) -> list[list[str]]:
    """The model's nodes in order, cut before each anchor op but the first (a group: an anchor op and
    the nodes after it up to the next anchor; nodes before the first anchor join its group)."""
    groups: list[list[str]] = []
    anchored = False  # whether the last group holds an anchor op
    for node in model.graph.node:
        anchor = node.op_type in ANCHOR_OPS
        if not groups or (anchor and anchored):
            groups.append([])
            anchored = False
        groups[-1].append(node.name)
        anchored = anchored or anchor
    return groups


def sized_regions(groups: list[list[str]], flops: dict[str, float], count: int) -> list[list[str]]:
    """Consecutive groups joined into at most `count` regions of about equal FLOPs (each region closes
    once it holds its share of what is left)."""
    regions: list[list[str]] = []
    left = sum(flops.get(n, 0.0) for g in groups for n in g)
    held = 0.0
    for group in groups:
        if not regions or (held >= left / max(1, count - len(regions) + 1) and len(regions) < count):
            left -= held
            regions.append([])
            held = 0.0
        regions[-1].extend(group)
        held += sum(flops.get(n, 0.0) for n in group)
    return regions


def best_of_regions(
    stage_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    record: BuildRecord,
    tuning_db_dir: Path | None,
    check: BuildCheck | None = None,
    samples: StageSamples | None = None,
    timer: Timer = _timed,
) -> BuildRecord:
    """`record` (the stage built whole by TVM into `out_dir`), or the faster of onnxruntime and a mix of
    TVM and onnxruntime regions in its place, as measured here (see the module docstring)."""
    assert record.artifact is not None
    model = onnx.shape_inference.infer_shapes(onnx.load(str(stage_path)))
    samples = samples or StageSamples(model, check.seed if check else 0)
    found = samples.samples()
    if not found:
        return _note(record, {"skipped": samples.problem or "onnxruntime cannot run the stage"})
    values = found[0].values
    whole_tvm = _entry(record.artifact, device)
    with tempfile.TemporaryDirectory(prefix="best-of-") as scratch_name:
        scratch = Path(scratch_name)
        whole_ort = onnxruntime_record(stage_path, index, device, scratch / "whole", "")
        assert whole_ort.artifact is not None
        feed = {spec.name: values[spec.name] for spec in record.artifact.inputs}
        candidates = {
            "tvm": (out_dir, whole_tvm),
            "onnxruntime": (scratch / "whole", _entry(whole_ort.artifact, device)),
        }
        measured = timer(candidates, feed)
        if measured["tvm"] <= measured["onnxruntime"] * (1 + MARGIN):
            return _note(record, {"measured_ms": _rounded(measured), "selected": "tvm"}, share=1.0)
        regions = sized_regions(op_groups(model), node_flops(model), MAX_REGIONS)
        moved, times = _faster_regions(
            model, regions, index, device, scratch, tuning_db_dir, values, check, samples, timer
        )
        mixed = None
        if moved and len(moved) < len(model.graph.node):
            # TVM's maximal runs of kept regions built again as one part each; None where a part fails
            # to build or (with `check`) the mix differs
            mixed = build_with_regions(
                stage_path, index, device, scratch / "mixed", tuple(moved.values()), tuning_db_dir,
                None, check=check, samples=samples,
            )  # fmt: skip
        if mixed is not None and mixed.artifact is not None:
            candidates["tvm+onnxruntime"] = (scratch / "mixed", _entry(mixed.artifact, device))
            measured = timer(candidates, feed)
        winner = min(measured, key=measured.__getitem__)
        if measured["tvm"] <= measured[winner] * (1 + MARGIN):
            winner = "tvm"
        best_of = {"measured_ms": _rounded(measured), "selected": winner, "regions": times}
        if winner == "tvm":
            return _note(record, best_of, share=1.0)
        _remove_files(out_dir, record.artifact)
        if winner == "onnxruntime":
            reason = (
                f"{PREFIX}onnxruntime measured faster here ({measured['onnxruntime']:.3f} ms against "
                f"TVM {measured['tvm']:.3f} ms)"
            )
            chosen = onnxruntime_record(stage_path, index, device, out_dir, reason)
            return _note(replace(chosen, seconds=record.seconds), best_of, share=0.0)
        assert mixed is not None and mixed.artifact is not None
        for path in (scratch / "mixed").iterdir():
            shutil.copyfile(path, out_dir / path.name)
        return _note(replace(mixed, seconds=record.seconds, cached=False), best_of)  # its share is set


def _faster_regions(
    model: onnx.ModelProto,
    regions: list[list[str]],
    index: int,
    device: Device,
    scratch: Path,
    tuning_db_dir: Path | None,
    values: dict[str, np.ndarray],
    check: BuildCheck | None,
    samples: StageSamples,
    timer: Timer,
) -> tuple[dict[str, FallbackNode], list[dict[str, object]]]:
    """Each region built by TVM alone and timed against onnxruntime: the nodes of the regions that go to
    onnxruntime (with why), and per region what was measured."""
    by_name = {node.name: node for node in model.graph.node}
    groups = run_groups(model, [(f"region {n}", names) for n, names in enumerate(regions)])
    moved: dict[str, FallbackNode] = {}
    times: list[dict[str, object]] = []
    for number, (names, part) in enumerate(zip(regions, cut(model, groups, "region"), strict=True)):
        folder = scratch / f"region{number}"
        folder.mkdir()
        path = folder / "region.onnx"
        onnx.save(part, str(path))
        name = f"stage_{index}.region{number}"
        ort = onnxruntime_record(path, index, device, folder, "", f"{name}.ort")
        tvm = build_compiled(path, index, device, folder, tuning_db_dir, name)
        if tvm.artifact is not None and check is not None:
            tvm = with_outcome(tvm, check_part(tvm.artifact, samples, check))
        assert ort.artifact is not None
        feed = {spec.name: values[spec.name] for spec in ort.artifact.inputs}
        entries = {"onnxruntime": (folder, _entry(ort.artifact, device))}
        if tvm.artifact is not None:
            entries["tvm"] = (folder, _entry(tvm.artifact, device))
        measured = timer(entries, feed)
        summary: dict[str, object] = {"nodes": len(names), "measured_ms": _rounded(measured)}
        if tvm.artifact is None:
            why = f"{PREFIX}TVM cannot build this region alone ({tvm.error})"
        elif measured["onnxruntime"] * (1 + MARGIN) < measured["tvm"]:
            why = (
                f"{PREFIX}onnxruntime measured faster here ({measured['onnxruntime']:.3f} ms against TVM "
                f"{measured['tvm']:.3f} ms for its region of {len(names)} node(s))"
            )
        else:
            why = None
        summary["selected"] = "tvm" if why is None else "onnxruntime"
        times.append(summary)
        if why is not None:
            moved.update({n: FallbackNode(n, by_name[n].op_type, why) for n in names})
    return moved, times


def _entry(artifact: Artifact, device: Device) -> StageBuild:
    return StageBuild(artifact.stage, device.name, device.arch, artifact, 0.0, cached=False)


def _rounded(measured: dict[str, float]) -> dict[str, float]:
    return {name: round(ms, 4) for name, ms in measured.items()}


def _note(record: BuildRecord, best_of: dict[str, object], share: float | None = None) -> BuildRecord:
    """The record with what best-of measured (and the FLOP share TVM runs) in its artifact's options."""
    assert record.artifact is not None
    options = {**record.artifact.options, "best_of": best_of}
    if share is not None:
        options["tvm_flop_share"] = share
    return replace(record, artifact=replace(record.artifact, options=options))


def _remove_files(out_dir: Path, artifact: Artifact) -> None:
    """Delete a TVM build's library and generated sources from the build folder."""
    for name in (artifact.path, *artifact.options.get("sources", {}).values()):
        (out_dir / name).unlink(missing_ok=True)
