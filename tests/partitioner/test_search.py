"""The stage search is exact: it matches brute force on random small problems, for both objectives."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from nndeploy.partitioner.search import Problem, brute_force, evaluate, solve


def random_problem(rng: np.random.Generator, n: int, num: int) -> Problem:
    """A random cost instance: heterogeneous speeds, some unsupported ops, tight-ish memory."""
    speed = rng.uniform(0.2, 5.0, size=(num, 1))
    compute = rng.uniform(0.1, 3.0, size=(1, n)) / speed
    unsupported = rng.random((num, n)) < 0.08
    compute = np.where(unsupported, np.inf, compute)
    params = rng.integers(0, 50, size=n).astype(float)
    act_mem = rng.integers(1, 30, size=n).astype(float)
    live = rng.integers(1, 40, size=n + 1).astype(float)
    capacity = rng.uniform(0.3, 1.2, size=num) * (params.sum() + act_mem.max())
    latency = rng.uniform(0.0, 1.0, size=(num, num))
    per_byte = rng.uniform(0.001, 0.2, size=(num, num))
    latency = (latency + latency.T) / 2
    per_byte = (per_byte + per_byte.T) / 2
    np.fill_diagonal(latency, 0.0)
    np.fill_diagonal(per_byte, 0.0)
    return Problem(
        compute=compute,
        params=params,
        act_mem=act_mem,
        live_bytes=live,
        mem_capacity=capacity,
        link_latency_ms=latency,
        link_ms_per_byte=per_byte,
        source=int(rng.integers(num)),
        sink=int(rng.integers(num)),
    )


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_matches_brute_force_on_random_problems(objective: str) -> None:
    rng = np.random.default_rng(7)
    checked = infeasible = 0
    for _ in range(300):
        problem = random_problem(rng, n=int(rng.integers(1, 9)), num=int(rng.integers(1, 5)))
        expected = brute_force(problem, objective)
        got = solve(problem, objective)
        if expected is None:
            assert got is None
            infeasible += 1
            continue
        assert got is not None
        latency, bottleneck = evaluate(problem, got.segments)
        assert math.isclose(latency, got.latency_ms, rel_tol=1e-9)
        if objective == "latency":
            assert math.isclose(latency, expected.latency_ms, rel_tol=1e-9, abs_tol=1e-12)
        else:
            assert math.isclose(bottleneck, expected.bottleneck_ms, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(latency, expected.latency_ms, rel_tol=1e-9, abs_tol=1e-12)
        checked += 1
    assert checked > 150 and infeasible > 5  # the generator exercises both outcomes


def test_segments_cover_every_node_once_on_distinct_devices() -> None:
    rng = np.random.default_rng(3)
    problem = random_problem(rng, n=40, num=4)
    got = solve(problem, "throughput")
    assert got is not None
    assert got.segments[0][0] == 0 and got.segments[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(got.segments, got.segments[1:], strict=False))
    devices = [d for _, _, d in got.segments]
    assert len(devices) == len(set(devices))


def test_two_equal_devices_split_evenly_for_throughput() -> None:
    n = 100
    problem = Problem(
        compute=np.ones((2, n)),
        params=np.zeros(n),
        act_mem=np.ones(n),
        live_bytes=np.ones(n + 1),
        mem_capacity=np.full(2, 1e9),
        link_latency_ms=np.array([[0.0, 0.01], [0.01, 0.0]]),
        link_ms_per_byte=np.array([[0.0, 1e-6], [1e-6, 0.0]]),
        source=0,
        sink=0,
    )
    assert [s[1] - s[0] for s in solve(problem, "throughput").segments] == [50, 50]
    assert len(solve(problem, "latency").segments) == 1  # one device avoids both transfers


def test_large_problem_is_fast() -> None:
    rng = np.random.default_rng(1)
    problem = random_problem(rng, n=10_000, num=4)
    problem = Problem(**{**problem.__dict__, "compute": np.abs(np.nan_to_num(problem.compute, posinf=1.0))})
    started = time.perf_counter()
    assert solve(problem, "throughput") is not None
    assert time.perf_counter() - started < 20  # generous: the benchmark reports the real figure
