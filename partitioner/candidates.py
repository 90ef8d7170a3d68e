"""The top-k candidate plans: several distinct, good splits found by the exact solver, best predicted first.

`nndeploy plan --check-top K` times these for real and keeps the best measured one. Candidates are exact
optima of variants of the planning problem: the optimum of each topological order, the optimum with the
devices restricted to a subset (the others cannot compute, but inputs still arrive at the source and
results still go to the sink), and the other objective's optimum. Duplicates (the same nodes on the
same devices) are dropped and the rest ranked by the objective's predicted figure.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping

import numpy as np

from nndeploy.errors import PlanError
from nndeploy.partitioner.cost import CostModel
from nndeploy.partitioner.planner import OrderProblem, build_plan, explain_no_fit, objective_key, setup
from nndeploy.partitioner.search import Problem, Solution, evaluate, solve
from nndeploy.types import Cluster, FallbackNode, Graph, Plan

# At most this many device subsets are solved (all of them for up to 4 devices; for more, every single
# device, every leave-one-out, then pairs until the cap), so 6 devices cost about 25 solves.
MAX_SUBSETS = 24

Assignment = frozenset[tuple[str, frozenset[str]]]


def candidate_plans(
    graph: Graph,
    cluster: Cluster,
    objective: str,
    cost_model: CostModel | None = None,
    k: int = 5,
    fallback: Mapping[str, FallbackNode] | None = None,
) -> list[Plan]:
    """Up to `k` plans with different stage assignments, best predicted first for `objective`; the
    first is the plan `planner.plan` returns (`fallback` as there)."""
    if k < 1:
        raise PlanError(f"the number of candidate plans must be at least 1, not {k}")
    started = time.perf_counter()
    prepared = setup(graph, cluster, objective, cost_model, fallback)
    other = "latency" if objective == "throughput" else "throughput"
    found: list[tuple[OrderProblem, Solution]] = []
    for candidate in prepared.orders:  # first: each order's optimum, as plan() compares them
        found += [(candidate, s) for s in [solve(candidate.problem, objective)] if s is not None]
    if not found:
        raise PlanError(explain_no_fit(graph, cluster))
    best_index = min(range(len(found)), key=lambda i: (objective_key(found[i][1], objective), i))
    best_order = found[best_index][0]
    for candidate in prepared.orders:
        found += [(candidate, s) for s in [solve(candidate.problem, other)] if s is not None]
    for subset in device_subsets(len(cluster.devices)):
        solution = solve_on_subset(best_order.problem, subset, objective)
        if solution is not None:
            found.append((best_order, solution))
    rest = sorted(
        (f for i, f in enumerate(found) if i != best_index), key=lambda f: objective_key(f[1], objective)
    )
    ranked = [found[best_index], *rest]
    plans: list[Plan] = []
    seen: set[Assignment] = set()
    for candidate, solution in ranked:
        assignment = _assignment(prepared.graph, prepared.cluster, candidate, solution)
        if assignment in seen:
            continue
        seen.add(assignment)
        plans.append(build_plan(prepared, objective, candidate, solution, started))
        if len(plans) == k:
            break
    return plans


def device_subsets(count: int, cap: int = MAX_SUBSETS) -> list[tuple[int, ...]]:
    """Proper non-empty subsets of `count` devices to restrict the search to, at most `cap` of them."""
    if count <= 1:
        return []
    if 2**count - 2 <= cap:
        return [s for size in range(1, count) for s in itertools.combinations(range(count), size)]
    subsets = [(d,) for d in range(count)]
    subsets += [tuple(d for d in range(count) if d != left) for left in range(count)]
    subsets += list(itertools.combinations(range(count), 2))
    unique = list(dict.fromkeys(subsets))
    return unique[:cap]


def solve_on_subset(problem: Problem, subset: tuple[int, ...], objective: str) -> Solution | None:
    """The optimum when only the devices in `subset` may run stages. The smaller problem keeps the
    source and sink devices (for the input and output transfers) but lets them compute only if they are
    in `subset`; the segments and figures returned are those of the full problem."""
    keep = sorted({*subset, problem.source, problem.sink})
    compute = problem.compute[keep].copy()
    for row, device in enumerate(keep):
        if device not in subset:
            compute[row] = np.inf
    index = np.ix_(keep, keep)
    smaller = Problem(
        compute=compute,
        params=problem.params,
        act_mem=problem.act_mem,
        live_bytes=problem.live_bytes,
        mem_capacity=problem.mem_capacity[keep],
        link_latency_ms=problem.link_latency_ms[index],
        link_ms_per_byte=problem.link_ms_per_byte[index],
        source=keep.index(problem.source),
        sink=keep.index(problem.sink),
    )
    solution = solve(smaller, objective)
    if solution is None:
        return None
    segments = tuple((start, end, keep[device]) for start, end, device in solution.segments)
    latency, bottleneck = evaluate(problem, segments)
    return Solution(segments, latency, bottleneck)


def _assignment(graph: Graph, cluster: Cluster, candidate: OrderProblem, solution: Solution) -> Assignment:
    """Which nodes run on which device: two plans with the same assignment are the same plan."""
    return frozenset(
        (
            cluster.devices[device].name,
            frozenset(graph.nodes[i].name for i in candidate.order[start:end]),
        )
        for start, end, device in solution.segments
    )
