"""A stage with onnxruntime regions: TVM builds what it can, onnxruntime runs the smallest rest.

The stage model is cut (in its node order) into maximal runs of compiled nodes and of fallback nodes;
each compiled run is built by TVM as its own library, each fallback run is kept as an ONNX model that
onnxruntime runs, and the stage's artifact lists the parts in order. When TVM fails to build a part the
plan expected it to build, each of its nodes is built alone: the ones that fail join the fallback
regions (with TVM's reason) and the stage is cut again, so one bad node does not take the stage off TVM.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import onnx

from nndeploy.cutting import Group, cut, node_inputs, value_infos
from nndeploy.targets.build.check import BuildCheck, StageSamples, check_part, check_stage, with_outcome
from nndeploy.targets.build.compiled import build_compiled, model_artifact, onnxruntime_record
from nndeploy.targets.build.record import BuildRecord
from nndeploy.types import Artifact, Device, FallbackNode

# Past this many nodes in a failing part, it falls back whole instead of being searched node by node.
MAX_NODES_SEARCHED = 200


def build_with_regions(
    stage_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    regions: Sequence[FallbackNode],
    tuning_db_dir: Path | None,
    fallback: str | None,
    failure: str | None = None,
    check: BuildCheck | None = None,
    samples: StageSamples | None = None,
) -> BuildRecord:
    """The stage built as TVM parts and onnxruntime regions (see the module docstring); with `fallback`
    other than 'onnxruntime' a part TVM fails to build (or, with `check`, one that differs from
    onnxruntime) fails the stage, as without regions. `failure`: why the whole stage, already tried
    without regions, cannot be TVM's; `samples`: the check's samples of this stage, if already taken."""
    started = time.perf_counter()
    # Cutting needs every tensor's type; stage models carry them, inference fills any gap.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(stage_path)))
    prober = _Prober(model, index, device, check, samples)
    fallback_nodes = {region.node: region for region in regions}
    fallback_nodes.update(_dynamic_nodes(model, fallback_nodes))
    if failure is not None:
        whole = Group("tvm", tuple(node.name for node in model.graph.node), ())
        fallback_nodes.update(prober.failing_nodes(whole, failure))
    for _ in range(len(model.graph.node) + 1):
        if len(fallback_nodes) == len(model.graph.node):
            reason = "; ".join(sorted({f"{r.op_type}: {r.reason}" for r in fallback_nodes.values()}))
            record = onnxruntime_record(
                stage_path, index, device, out_dir, reason, nodes=tuple(fallback_nodes.values())
            )
            return _timed(record, started)
        groups = _groups(model, fallback_nodes)
        parts: list[Artifact] = []
        failed: tuple[Group, str] | None = None
        with tempfile.TemporaryDirectory(prefix="parts-") as scratch:
            for number, (group, part_model) in enumerate(
                zip(groups, cut(model, groups, "part"), strict=True)
            ):
                name = f"stage_{index}.part{number}"
                path = Path(scratch) / f"{name}.onnx"
                onnx.save(part_model, str(path))
                if group.label == "onnxruntime":
                    nodes = tuple(fallback_nodes[n] for n in group.nodes)
                    record = onnxruntime_record(path, index, device, out_dir, "", name, nodes)
                else:
                    record = prober.checked(build_compiled(path, index, device, out_dir, tuning_db_dir, name))
                if record.artifact is None:
                    failed = (group, record.error or "build failed")
                    break
                parts.append(record.artifact)
            if failed is None:
                record = prober.checked_stage(
                    stage_record(stage_path, index, device, out_dir, parts), out_dir
                )
                if record.artifact is not None:
                    return _timed(record, started)
                compiled = tuple(
                    n for part, g in zip(parts, groups, strict=True) if not part.fallback for n in g.nodes
                )
                failed = (Group("tvm", compiled, ()), record.error or "differs")
        if fallback != "onnxruntime":
            return BuildRecord(index, device.name, None, time.perf_counter() - started, False, failed[1])
        fallback_nodes.update(prober.failing_nodes(*failed, alone=not failed[1].startswith("TVM's parts")))
    raise AssertionError("the fallback regions stopped growing without a build")  # every round adds one


def _dynamic_nodes(model: onnx.ModelProto, known: dict[str, FallbackNode]) -> dict[str, FallbackNode]:
    """Nodes reading or writing a tensor whose shape is known only at run time, as fallback nodes."""
    from nndeploy.targets.frontend.coverage import dynamic_shape_reason

    types = value_infos(model)
    found = {}
    for node in model.graph.node:
        reason = None if node.name in known else dynamic_shape_reason(node, types)
        if reason is not None:
            found[node.name] = FallbackNode(node.name, node.op_type, reason)
    return found


def _groups(model: onnx.ModelProto, fallback_nodes: dict[str, FallbackNode]) -> list[Group]:
    """Maximal runs of compiled and of fallback nodes, in the model's order, each sending what the
    model's outputs and the later runs need."""
    runs: list[tuple[str, list[str]]] = []
    for node in model.graph.node:
        executor = "onnxruntime" if node.name in fallback_nodes else "tvm"
        if runs and runs[-1][0] == executor:
            runs[-1][1].append(node.name)
        else:
            runs.append((executor, [node.name]))
    return run_groups(model, runs)


def run_groups(model: onnx.ModelProto, runs: Sequence[tuple[str, Sequence[str]]]) -> list[Group]:
    """Groups for consecutive runs of the model's nodes (label, node names in order), each sending what
    the model's outputs and the later runs need."""
    by_name = {node.name: node for node in model.graph.node}
    outputs = [vi.name for vi in model.graph.output]
    groups = []
    for number, (executor, names) in enumerate(runs):
        later = [i for _, rest in runs[number + 1 :] for n in rest for i in node_inputs(by_name[n])]
        groups.append(Group(executor, tuple(names), tuple(dict.fromkeys([*outputs, *later]))))
    return groups


class _Prober:
    """Builds (and with a check, checks) parts and single nodes of one stage model."""

    def __init__(
        self,
        model: onnx.ModelProto,
        index: int,
        device: Device,
        check: BuildCheck | None,
        samples: StageSamples | None = None,
    ) -> None:
        self.model, self.index, self.device, self.check = model, index, device, check
        if check is not None and samples is None:
            samples = StageSamples(model, check.seed)
        self.samples = samples

    def checked(self, record: BuildRecord) -> BuildRecord:
        """The record with its artifact checked against onnxruntime; failed if the artifact differs."""
        if record.artifact is None or self.check is None or self.samples is None:
            return record
        return with_outcome(record, check_part(record.artifact, self.samples, self.check))

    def checked_stage(self, record: BuildRecord, out_dir: Path) -> BuildRecord:
        """The record of a stage built in parts, failed if its parts together differ from onnxruntime
        (rounding that adds up across parts, each within tolerance alone)."""
        if record.artifact is None or self.check is None or self.samples is None:
            return record
        outcome = check_stage(record.artifact, out_dir, self.samples, self.check)
        return with_outcome(record, outcome, keep=False)

    def failing_nodes(self, group: Group, error: str, alone: bool = True) -> dict[str, FallbackNode]:
        """The nodes of a part TVM failed to build (or that differs) that fail alone too; the whole part
        when none does (or when it is too large, or `alone` is False, to search)."""
        by_name = {node.name: node for node in self.model.graph.node}

        def whole() -> dict[str, FallbackNode]:
            reason = error if error.startswith("TVM's ") else f"TVM failed to build its part: {error}"
            return {n: FallbackNode(n, by_name[n].op_type, reason) for n in group.nodes}

        if not alone or len(group.nodes) == 1 or len(group.nodes) > MAX_NODES_SEARCHED:
            return whole()
        found = {}
        singles = cut(
            self.model,
            [Group(n, (n,), tuple(o for o in by_name[n].output if o)) for n in group.nodes],
            "node",
            independent=True,
        )
        with tempfile.TemporaryDirectory(prefix="probe-") as scratch:
            for name, single in zip(group.nodes, singles, strict=True):
                path = Path(scratch) / f"probe_{len(found)}_{name.replace('/', '_')}.onnx"
                onnx.save(single, str(path))
                built = build_compiled(path, self.index, self.device, Path(scratch) / "probe", None, "probe")
                record = self.checked(built)
                if built.artifact is None:
                    reason = f"TVM failed to build it: {built.error}"
                    found[name] = FallbackNode(name, by_name[name].op_type, reason)
                elif record.artifact is None:
                    found[name] = FallbackNode(name, by_name[name].op_type, record.error or "differs")
        return found or whole()


def stage_record(
    stage_path: Path, index: int, device: Device, out_dir: Path, parts: Sequence[Artifact]
) -> BuildRecord:
    """The stage's artifact: its model for reference, its parts to run (with the share of the stage's
    FLOPs that its TVM-built parts run)."""
    compiled = [part for part in parts if part.fallback is None]
    moved = [n for p in parts for n in p.options.get("nodes", [])]
    options = {
        "device_arch": device.arch,
        "onnxruntime_nodes": moved,
        "pipeline": compiled[0].options.get("pipeline") if compiled else None,
        "tvm_flop_share": tvm_flop_share(onnx.load(str(stage_path)), {n["node"] for n in moved}),
    }
    artifact = model_artifact(stage_path, index, device, out_dir, None, options, None, tuple(parts))
    return BuildRecord(index, device.name, artifact, 0.0, False, None)


def node_flops(model: onnx.ModelProto) -> dict[str, float]:
    """FLOPs of each node of a stage model whose tensors have static shapes (by node name), as the
    planner's cost model counts them."""
    from nndeploy.graph import analyze

    return {node.name: node.flops for node in analyze(model, "", "", {}, 1).nodes}


def tvm_flop_share(model: onnx.ModelProto, moved: set[str]) -> float:
    """The share of a stage model's FLOPs in nodes not `moved` to onnxruntime (1.0 for a stage without
    FLOPs)."""
    flops = node_flops(onnx.shape_inference.infer_shapes(model))
    total = sum(flops.values())
    return round(sum(f for n, f in flops.items() if n not in moved) / total, 4) if total else 1.0


def _timed(record: BuildRecord, started: float) -> BuildRecord:
    return replace(record, seconds=time.perf_counter() - started)
