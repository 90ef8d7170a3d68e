"""The `plan` verb: an analysed graph and a cluster in, the optimal Plan out.

Builds the search's cost arrays for each candidate topological order, solves each exactly, keeps the
best, and turns the chosen segments into Stages with their tensors, times and memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nndeploy.errors import PlanError
from nndeploy.graph import check_fixed_outputs
from nndeploy.partitioner.cost import DEFAULT_HOP, CostModel, RooflineCostModel, supports
from nndeploy.partitioner.orders import candidate_orders
from nndeploy.partitioner.search import Problem, Solution, solve
from nndeploy.types import OBJECTIVES, Cluster, FallbackNode, Graph, Plan, Stage, TensorSpec


@dataclass(frozen=True)
class Lifetimes:
    """For one order: where each tensor is produced and last needed (positions; inputs at -1,
    model outputs needed until n), and the bytes crossing each cut 0..n."""

    produced: dict[str, int]
    last_use: dict[str, int]
    live_bytes: np.ndarray

    def crossing(self, cut: int) -> list[str]:
        """Tensors that cross cut `cut`, in a stable order."""
        return [t for t, p in self.produced.items() if p < cut <= self.last_use[t]]


@dataclass(frozen=True)
class OrderProblem:
    """The search's cost arrays for one candidate topological order (`name`: model, depth-first, ...)."""

    name: str
    order: tuple[int, ...]
    lifetimes: Lifetimes
    problem: Problem


@dataclass(frozen=True)
class Setup:
    """Everything the search needs for one graph on one cluster: the cost model, per-device node times
    (`node_ms[d, i]`) and one Problem per candidate topological order."""

    graph: Graph
    cluster: Cluster
    model: CostModel
    node_ms: np.ndarray
    orders: tuple[OrderProblem, ...]
    fallback: Mapping[str, FallbackNode]


def setup(
    graph: Graph,
    cluster: Cluster,
    objective: str,
    cost_model: CostModel | None = None,
    fallback: Mapping[str, FallbackNode] | None = None,
) -> Setup:
    """Check the request (objective, non-empty graph, op support) and build the cost arrays per order.
    Nodes in `fallback` run on onnxruntime: on CPU devices only, costed like compiled code plus the
    hand-over between executors."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective '{objective}'; use one of: {', '.join(OBJECTIVES)}")
    if not graph.nodes:
        raise PlanError(f"{graph.model_path}: the model has no operators to place")
    check_fixed_outputs(graph)
    model = cost_model or RooflineCostModel(cluster.hop or DEFAULT_HOP)
    fallback = dict(fallback or {})
    _check_op_support(graph, cluster, fallback)
    node_ms = np.stack([model.node_ms(graph, device) for device in cluster.devices])
    if fallback:
        _cost_fallback(graph, cluster, model, fallback, node_ms)
    latency, per_byte = _link_matrices(cluster, model)
    names = [d.name for d in cluster.devices]
    orders = []
    for order_name, order in candidate_orders(graph).items():
        lifetimes = lifetimes_for(graph, order)
        problem = Problem(
            compute=node_ms[:, order],
            params=np.array([graph.nodes[i].param_bytes for i in order], dtype=float),
            act_mem=np.array(
                [lifetimes.live_bytes[p] + graph.nodes[i].out_bytes for p, i in enumerate(order)], dtype=float
            ),
            live_bytes=_transfer_bytes(graph, lifetimes),
            mem_capacity=np.array([d.mem_bytes for d in cluster.devices], dtype=float),
            link_latency_ms=latency,
            link_ms_per_byte=per_byte,
            source=names.index(cluster.source),
            sink=names.index(cluster.sink),
        )
        orders.append(OrderProblem(order_name, order, lifetimes, problem))
    return Setup(graph, cluster, model, node_ms, tuple(orders), fallback)


def _transfer_bytes(graph: Graph, lifetimes: Lifetimes) -> np.ndarray:
    """Bytes crossing each cut, infinite where a sequence, an optional or a tensor of data-dependent shape
    would cross (stages exchange fixed-shape tensors only, so the search never places a device change
    there)."""
    crossing = np.asarray(lifetimes.live_bytes, dtype=float).copy()
    for name in (graph.non_tensors | graph.data_dependent) & lifetimes.produced.keys():
        crossing[lifetimes.produced[name] + 1 : lifetimes.last_use[name] + 1] = np.inf
    return crossing


# Handing tensors between a TVM part and an onnxruntime region of one stage (in-process numpy arrays).
FALLBACK_HANDOVER_MS = 0.02


def _cost_fallback(
    graph: Graph,
    cluster: Cluster,
    model: CostModel,
    fallback: Mapping[str, FallbackNode],
    node_ms: np.ndarray,
) -> None:
    """Fallback nodes can run only where onnxruntime's CPU executor does: on CPU devices, whatever their
    op or dtype list says (that list is what TVM compiles), at the cost model's time plus the hand-over."""
    cpus = [d for d, device in enumerate(cluster.devices) if device.tvm_target.get("kind") == "llvm"]
    if not cpus:
        first = next(iter(fallback.values()))
        raise PlanError(
            f"node '{first.node}' ({first.op_type}) must run on onnxruntime ({first.reason}), which runs on "
            f"CPU devices, and cluster '{cluster.name}' has none: add a CPU device"
        )
    every_dtype = frozenset(node.dtype for node in graph.nodes)
    indices = [i for i, node in enumerate(graph.nodes) if node.name in fallback]
    for d, device in enumerate(cluster.devices):
        if d not in cpus:
            node_ms[d, indices] = np.inf
            continue
        anything = dataclasses.replace(device, ops=None, dtypes=device.dtypes | every_dtype)
        node_ms[d, indices] = model.node_ms(graph, anything)[indices] + FALLBACK_HANDOVER_MS


def objective_key(solution: Solution, objective: str) -> tuple[float, ...]:
    """What `objective` minimises, in order: latency; or the bottleneck, then latency."""
    if objective == "latency":
        return (solution.latency_ms,)
    return (solution.bottleneck_ms, solution.latency_ms)


def plan(
    graph: Graph,
    cluster: Cluster,
    objective: str = "throughput",
    cost_model: CostModel | None = None,
    fallback: Mapping[str, FallbackNode] | None = None,
) -> Plan:
    """The best split of `graph` over `cluster` for `objective` ('throughput' or 'latency'); nodes in
    `fallback` are placed on CPU devices and run there on onnxruntime, recorded on their stage."""
    started = time.perf_counter()
    prepared = setup(graph, cluster, objective, cost_model, fallback)
    best: tuple[tuple[float, ...], OrderProblem, Solution] | None = None
    for candidate in prepared.orders:
        solution = solve(candidate.problem, objective)
        if solution is None:
            continue
        key = objective_key(solution, objective)
        if best is None or key < best[0]:
            best = (key, candidate, solution)
    if best is None:
        raise PlanError(explain_no_fit(graph, cluster))
    _, chosen, solution = best
    return build_plan(prepared, objective, chosen, solution, started)


def lifetimes_for(graph: Graph, order: tuple[int, ...]) -> Lifetimes:
    """Tensor lifetimes and per-cut live bytes for `order` (a permutation of node indices)."""
    n = len(order)
    produced: dict[str, int] = {name: -1 for name in graph.inputs}
    last_use: dict[str, int] = {name: -1 for name in graph.inputs}
    for position, index in enumerate(order):
        for name in graph.nodes[index].outputs:
            if name in graph.tensors:
                produced[name] = position
                last_use[name] = position
    for position, index in enumerate(order):
        for name in graph.nodes[index].inputs:
            if name in last_use:
                last_use[name] = max(last_use[name], position)
    for name in graph.outputs:
        if name in last_use:
            last_use[name] = n
    delta = np.zeros(n + 2)
    for name, start in produced.items():
        if last_use[name] > start:
            nbytes = graph.tensors[name].nbytes
            delta[start + 1] += nbytes
            delta[last_use[name] + 1] -= nbytes
    return Lifetimes(produced, last_use, np.cumsum(delta)[: n + 1])


def _link_matrices(cluster: Cluster, model: CostModel) -> tuple[np.ndarray, np.ndarray]:
    """Per device pair: fixed latency (ms) and ms per byte, read off the cost model's transfer time."""
    count = len(cluster.devices)
    latency, per_byte = np.zeros((count, count)), np.zeros((count, count))
    for a, first in enumerate(cluster.devices):
        for b, second in enumerate(cluster.devices):
            link = cluster.link(first.name, second.name)
            fixed = model.transfer_ms(0, link)
            latency[a, b] = fixed
            per_byte[a, b] = (model.transfer_ms(1e9, link) - fixed) / 1e9
    return latency, per_byte


def _check_op_support(graph: Graph, cluster: Cluster, fallback: Mapping[str, FallbackNode]) -> None:
    """Refuse, in one line listing all of them, ops that no device in the cluster can run (nodes that
    fall back to onnxruntime are checked by `_cost_fallback`)."""
    orphans: dict[str, list[str]] = defaultdict(list)
    for node in graph.nodes:
        if node.name not in fallback and not any(
            supports(device, node.op_type, node.dtype) for device in cluster.devices
        ):
            orphans[f"{node.op_type} ({node.dtype})"].append(node.name)
    if orphans:
        listed = "; ".join(
            f"{op} at {', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''}"
            for op, nodes in orphans.items()
        )
        raise PlanError(
            f"no device in cluster '{cluster.name}' supports: {listed}; "
            "TVM cannot compile them for these devices: pass --fallback onnxruntime to run such stages on "
            "onnxruntime, or add a device (or profile ops/dtypes) that supports them"
        )


def explain_no_fit(graph: Graph, cluster: Cluster) -> str:
    """Why no plan exists once op support is known to be fine: memory."""
    biggest = max(cluster.devices, key=lambda d: d.mem_bytes)
    total = graph.total_param_bytes
    mib = 1024**2
    return (
        f"the model does not fit in cluster '{cluster.name}': it needs {total / mib:.1f} MiB of weights plus "
        f"activations, and no split over the devices fits their memory (largest: {biggest.name}, "
        f"{biggest.mem_bytes / mib:.0f} MiB); add devices or memory, or lower --batch"
    )


def build_plan(
    prepared: Setup, objective: str, chosen: OrderProblem, solution: Solution, started: float
) -> Plan:
    """Turn a solution's segments (on `chosen`'s order) into Stages and the Plan with its predictions;
    `started` (a time.perf_counter() value) dates the planning time it reports."""
    graph, cluster, model, node_ms = prepared.graph, prepared.cluster, prepared.model, prepared.node_ms
    order, lifetimes, order_name = chosen.order, chosen.lifetimes, chosen.name
    names = [d.name for d in cluster.devices]
    stages: list[Stage] = []
    for index, (start, end, device) in enumerate(solution.segments):
        nodes = [graph.nodes[i] for i in order[start:end]]
        next_device = (
            names[solution.segments[index + 1][2]] if index + 1 < len(solution.segments) else cluster.sink
        )
        outputs = _specs(graph, lifetimes.crossing(end))
        weights = {w for node in nodes for w in node.params}
        param_bytes = sum(graph.param_bytes.get(w, 0) for w in weights)
        peak_act = max(lifetimes.live_bytes[p] + graph.nodes[order[p]].out_bytes for p in range(start, end))
        stages.append(
            Stage(
                index=index,
                device=names[device],
                nodes=tuple(node.name for node in nodes),
                inputs=_specs(graph, lifetimes.crossing(start)),
                outputs=outputs,
                compute_ms=float(node_ms[device, list(order[start:end])].sum()),
                transfer_ms=model.transfer_ms(
                    sum(t.nbytes for t in outputs), cluster.link(names[device], next_device)
                ),
                mem_bytes=int(param_bytes + peak_act),
                param_bytes=int(param_bytes),
                op_types=tuple(sorted({node.op_type for node in nodes})),
                fallback=tuple(prepared.fallback[n.name] for n in nodes if n.name in prepared.fallback),
            )
        )
    first_in = model.transfer_ms(
        sum(t.nbytes for t in stages[0].inputs), cluster.link(cluster.source, stages[0].device)
    )
    return Plan(
        model_path=graph.model_path,
        model_sha256=graph.model_sha256,
        objective=objective,
        stages=tuple(stages),
        latency_ms=solution.latency_ms,
        throughput_per_s=graph.batch * 1e3 / max(solution.bottleneck_ms, 1e-9),
        input_shapes=dict(graph.input_shapes),
        inputs=tuple(graph.tensors[name] for name in graph.inputs),
        outputs=tuple(graph.tensors[name] for name in graph.outputs),
        cluster=cluster,
        batch=graph.batch,
        input_transfer_ms=first_in,
        bottleneck=_bottleneck(stages, first_in, cluster, solution.bottleneck_ms),
        topological_order=order_name,
        planner_seconds=time.perf_counter() - started,
    )


def _specs(graph: Graph, names: list[str]) -> tuple[TensorSpec, ...]:
    return tuple(graph.tensors[name] for name in names)


def _bottleneck(stages: list[Stage], first_in: float, cluster: Cluster, worst: float) -> str:
    """Which pipeline resource is the slowest, in words."""
    first = stages[0].device
    into = f"link {cluster.source} -> {first}" if cluster.source != first else f"hop into stage 0 on {first}"
    candidates = [(first_in, f"{into} (inputs)")]
    for i, stage in enumerate(stages):
        candidates.append((stage.compute_ms, f"stage {stage.index} compute on {stage.device}"))
        target = stages[i + 1].device if i + 1 < len(stages) else cluster.sink
        hop = (
            f"link {stage.device} -> {target}"
            if target != stage.device
            else f"hop out of stage {stage.index}"
        )
        candidates.append((stage.transfer_ms, hop))
    return max(candidates, key=lambda c: c[0])[1] if worst > 0 else ""
