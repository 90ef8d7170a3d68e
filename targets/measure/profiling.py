"""Measuring this host for `nndeploy profile`: can it stand in for a device profile, and how fast is it.

With onnxruntime on the CPU at a fixed thread count it times a MatMul (peak fp32 GFLOP/s), a large Add
(memory bandwidth), the op sweep (targets/measure/op_sweep.py) and, optionally, every node of given models
as a one-node model. Each timed node becomes an `OpSample`: the planner's cost features of that node (from
nndeploy.graph) and its measured milliseconds. onnxruntime is imported inside the functions.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from nndeploy.constant_folding import tensor_types
from nndeploy.errors import ModelError
from nndeploy.graph import analyze
from nndeploy.model_prep import file_sha256, load_model, prepare_model, real_inputs
from nndeploy.targets.measure.op_sweep import sweep_cases
from nndeploy.types import Device, Graph, Node, OpSample

# onnxruntime graph optimisation used for every timing. "basic" folds constants and fuses a few neighbours
# (Conv+BatchNormalization, Conv+Add) but changes no layout, so a stage takes about the sum of its nodes'
# times; "all" (NCHWc layouts) makes whole CNN stages up to ~25% faster than that sum on x86.
OPTIMIZATION = "basic"
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class HostMeasurement:
    """What `profile_host` measured: host, thread count, peak fp32 GFLOP/s, bandwidth, samples, and the
    sweep cases or model nodes onnxruntime would not run on their own (`skipped`)."""

    host: dict[str, str]
    threads: int
    measured_at: str
    peak_gflops: float
    mem_bw_gbytes_s: float
    call_overhead_ms: float
    samples: tuple[OpSample, ...]
    seconds: float
    skipped: tuple[str, ...] = field(default=())


def host_machine() -> str:
    """This host's architecture in profile spelling (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return _MACHINES.get(machine, machine)


def host_description() -> dict[str, str]:
    """Host name, architecture, CPU model and core count, for the record."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "machine": host_machine(),
        "cpu": model or "unknown",
        "cpus": str(os.cpu_count() or 1),
    }


def why_not_measurable(device: Device, flags: frozenset[str] | None = None) -> str | None:
    """None if this host can run `device`'s code natively (so timing it here means something), else the
    reason in one line. `flags`: another host's CPU features in LLVM's spelling (default: this host's)."""
    from nndeploy.targets.artifacts.loader import missing_cpu_features

    target_kind = device.tvm_target.get("kind")
    if device.kind == "gpu" or target_kind not in ("llvm", "c"):
        return (
            f"GPU profile (tvm_target kind {target_kind}): profile times ops with onnxruntime's CPU "
            "provider, so GPU kernels are not profiled (nndeploy verify times CUDA stages on a GPU)"
        )
    machine = host_machine()
    if device.arch != machine:
        emulated = " under qemu emulation" if device.arch == "aarch64" else ""
        return (
            f"{device.arch} device on an {machine} host: timings{emulated} say nothing about the real "
            "board: run `nndeploy profile` on the device itself"
        )
    missing = missing_cpu_features(device.tvm_target, flags)
    if missing:
        mcpu = device.tvm_target.get("mcpu", "")
        return (
            f"mcpu '{mcpu}' needs {', '.join(sorted(missing))}, which this CPU lacks: "
            "run `nndeploy profile` on a machine of that kind"
        )
    return None


def session(model: onnx.ModelProto, threads: int) -> Any:
    """An onnxruntime CPU session as profiling times it: `threads` intra-op threads, one inter-op,
    sequential execution, graph optimisation OPTIMIZATION."""
    from nndeploy import oracle

    return oracle.session(model, threads, OPTIMIZATION)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for `model`'s real inputs: normal floats, zeros for integers (valid indices), False."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in real_inputs(model):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (
            rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        )
    return feeds


def time_runs(run: Callable[[], object], reps: int = 25, budget_s: float = 0.15, warmup: int = 2) -> float:
    """Milliseconds of one `run()`: the lower quartile of at least 5 and at most `reps` timed calls (after
    `warmup` untimed ones), stopping once `budget_s` seconds are spent. A low quantile, not the median:
    on a shared host other processes make some runs slow, never fast."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < reps and (len(times) < 5 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 25)) * 1e3


def model_ms(
    model: onnx.ModelProto, threads: int | None = None, reps: int = 25, budget_s: float = 1.0
) -> float:
    """Milliseconds of one run of a whole (stage) model on random inputs (as `time_runs` counts them)."""
    sess = session(model, threads or os.cpu_count() or 1)
    feeds = random_feeds(model)
    return time_runs(lambda: sess.run(None, feeds), reps, budget_s)


def _one_op_model(
    op: str, shapes: Sequence[Sequence[int]], **attrs: Any
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    names = [f"x{i}" for i in range(len(shapes))]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)],
        op.lower(),
        [
            helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(s))
            for n, s in zip(names, shapes, strict=True)
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(0)
    return model, {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes, strict=True)}


def peak_gflops(threads: int, size: int = 1024, reps: int = 10) -> float:
    """fp32 GFLOP/s of a size x size x size MatMul (2 FLOPs per multiply-accumulate)."""
    model, feeds = _one_op_model("MatMul", [(size, size), (size, size)])
    sess = session(model, threads)
    ms = time_runs(lambda: sess.run(None, feeds), reps, budget_s=1.0)
    return 2.0 * size**3 / (ms * 1e-3) / 1e9


def memory_bandwidth_gbps(threads: int, mib: int = 64, reps: int = 10) -> float:
    """GB/s of an Add of two `mib` MiB float32 tensors: bytes read plus written over the time."""
    elems = mib * 1024 * 1024 // 4
    model, feeds = _one_op_model("Add", [(elems,), (elems,)])
    sess = session(model, threads)
    ms = time_runs(lambda: sess.run(None, feeds), reps, budget_s=1.0)
    return 3 * elems * 4 / (ms * 1e-3) / 1e9


def call_overhead_ms(threads: int) -> float:
    """Milliseconds of a run that does (almost) nothing: a Neg of one number. Subtracted from samples."""
    model, feeds = _one_op_model("Neg", [(1,)])
    sess = session(model, threads)
    return time_runs(lambda: sess.run(None, feeds), reps=300, budget_s=0.1, warmup=20)


def _sample(node: Node, ms: float, overhead: float, source: str, label: str) -> OpSample:
    return OpSample(
        op_type=node.op_type,
        flops=float(node.flops),
        bytes=float(node.bytes_read + node.bytes_written),
        param_bytes=float(node.param_bytes),
        out_bytes=float(node.out_bytes),
        dtype=node.dtype,
        ms=max(ms - overhead, 1e-4),
        source=source,
        label=label,
    )


def sweep_samples(threads: int, overhead: float, quick: bool = False) -> tuple[list[OpSample], list[str]]:
    """Time every sweep case (targets/measure/op_sweep.py); features come from the planner's own analysis.
    Returns the samples and the cases this onnxruntime would not run."""
    samples, failed = [], []
    for case in sweep_cases(quick):
        prepared = prepare_model(case.model, name=case.label)
        node = analyze(prepared, case.label, "", {}, 1).nodes[0]
        try:
            sess = session(prepared, threads)
            feeds = random_feeds(prepared)
            ms = time_runs(lambda sess=sess, feeds=feeds: sess.run(None, feeds))
        except Exception:  # an onnxruntime build without this kernel: leave the case out
            failed.append(case.label)
            continue
        samples.append(_sample(node, ms, overhead, "sweep", case.label))
    return samples, failed


def node_models(prepared: onnx.ModelProto) -> list[tuple[int, onnx.ModelProto]]:
    """One single-node model per node of a prepared model (index in the graph, model): the node's
    activation inputs become graph inputs, its weights stay initializers. Nodes with subgraphs (If, Loop,
    Scan) and nodes with an input of unknown shape are left out."""
    types = tensor_types(prepared)
    inits = {t.name: t for t in prepared.graph.initializer}
    result = []
    for index, node in enumerate(prepared.graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        inputs, weights = [], []
        for name in dict.fromkeys(n for n in node.input if n):
            if name in inits:
                weights.append(inits[name])
                continue
            elem, dims = types.get(name, (0, None))
            if not elem or dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
                break
            inputs.append(helper.make_tensor_value_info(name, elem, dims))
        else:
            outputs = [helper.make_tensor_value_info(o, *types.get(o, (0, None))) for o in node.output if o]
            graph = helper.make_graph([node], node.name, inputs, outputs, weights)
            one = helper.make_model(graph, opset_imports=list(prepared.opset_import))
            one.ir_version = prepared.ir_version
            result.append((index, one))
    return result


def load_for_timing(
    path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[onnx.ModelProto, Graph]:
    """The model at `path` prepared as `nndeploy plan` prepares it (only the `input_shapes` naming its
    inputs are bound), and its analysed Graph (nodes in the same order)."""
    raw = load_model(path)
    names = {vi.name for vi in real_inputs(raw)}
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items() if k in names}
    prepared = prepare_model(raw, shapes, None, name=str(path))
    return prepared, analyze(prepared, str(path), file_sha256(path), shapes, 1)


def model_samples(
    prepared: onnx.ModelProto, graph: Graph, threads: int, overhead: float, source: str
) -> tuple[list[OpSample], list[str]]:
    """Time every node of a prepared model on its own; one sample per distinct node configuration.
    Returns the samples and the nodes onnxruntime would not run alone."""
    seen: dict[bytes, float] = {}
    samples, failed = [], []
    for index, one in node_models(prepared):
        node = graph.nodes[index]
        key = _config_key(one)
        if key in seen:
            continue
        try:
            sess = session(one, threads)
            feeds = random_feeds(one)
            seen[key] = time_runs(lambda sess=sess, feeds=feeds: sess.run(None, feeds))
        except Exception:  # an op onnxruntime refuses on its own (e.g. odd index inputs): skip it
            failed.append(f"{node.name} ({node.op_type})")
            continue
        samples.append(_sample(node, seen[key], overhead, source, node.name))
    return samples, failed


def _config_key(one: onnx.ModelProto) -> bytes:
    """Same op, attributes and input/output types: the same timing (weights' values do not matter)."""
    node = onnx.NodeProto()
    node.CopyFrom(one.graph.node[0])
    node.name = ""
    parts = [node.op_type.encode(), *(a.SerializeToString() for a in node.attribute)]
    parts += [vi.type.SerializeToString() for vi in (*one.graph.input, *one.graph.output)]
    parts += [bytes(str((t.data_type, tuple(t.dims))), "ascii") for t in one.graph.initializer]
    return b"|".join(parts)


def profile_host(
    threads: int | None = None,
    models: Sequence[str | Path] = (),
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> HostMeasurement:
    """Measure this host: peak, bandwidth, call overhead, the op sweep, and every node of `models`
    (loaded first, so a bad model fails before any timing)."""
    started = time.perf_counter()
    loaded = [(Path(path).name, *load_for_timing(path, input_shapes)) for path in models]
    count = threads or os.cpu_count() or 1
    say = progress or (lambda _: None)
    say("peak fp32 compute (MatMul)")
    peak = peak_gflops(count, 512 if quick else 1024, 5 if quick else 10)
    say("memory bandwidth (Add)")
    bandwidth = memory_bandwidth_gbps(count, 16 if quick else 64, 5 if quick else 10)
    overhead = call_overhead_ms(count)
    say("op sweep")
    samples, skipped = sweep_samples(count, overhead, quick)
    for name, prepared, graph in loaded:
        say(f"every node of {name}")
        found, failed = model_samples(prepared, graph, count, overhead, name)
        if not found:
            raise ModelError(f"{name}: no node of the model could be timed on its own")
        samples += found
        skipped += failed
    return HostMeasurement(
        host=host_description(),
        threads=count,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        peak_gflops=peak,
        mem_bw_gbytes_s=bandwidth,
        call_overhead_ms=overhead,
        samples=tuple(samples),
        seconds=time.perf_counter() - started,
        skipped=tuple(skipped),
    )
