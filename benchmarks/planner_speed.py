"""How long the planner takes on a 10,000-node model over a 4-device cluster (target: under 2 s).

    python benchmarks/planner_speed.py [--blocks 2000] [--repeats 5]

Builds a residual MLP of `blocks` x 5 nodes (MatMul, Add, Relu, MatMul, residual Add; weights shared so the
file stays small), analyses it once, then times `plan()` for both objectives on the example cluster with
two edge boards, a Jetson and a server. Prints medians; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nndeploy.graph import load_graph
from nndeploy.partitioner.planner import plan
from nndeploy.targets.devices.cluster import parse_cluster

CLUSTER = {
    "name": "bench-4-devices",
    "devices": [
        {"name": "board-a", "profile": "raspberry-pi-5"},
        {"name": "board-b", "profile": "raspberry-pi-5"},
        {"name": "jetson", "profile": "jetson-orin-nano-gpu"},
        {"name": "server", "profile": "x86-avx512-server"},
    ],
    "default_link": {"gbps": 1.0, "latency_ms": 0.2},
    "input_at": "board-a",
    "output_to": "server",
}


def residual_mlp(blocks: int, width: int = 64) -> onnx.ModelProto:
    """A deep residual MLP with 5 nodes per block."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.05, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32) * 0.05, "w2")
    bias = numpy_helper.from_array(np.zeros(width, np.float32), "bias")
    nodes, x = [], "x"
    for i in range(blocks):
        nodes += [
            helper.make_node("MatMul", [x, "w1"], [f"h{i}"], name=f"fc1_{i}"),
            helper.make_node("Add", [f"h{i}", "bias"], [f"hb{i}"], name=f"bias_{i}"),
            helper.make_node("Relu", [f"hb{i}"], [f"a{i}"], name=f"relu_{i}"),
            helper.make_node("MatMul", [f"a{i}", "w2"], [f"o{i}"], name=f"fc2_{i}"),
            helper.make_node("Add", [x, f"o{i}"], [f"x{i}"], name=f"residual_{i}"),
        ]
        x = f"x{i}"
    graph = helper.make_graph(
        nodes,
        "residual_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [32, width])],
        [w1, w2, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cluster = parse_cluster(CLUSTER, "bench-cluster.yaml", Path.cwd())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "residual_mlp.onnx"
        onnx.save(residual_mlp(args.blocks), path)
        started = time.perf_counter()
        graph = load_graph(path)
        analysis_s = time.perf_counter() - started
    print(f"model: {len(graph.nodes)} nodes; analysis (load, shape inference, costs): {analysis_s:.2f} s")
    for objective in ("throughput", "latency"):
        times, result = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = plan(graph, cluster, objective)
            times.append(time.perf_counter() - started)
        assert result is not None
        print(
            f"plan ({objective}): median {statistics.median(times):.3f} s over {args.repeats} runs "
            f"(min {min(times):.3f}, max {max(times):.3f}); {len(result.stages)} stages on "
            f"{', '.join(s.device for s in result.stages)}; predicted latency {result.latency_ms:.2f} ms, "
            f"throughput {result.throughput_per_s:.1f}/s"
        )


if __name__ == "__main__":
    main()
