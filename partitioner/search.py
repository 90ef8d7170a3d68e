"""The optimal stage search: a pure function over numpy cost arrays (no ONNX, no I/O).

Stages are contiguous segments of one topological order, each on its own device (a device may stay
unused). Every tensor that crosses a cut travels over the link between the two neighbouring stages
(tensors needed further down are relayed), so the cost of cut k between devices a and b depends only on
(k, a, b). That makes an exact dynamic programme over (position, set of used devices, last device):

* latency  = input transfer + sum of stage compute + sum of cut transfers + output transfer, minimised;
* throughput = the slowest pipeline resource (a stage's compute or a link's transfer), minimised by
  bisection on a feasibility DP; then the latency is minimised among the plans whose bottleneck is within
  THROUGHPUT_MARGIN of that best one. A bottleneck a hair lower is inside the cost model's own error, and
  is not worth latency: seen, a detector's last 11 nodes (0.03 ms) sent from a Pi to a server and the
  result back over Wi-Fi, +34 ms of latency, to keep the Pi's 20 ms stage a hair shorter.

Segment costs are prefix-sum differences and segment validity (memory, op support, bottleneck) is a
lower bound on the segment start that only grows with its end, so each DP transition is a range-min
query answered for all positions at once with a sparse table.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INF = float("inf")
# A throughput plan may be this much slower at its bottleneck than the best one, if that buys latency.
THROUGHPUT_MARGIN = 0.02


@dataclass(frozen=True)
class Problem:
    """Cost arrays for one topological order of n nodes on D devices.

    compute[d, i]: ms of node i on device d (inf where d cannot run it).
    params[i]: weight bytes node i brings into its stage; act_mem[i]: activation bytes resident while
    node i runs; live_bytes[k] (k = 0..n): bytes crossing cut k (k=0: model inputs, k=n: model outputs).
    mem_capacity[d]: bytes. link_latency_ms[a, b] and link_ms_per_byte[a, b]: transfer cost (the diagonal:
    a hop between processes of one device, paid only between the source or sink and a stage on the same
    device). source/sink: device indices where inputs arrive and outputs are consumed."""

    compute: np.ndarray
    params: np.ndarray
    act_mem: np.ndarray
    live_bytes: np.ndarray
    mem_capacity: np.ndarray
    link_latency_ms: np.ndarray
    link_ms_per_byte: np.ndarray
    source: int
    sink: int

    @property
    def n(self) -> int:
        """Number of nodes."""
        return int(self.compute.shape[1])

    @property
    def num_devices(self) -> int:
        """Number of devices."""
        return int(self.compute.shape[0])

    def transfer_ms(self, a: int, b: int, k: int | np.ndarray) -> float | np.ndarray:
        """Time to send what crosses cut k from device a to device b (a == b: between two processes of one
        device, the endpoint and its first or last stage; the diagonal's cost, often zero)."""
        per_byte = self.link_ms_per_byte[a, b]
        size = np.asarray(self.live_bytes[k], dtype=float)
        moved = size * per_byte if per_byte else np.zeros_like(size)  # 0 * inf (a forbidden cut) is NaN
        return self.link_latency_ms[a, b] + moved


@dataclass(frozen=True)
class Solution:
    """The chosen split: `segments[s] = (start, end, device)` covering [0, n) in order."""

    segments: tuple[tuple[int, int, int], ...]
    latency_ms: float
    bottleneck_ms: float


def evaluate(problem: Problem, segments: tuple[tuple[int, int, int], ...]) -> tuple[float, float]:
    """(latency, bottleneck) of a given split, or (inf, inf) if it breaks memory or op support."""
    total, worst = 0.0, 0.0
    prev = problem.source
    for start, end, device in segments:
        cut = float(problem.transfer_ms(prev, device, start))
        seg = float(problem.compute[device, start:end].sum())
        mem = problem.params[start:end].sum() + problem.act_mem[start:end].max()
        if not math.isfinite(seg) or mem > problem.mem_capacity[device]:
            return INF, INF
        total += cut + seg
        worst = max(worst, cut, seg)
        prev = device
    out = float(problem.transfer_ms(prev, problem.sink, problem.n))
    return total + out, max(worst, out)


def solve(problem: Problem, objective: str) -> Solution | None:
    """The optimal split for `objective` ('latency' or 'throughput'); None if no split is valid."""
    tables = _Tables(problem)
    best = _min_latency(problem, tables, threshold=None)
    if best is None or objective == "latency":
        return best
    # The least bottleneck, to float resolution.
    high = 0.0 if _feasible(problem, tables, 0.0) else best.bottleneck_ms
    high = _smallest(0.0, high, lambda limit: _feasible(problem, tables, limit), rounds=200)
    widest = _min_latency(problem, tables, threshold=high * (1 + THROUGHPUT_MARGIN))
    if widest is None:
        return best

    def reaches(limit: float) -> bool:
        found = _min_latency(problem, tables, threshold=limit)
        return found is not None and found.latency_ms <= widest.latency_ms * (1 + 1e-12)

    # Of the plans with that least latency, the one with the lowest bottleneck: the smallest threshold
    # that still reaches it (latency only falls as the threshold grows).
    if not reaches(high):
        high = _smallest(high, widest.bottleneck_ms, reaches, rounds=60)
    return _min_latency(problem, tables, threshold=high) or widest


def _smallest(low: float, high: float, accepts: Callable[[float], bool], rounds: int) -> float:
    """Bisect [low, high] (`accepts(high)` holds, and stays true above any accepted value) for the
    smallest accepted value, to float resolution or `rounds` steps."""
    for _ in range(rounds):
        mid = (low + high) / 2
        if not low < mid < high:
            break
        if accepts(mid):
            high = mid
        else:
            low = mid
    return high


def brute_force(problem: Problem, objective: str) -> Solution | None:
    """Exhaustive search over every split and device assignment (the test oracle; tiny inputs only), by
    the same rule as `solve`."""
    n, num = problem.n, problem.num_devices
    found: list[Solution] = []
    for num_stages in range(1, min(n, num) + 1):
        for cuts in itertools.combinations(range(1, n), num_stages - 1):
            bounds = (0, *cuts, n)
            for devices in itertools.permutations(range(num), num_stages):
                segments = tuple((bounds[s], bounds[s + 1], devices[s]) for s in range(num_stages))
                latency, bottleneck = evaluate(problem, segments)
                if math.isfinite(latency):
                    found.append(Solution(segments, latency, bottleneck))
    if not found:
        return None
    if objective == "throughput":
        limit = min(s.bottleneck_ms for s in found) * (1 + THROUGHPUT_MARGIN)
        found = [s for s in found if s.bottleneck_ms <= limit]
    return min(found, key=lambda s: (s.latency_ms, s.bottleneck_ms))


class _Tables:
    """Per-device arrays shared by every DP run on one problem."""

    def __init__(self, problem: Problem) -> None:
        n = problem.n
        self.ends = np.arange(n + 1)
        unsupported = ~np.isfinite(problem.compute)
        compute = np.where(unsupported, 0.0, problem.compute)
        self.prefix = np.concatenate([np.zeros((problem.num_devices, 1)), np.cumsum(compute, axis=1)], axis=1)
        param_prefix = np.concatenate([[0.0], np.cumsum(problem.params, dtype=float)])
        act_max = _SparseTable(problem.act_mem.astype(float), np.maximum)
        self.lower: list[np.ndarray] = []
        for d in range(problem.num_devices):
            # lower[d][j]: smallest valid start of a stage on d that ends at j (j means: none is valid).
            last_bad = np.maximum.accumulate(np.where(unsupported[d], np.arange(n), -1))
            lo_ops = np.concatenate([[0], last_bad + 1])
            lo_mem = _smallest_start(param_prefix, act_max, problem.mem_capacity[d], n)
            self.lower.append(np.maximum(lo_ops, lo_mem))
        cuts = np.arange(n + 1)
        self.cut_ms = [
            [problem.transfer_ms(a, b, cuts) for b in range(problem.num_devices)]
            for a in range(problem.num_devices)
        ]
        self._bounds: dict[tuple[int, float | None], np.ndarray] = {}

    def start_bound(self, device: int, threshold: float | None) -> np.ndarray:
        """Smallest valid start per end, also keeping the stage's compute within `threshold`."""
        lower = self.lower[device]
        if threshold is None:
            return lower
        key = (device, threshold)
        if key not in self._bounds:
            prefix = self.prefix[device]
            lo_time = np.searchsorted(prefix, prefix - threshold * (1 + 1e-12), side="left")
            self._bounds = {k: v for k, v in self._bounds.items() if k[1] == threshold}
            self._bounds[key] = np.maximum(lower, lo_time)
        return self._bounds[key]


def _smallest_start(param_prefix: np.ndarray, act_max: _SparseTable, capacity: float, n: int) -> np.ndarray:
    """For each end j, the smallest i with params[i:j] + max(act_mem[i:j]) <= capacity (j if none)."""
    ends = np.arange(1, n + 1)
    lo = np.zeros(n, dtype=np.int64)
    hi = ends.copy()  # hi = j means "no valid start"
    # Memory only shrinks as the start moves right: binary search on every end at once.
    while True:
        active = lo < hi
        if not active.any():
            break
        idx = np.nonzero(active)[0]
        mid = (lo[idx] + hi[idx]) // 2
        end = ends[idx]
        fits = param_prefix[end] - param_prefix[mid] + act_max.query(mid, end) <= capacity
        hi[idx] = np.where(fits, mid, hi[idx])
        lo[idx] = np.where(fits, lo[idx], mid + 1)
    return np.concatenate([[0], lo])


class _SparseTable:
    """Range max/min queries over [i, j) for arrays of starts and ends at once."""

    def __init__(self, values: np.ndarray, combine: np.ufunc) -> None:
        self.combine = combine
        self.levels = [values]
        width = 1
        while 2 * width <= len(values):
            prev = self.levels[-1]
            self.levels.append(combine(prev[:-width], prev[width:]))
            width *= 2

    def query(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """combine(values[i:j]) per pair; callers guarantee i < j."""
        length = ends - starts
        level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
        out = np.empty(len(starts), dtype=float)
        for k in np.unique(level):
            mask = level == k
            table = self.levels[k]
            out[mask] = self.combine(table[starts[mask]], table[ends[mask] - (1 << k)])
        return out


class _ArgMinTable:
    """Range argmin over [i, j) (smallest index among ties) for arrays of starts and ends at once."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.levels = [np.arange(len(values))]
        width = 1
        while 2 * width <= len(values):
            prev = self.levels[-1]
            left, right = prev[:-width], prev[width:]
            self.levels.append(np.where(values[right] < values[left], right, left))
            width *= 2

    def query(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Index of the minimum per pair; callers guarantee i < j."""
        length = ends - starts
        level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
        out = np.empty(len(starts), dtype=np.int64)
        for k in np.unique(level):
            mask = level == k
            table = self.levels[k]
            left, right = table[starts[mask]], table[ends[mask] - (1 << k)]
            out[mask] = np.where(self.values[right] < self.values[left], right, left)
        return out


def _states(num: int) -> list[tuple[int, int]]:
    """Every (used-device mask, last device) pair, ordered by the number of devices used."""
    states = [(mask, last) for mask in range(1, 1 << num) for last in range(num) if mask >> last & 1]
    return sorted(states, key=lambda s: (bin(s[0]).count("1"), s))


def _min_latency(problem: Problem, tables: _Tables, threshold: float | None) -> Solution | None:
    """Minimum-latency split, optionally with every stage and transfer kept within `threshold` ms."""
    n, num = problem.n, problem.num_devices
    limit = INF if threshold is None else threshold * (1 + 1e-12)
    cost: dict[tuple[int, int], np.ndarray] = {}
    back: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    ends = tables.ends
    for d in range(num):
        first = float(problem.transfer_ms(problem.source, d, 0))
        row = np.full(n + 1, INF)
        valid = (tables.start_bound(d, threshold) == 0) & (ends >= 1)
        if first <= limit:
            row[valid] = first + tables.prefix[d][valid]
        cost[(1 << d, d)] = row
        back[(1 << d, d)] = (np.zeros(n + 1, dtype=np.int64), np.full(n + 1, -1, dtype=np.int64))
    for mask, last in _states(num):
        row = cost.get((mask, last))
        if row is None or not np.isfinite(row).any():
            continue
        for nxt in range(num):
            if mask >> nxt & 1:
                continue
            cut = tables.cut_ms[last][nxt]
            start_cost = np.where(cut <= limit, row + cut - tables.prefix[nxt], INF)
            lower = tables.start_bound(nxt, threshold)
            js = np.nonzero((lower < ends) & (ends >= 2))[0]
            if len(js) == 0:
                continue
            starts = np.maximum(lower[js], 1)
            ok = starts < js
            js, starts = js[ok], starts[ok]
            if len(js) == 0:
                continue
            best_i = _ArgMinTable(start_cost).query(starts, js)
            candidate = start_cost[best_i] + tables.prefix[nxt][js]
            key = (mask | 1 << nxt, nxt)
            if key not in cost:
                cost[key] = np.full(n + 1, INF)
                back[key] = (np.zeros(n + 1, dtype=np.int64), np.full(n + 1, -1, dtype=np.int64))
            target, (starts_of, prev_of) = cost[key], back[key]
            better = candidate < target[js]
            target[js[better]] = candidate[better]
            starts_of[js[better]] = best_i[better]
            prev_of[js[better]] = last
    best_key, best_total = None, INF
    for (mask, last), row in cost.items():
        out = float(problem.transfer_ms(last, problem.sink, n))
        if out <= limit and row[n] + out < best_total:
            best_key, best_total = (mask, last), row[n] + out
    if best_key is None:
        return None
    segments = []
    mask, last, end = best_key[0], best_key[1], n
    while True:
        starts_of, prev_of = back[(mask, last)]
        start, prev = int(starts_of[end]), int(prev_of[end])
        segments.append((start, end, last))
        if prev < 0:
            break
        mask, last, end = mask & ~(1 << last), prev, start
    segments.reverse()
    latency, bottleneck = evaluate(problem, tuple(segments))
    return Solution(tuple(segments), latency, bottleneck)


def _feasible(problem: Problem, tables: _Tables, threshold: float) -> bool:
    """Whether some split keeps every stage's compute and every transfer within `threshold` ms."""
    n, num = problem.n, problem.num_devices
    limit = threshold * (1 + 1e-12)
    ends = tables.ends
    reach: dict[tuple[int, int], np.ndarray] = {}
    for d in range(num):
        if float(problem.transfer_ms(problem.source, d, 0)) <= limit:
            reach[(1 << d, d)] = (tables.start_bound(d, threshold) == 0) & (ends >= 1)
    for mask, last in _states(num):
        row = reach.get((mask, last))
        if row is None or not row.any():
            continue
        if row[n] and float(problem.transfer_ms(last, problem.sink, n)) <= limit:
            return True
        for nxt in range(num):
            if mask >> nxt & 1:
                continue
            usable = row & (tables.cut_ms[last][nxt] <= limit)
            count = np.concatenate([[0], np.cumsum(usable)])
            lower = np.maximum(tables.start_bound(nxt, threshold), 1)
            lower = np.minimum(lower, ends)
            hit = count[ends] - count[lower] > 0
            key = (mask | 1 << nxt, nxt)
            reach[key] = reach[key] | hit if key in reach else hit
    return False
