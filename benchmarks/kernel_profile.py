"""Where a stage's time goes, kernel by kernel: a bytecode build's VM calls in order (VM
instrumentation) and onnxruntime's per-node profile in order, summed per op family, and the
convolutions where the tuned kernel loses most against onnxruntime's node. Used by tuning.py."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nndeploy.targets.artifacts.manifest import StageBuild

FAMILIES = (
    ("conv2d", "Conv"),
    ("matmul", "MatMul/Gemm"),
    ("dense", "MatMul/Gemm"),
    ("softmax", "Softmax"),
    ("layer_norm", "LayerNorm"),
    ("pool", "Pool"),
    ("resize", "Resize"),
)
ORT_FAMILIES = {
    "Conv": "Conv",
    "FusedConv": "Conv",
    "MatMul": "MatMul/Gemm",
    "Gemm": "MatMul/Gemm",
    "FusedMatMul": "MatMul/Gemm",
    "FusedGemm": "MatMul/Gemm",
    "Softmax": "Softmax",
    "LayerNormalization": "LayerNorm",
    "SkipLayerNormalization": "LayerNorm",
    "SimplifiedLayerNormalization": "LayerNorm",
    "MaxPool": "Pool",
    "AveragePool": "Pool",
    "GlobalAveragePool": "Pool",
    "Resize": "Resize",
}


def ort_nodes_ms(stage_model: Path, threads: int, runs: int = 10) -> list[tuple[str, str, float]]:
    """onnxruntime's own per-node profile in execution order: (node, op, median ms per inference)."""
    import numpy as np
    import onnxruntime as ort

    from nndeploy.oracle import random_inputs
    from nndeploy.types import TensorSpec

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "prof")
        sess = ort.InferenceSession(str(stage_model), options, providers=["CPUExecutionProvider"])
        specs = tuple(
            TensorSpec(i.name, tuple(i.shape), "int64" if "int64" in i.type else "float32")
            for i in sess.get_inputs()
        )
        feed = random_inputs(specs, 0)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        node = event["name"].removesuffix("_kernel_time")
        ops[node] = event["args"].get("op_name", "")
        times.setdefault(node, []).append(event["dur"] / 1e3)
    return [(node, ops[node], float(np.median(t))) for node, t in times.items()]


def ort_ms_by_family(nodes: list[tuple[str, str, float]]) -> dict[str, float]:
    """onnxruntime's per-node profile summed per op family, ms per inference."""
    totals: dict[str, float] = {}
    for _, op, ms in nodes:
        family = ORT_FAMILIES.get(op, "other")
        totals[family] = totals.get(family, 0.0) + ms
    return {k: round(v, 4) for k, v in totals.items()}


def tvm_calls_ms(build_dir: Path, entry: StageBuild, runs: int = 5) -> list[tuple[str, float]]:
    """Every call of a bytecode build's VM (kernels and builtins) in order, timed through VM
    instrumentation: (symbol, median ms over runs)."""
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from nndeploy.oracle import random_inputs

    assert entry.artifact is not None
    vm = VirtualMachine(tvm.runtime.load_module(str(build_dir / entry.artifact.path)), tvm.cpu(0))
    args = [tvm.runtime.tensor(v) for v in random_inputs(entry.artifact.inputs, 0).values()]
    started: dict[str, float] = {}
    calls: list[tuple[str, float]] = []

    def instrument(func: object, symbol: str, before_run: bool, ret_value: object, *call_args: object) -> int:
        if before_run:
            started[symbol] = time.perf_counter()
        elif symbol in started:
            calls.append((symbol, (time.perf_counter() - started.pop(symbol)) * 1e3))
        return 0

    vm["main"](*args)
    per_run = []
    vm.set_instrument(instrument)
    for _ in range(runs):
        calls.clear()
        vm["main"](*args)
        per_run.append(list(calls))
    return [
        (symbol, float(np.median([r[i][1] for r in per_run]))) for i, (symbol, _) in enumerate(per_run[-1])
    ]


def tvm_ms_by_family(calls: list[tuple[str, float]]) -> dict[str, float]:
    """The VM calls' time summed per op family, ms per inference."""
    totals: dict[str, float] = {}
    for symbol, ms in calls:
        family = next((f for key, f in FAMILIES if key in symbol), "other")
        totals[family] = totals.get(family, 0.0) + ms
    return {k: round(v, 4) for k, v in totals.items()}


def worst_convolutions(
    calls: list[tuple[str, float]], nodes: list[tuple[str, str, float]], count: int = 5
) -> list[dict]:
    """The convolutions where the tuned kernel loses most against onnxruntime's node, paired in execution
    order (both run the model's convolutions in its order); [] when the counts differ (no pairing)."""
    kernels = [(symbol, ms) for symbol, ms in calls if "conv2d" in symbol]
    convs = [(node, ms) for node, op, ms in nodes if ORT_FAMILIES.get(op) == "Conv"]
    if len(kernels) != len(convs):
        return []
    pairs = [
        {"kernel": k, "node": n, "tvm_ms": round(t, 4), "ort_ms": round(o, 4), "ratio": round(t / o, 3)}
        for (k, t), (n, o) in zip(kernels, convs, strict=True)
        if o > 0
    ]
    return sorted(pairs, key=lambda p: -(p["tvm_ms"] - p["ort_ms"]))[:count]
