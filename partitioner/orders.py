"""Candidate topological orders of a graph. The search cuts one order into contiguous stages, so on
branchy graphs the order decides which cuts exist; the planner tries each of these and keeps the best."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from nndeploy.types import Graph


def candidate_orders(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Distinct topological orders by name: the model's own, depth-first and breadth-first."""
    consumers, indegree = _dependencies(graph)
    orders = {
        "model": tuple(range(len(graph.nodes))),
        "depth-first": _kahn(consumers, indegree, lambda step, node: (-step, node)),
        "breadth-first": _kahn(consumers, indegree, lambda step, node: (step, node)),
    }
    unique: dict[str, tuple[int, ...]] = {}
    for name, order in orders.items():
        if order not in unique.values():
            unique[name] = order
    return unique


def _dependencies(graph: Graph) -> tuple[list[list[int]], list[int]]:
    producer = {t: i for i, node in enumerate(graph.nodes) for t in node.outputs}
    consumers: list[list[int]] = [[] for _ in graph.nodes]
    indegree = [0] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        for source in sorted({producer[t] for t in node.inputs if t in producer}):
            consumers[source].append(i)
            indegree[i] += 1
    return consumers, indegree


def _kahn(
    consumers: list[list[int]], indegree: list[int], priority: Callable[[int, int], tuple[int, int]]
) -> tuple[int, ...]:
    """Kahn's algorithm; `priority(step_made_ready, node)` picks among ready nodes (smallest first)."""
    remaining = list(indegree)
    ready = [(*priority(0, i), i) for i, deg in enumerate(remaining) if deg == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        node = heapq.heappop(ready)[-1]
        order.append(node)
        for nxt in consumers[node]:
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                heapq.heappush(ready, (*priority(len(order), nxt), nxt))
    return tuple(order)
