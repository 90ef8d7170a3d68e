"""The ONNX conformance yardstick: the single-op cases the onnx package generates, each run four ways on
this x86 host and compared with the case's reference outputs (its own rtol/atol):

- `onnxruntime`: the model as it is;
- `tvm`: TVM's Relax ONNX frontend as it is (from_onnx with the inputs' shapes and dtypes, tvm.compile
  for llvm, the Relax VM);
- `nndeploy`: nndeploy's own path for one x86 device: load and prepare, plan, cut, build with TVM and run
  the artifact (no fallback);
- `nndeploy+fallback`: the same with `--fallback onnxruntime`: a stage TVM cannot build runs on
  onnxruntime, flagged.

Each (case, way) runs in a worker process of `IsolatedPool` with a time limit, so a TVM crash or hang
costs one case, not the run. Outcomes: pass, wrong (ran, numbers differ), error (refused or failed, with
the first line of why), crash, timeout, skip (input kinds the way cannot take: sequences, optionals).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from frontend_baseline import run_frontend_as_is

from nndeploy.errors import first_line

WAYS = ("onnxruntime", "tvm", "nndeploy", "nndeploy+fallback")
HOST_PROFILES = ("x86-avx512-server", "x86-avx2-server")


@dataclass(frozen=True)
class Case:
    """One conformance case: a single-op model, its input and reference output sets, and tolerances."""

    name: str
    op_type: str
    model: bytes
    data_sets: tuple[tuple[tuple[Any, ...], tuple[Any, ...]], ...]
    rtol: float
    atol: float


def load_cases(names: Iterable[str] | None = None) -> list[Case]:
    """The onnx package's node conformance cases (all, or those named), with TensorProto data as arrays."""
    import warnings

    from onnx import numpy_helper
    from onnx.backend.test.case.node import collect_testcases

    wanted = set(names) if names is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators divide by zero on purpose
        collected = collect_testcases(None)

    def value(item: Any) -> Any:
        if isinstance(item, onnx.TensorProto):
            return numpy_helper.to_array(item)
        return np.asarray(item) if isinstance(item, np.generic) else item

    cases = []
    for case in collected:
        if wanted is not None and case.name not in wanted:
            continue
        nodes = case.model.graph.node
        sets = tuple(
            (tuple(value(x) for x in inputs), tuple(value(y) for y in outputs))
            for inputs, outputs in case.data_sets
        )
        cases.append(
            Case(
                case.name,
                nodes[0].op_type if len(nodes) == 1 else "+".join(sorted({n.op_type for n in nodes})),
                case.model.SerializeToString(),
                sets,
                float(case.rtol),
                float(case.atol),
            )
        )
    return cases


def run_way(case: Case, way: str, scratch: Path) -> tuple[str, str]:
    """(outcome, detail) of running `case` the given way in this process."""
    model = onnx.load_from_string(case.model)
    if way != "onnxruntime" and not _plain_tensors(case):
        return "skip", "sequence or optional inputs/outputs"
    try:
        for inputs, expected in case.data_sets:
            feeds = {vi.name: x for vi, x in zip(_graph_inputs(model), inputs, strict=False)}
            if way == "onnxruntime":
                got = _run_onnxruntime(case.model, feeds)
            elif way == "tvm":
                got = run_frontend_as_is(model, feeds)
            else:
                got, fallback = _run_nndeploy(model, feeds, scratch, way == "nndeploy+fallback", case)
            problem = _compare(got, expected, case.rtol, case.atol)
            if problem:
                return "wrong", problem
    except Exception as exc:  # every way fails in its own words; one line of them is the detail
        return "error", first_line(exc, with_type=True)
    return "pass", "onnxruntime fallback" if way.startswith("nndeploy") and fallback else ""


def _plain_tensors(case: Case) -> bool:
    return all(isinstance(x, np.ndarray) for inputs, outputs in case.data_sets for x in (*inputs, *outputs))


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _compare(got: list[Any], expected: tuple[Any, ...], rtol: float, atol: float) -> str:
    """'' if every output matches its reference as the onnx backend tests check it, else what differs."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        if not isinstance(e, np.ndarray):
            continue
        g = np.asarray(g)
        if g.shape != e.shape:
            return f"output {index}: shape {list(g.shape)}, expected {list(e.shape)}"
        if e.dtype.kind in "OUS":
            if not np.array_equal(g.astype(e.dtype), e):
                return f"output {index}: strings differ"
            continue
        try:
            np.testing.assert_allclose(g.astype(e.dtype), e, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            worst = float(np.nanmax(np.abs(g.astype(np.float64) - e.astype(np.float64)))) if e.size else 0.0
            return f"output {index}: max abs diff {worst:.3g} (rtol {rtol:g}, atol {atol:g})"
    return ""


def _run_onnxruntime(model: bytes, feeds: dict[str, Any]) -> list[Any]:
    from nndeploy.oracle import session

    sess = session(onnx.load_from_string(model), threads=1)
    return list(sess.run(None, feeds))


def _run_nndeploy(
    model: onnx.ModelProto, feeds: dict[str, Any], scratch: Path, fallback: bool, case: Case
) -> tuple[list[Any], bool]:
    """nndeploy's path for one x86 server, as `plan` and `compile` take it: prepare, find the nodes TVM
    cannot compile, plan (refused without fallback if there are any; with fallback they become
    onnxruntime regions), cut, build and run the artifacts in order. Returns the outputs and whether any
    node ran on onnxruntime. Without fallback neither the known-wrong list nor the build-time check is
    used: that way measures what TVM's compiled code computes. With fallback, the build-time check holds
    compiled parts to the case's tolerance, as `compile --check-atol/--check-rtol` would, on its own
    random inputs (never the case's)."""
    from nndeploy.cli.common import compiler_fallback, write_stage_models
    from nndeploy.graph import load_graph_and_model
    from nndeploy.oracle import float_tolerances
    from nndeploy.partitioner.planner import plan as make_plan
    from nndeploy.planfile import write_plan
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import StageBuild
    from nndeploy.targets.build.check import BuildCheck
    from nndeploy.targets.build.stage import build_stage
    from nndeploy.targets.devices.cluster import parse_cluster

    folder = Path(tempfile.mkdtemp(dir=scratch))
    path = folder / "model.onnx"
    onnx.save(model, path)
    cluster = parse_cluster(
        {"devices": [{"name": "server", "profile": host_profile()}]}, "conformance", folder
    )
    shapes = {name: tuple(np.shape(x)) for name, x in feeds.items()}
    graph, prepared = load_graph_and_model(path, shapes)
    regions = compiler_fallback(prepared, fallback, use_known_wrong=fallback)
    the_plan = make_plan(graph, cluster, "latency", None, regions)
    write_plan(the_plan, folder / "plan.json")
    _, stage_paths = write_stage_models(the_plan, folder / "plan.json", folder / "stages", path)
    tensors = {name: np.asarray(x) for name, x in feeds.items()}
    used_fallback = False
    for stage, stage_path in zip(the_plan.stages, stage_paths, strict=True):
        device = cluster.device(stage.device)
        record = build_stage(
            stage_path,
            stage.index,
            device,
            folder / "build",
            "onnxruntime" if fallback else None,
            regions=stage.fallback,
            check=BuildCheck(float_tolerances(case.atol, case.rtol)) if fallback else None,
        )
        if record.artifact is None:
            raise RuntimeError(record.error or "build failed")
        artifact = record.artifact
        used_fallback |= artifact.fallback is not None or any(p.fallback for p in artifact.parts)
        entry = StageBuild(stage.index, device.name, device.arch, artifact, record.seconds, record.cached)
        outputs, _ = run_artifact(folder / "build", entry, tensors)
        tensors.update(outputs)
    return [tensors[vi.name] for vi in model.graph.output], used_fallback


def culprit_job(case: Case, way: str, scratch: Path) -> tuple[str, str]:
    """IsolatedPool job: ('pass', JSON list of node signatures) for the nodes of `case` whose TVM-compiled
    result differs from onnxruntime's when each runs alone on onnxruntime's values of its inputs."""
    import json

    try:
        return "pass", json.dumps(wrong_node_signatures(case, scratch))
    except Exception as exc:  # a case the search cannot take apart: nothing to add
        return "error", first_line(exc, with_type=True)


def wrong_node_signatures(case: Case, scratch: Path) -> list[str]:
    """Signatures (targets.tvm_coverage.node_signature) of the nodes of `case`, prepared as nndeploy
    prepares it, that TVM computes wrongly on their own (the case's first data set and tolerances)."""
    from frontend_baseline import run_project_import

    from nndeploy.cutting import Group, cut, value_infos
    from nndeploy.graph import load_prepared_model
    from nndeploy.oracle import run_model
    from nndeploy.targets.frontend.coverage import node_signature

    model = onnx.load_from_string(case.model)
    feeds = {vi.name: x for vi, x in zip(_graph_inputs(model), case.data_sets[0][0], strict=False)}
    path = Path(tempfile.mkdtemp(dir=scratch)) / "model.onnx"
    onnx.save(model, path)
    prepared = load_prepared_model(path, {name: list(np.shape(x)) for name, x in feeds.items()})
    types = value_infos(prepared)
    initializers = {t.name: t for t in prepared.graph.initializer}
    every = onnx.ModelProto()
    every.CopyFrom(prepared)
    shown = {vi.name for vi in every.graph.output}
    every.graph.output.extend(
        types[name]
        for node in prepared.graph.node
        for name in node.output
        if name in types and name not in shown
    )
    values = {**feeds, **run_model(every, feeds)}
    nodes = [node for node in prepared.graph.node if node.op_type != "Constant"]
    groups = [Group(n.name, (n.name,), tuple(o for o in n.output if o in types)) for n in nodes]
    wrong = []
    for node, single in zip(nodes, cut(prepared, groups, "node", independent=True), strict=True):
        inputs = {vi.name: values[vi.name] for vi in single.graph.input if vi.name in values}
        try:
            got = run_project_import(single, inputs)
        except Exception:  # TVM does not build it: it falls back anyway
            continue
        expected = tuple(values[vi.name] for vi in single.graph.output)
        if _compare(got, expected, case.rtol, case.atol):
            wrong.append(node_signature(node, types, initializers))
    return wrong


def host_profile() -> str:
    """The built-in x86 profile whose code this CPU runs natively."""
    from nndeploy.targets.artifacts.loader import missing_cpu_features
    from nndeploy.targets.devices.registry import load_profiles

    profiles = load_profiles()
    for name in HOST_PROFILES:
        if not missing_cpu_features(profiles[name].tvm_target):
            return name
    return HOST_PROFILES[-1]


# --- isolation -----------------------------------------------------------------------------------------
def _worker(connection: Any, scratch: str, job: Callable[[Case, str, Path], tuple[str, str]]) -> None:
    """Worker process: run (case, way) jobs until told to stop."""
    import os

    os.environ.setdefault("TVM_NUM_THREADS", "1")
    while True:
        task = connection.recv()
        if task is None:
            return
        case, way = task
        started = time.perf_counter()
        outcome, detail = job(case, way, Path(scratch))
        connection.send((outcome, detail, time.perf_counter() - started))


class IsolatedPool:
    """`workers` long-lived processes running jobs one at a time; a job over `timeout_s` or one that
    kills its process is recorded as such and the process replaced."""

    def __init__(
        self,
        workers: int,
        timeout_s: float,
        scratch: Path,
        job: Callable[[Case, str, Path], tuple[str, str]] = run_way,
    ) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.timeout_s = timeout_s
        self.scratch = scratch
        self.job = job
        self.slots = [self._spawn() for _ in range(max(1, workers))]

    def _spawn(self) -> tuple[Any, Any]:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker, args=(child, str(self.scratch), self.job), daemon=True)
        process.start()
        child.close()
        return process, parent

    def run(self, jobs: Iterable[tuple[Case, str]]) -> Iterator[tuple[Case, str, str, str, float]]:
        """Yield (case, way, outcome, detail, seconds) as jobs finish (not in order)."""
        from multiprocessing.connection import wait

        pending = iter(jobs)
        busy: dict[int, tuple[Case, str, float]] = {}
        for index in range(len(self.slots)):
            self._give(index, pending, busy)
        while busy:
            connections = {self.slots[i][1]: i for i in busy}
            ready = wait(list(connections), timeout=0.5)
            now = time.monotonic()
            for connection in ready:
                index = connections[connection]
                case, way, started = busy.pop(index)
                try:
                    outcome, detail, seconds = connection.recv()
                except (EOFError, OSError):
                    code = self.slots[index][0].exitcode
                    outcome, detail, seconds = "crash", f"worker died (exit code {code})", now - started
                    self._replace(index)
                yield case, way, outcome, detail, seconds
                self._give(index, pending, busy)
            for index, (case, way, started) in list(busy.items()):
                if now - started > self.timeout_s:
                    busy.pop(index)
                    self._replace(index)
                    yield case, way, "timeout", f"no result within {self.timeout_s:g} s", now - started
                    self._give(index, pending, busy)

    def _give(self, index: int, pending: Iterator[tuple[Case, str]], busy: dict[int, Any]) -> None:
        job = next(pending, None)
        if job is not None:
            self.slots[index][1].send(job)
            busy[index] = (job[0], job[1], time.monotonic())

    def _replace(self, index: int) -> None:
        process, connection = self.slots[index]
        if process.is_alive():
            process.kill()
        process.join(timeout=10)
        connection.close()
        self.slots[index] = self._spawn()

    def close(self) -> None:
        """Stop every worker."""
        for process, connection in self.slots:
            with contextlib.suppress(OSError, ValueError):
                connection.send(None)
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
