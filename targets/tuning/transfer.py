"""Schedules for workloads never tuned, carried over from tuned workloads of the same structure.

Two TIR workloads have the same structure when their TVM script is equal once every number is blanked
(`signature`): the same fused op kinds, layouts, loop nests and index expressions, different extents.
A workload without a record of its own takes the tuned records of the `NEAREST` tuned workloads of its
structure (nearest by the log-distance of their buffer shapes), re-applies each record's trace to itself
with every sampled tile size refitted to its own loop extents (`fit_tiles`: the divisors of the new extent
closest to the old factors, inner first), runs MetaSchedule's CPU post-processors on the result, and
keeps the candidate the cost model ranks first (`cost_model`); without a cost model, the candidate from
the nearest workload. No candidate is measured: compile runs no trials. A trace whose decisions do not
apply to the new workload (a compute location or a loop that no longer exists) is dropped.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nndeploy.targets.tuning.metaschedule import light_context, threaded_map, workload_hash

NEAREST = 2  # tuned workloads of the same structure a workload takes candidates from
TOP_K = 3  # records of each of them re-applied


@dataclass(frozen=True)
class Source:
    """A tuned workload a schedule can be taken from."""

    signature: str
    shape: tuple[int, ...]  # every buffer dimension of its parameters, in order
    flops: float
    mod: Any  # the workload's IRModule
    records: tuple[Any, ...]  # its best TuningRecords, fastest first


@dataclass(frozen=True)
class Transferred:
    """A schedule carried over to one workload, and where it came from."""

    scheduled: Any  # the workload's IRModule with the schedule applied
    trace: Any
    candidates: int  # traces that applied (the cost model chose among these)
    source_distance: float
    estimate_s: float  # the source record's time scaled by the FLOPs ratio


def signature(mod: Any) -> str:
    """The workload's structure without its sizes or names: a hash of its TVM script with its parameter
    buffers renamed by position (the importer names them after the model's tensors) and every number
    blanked."""
    text = mod["main"].script()
    header = text.split("):\n", 1)[0]
    names = {name: f"arg{i}" for i, name in enumerate(re.findall(r"(\w+): T\.Buffer\(", header))}
    if names:
        pattern = r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")\b"
        text = re.sub(pattern, lambda found: names[found.group(1)], text)
    text = re.sub(r"\d+", "N", text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shape_of(mod: Any) -> tuple[int, ...]:
    """Every dimension of the workload's parameter buffers, in order, read from its script's header."""
    header = mod["main"].script().split("):\n", 1)[0]
    dims: list[int] = []
    for shape in re.findall(r"T\.Buffer\(\((.*?)\),? ?\)?, \"", header):
        dims.extend(int(n) for n in re.findall(r"(?:T\.int\d+\()?(\d+)\)?", shape))
    return tuple(dims)


def distance(a: Sequence[int], b: Sequence[int]) -> float:
    """How far apart two workloads' shapes are: summed |log ratio| of their dimensions."""
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in zip(a, b, strict=True))


def fit_tiles(extent: int, old: Sequence[int], max_innermost: int) -> list[int]:
    """`len(old)` factors whose product is `extent`, each the divisor of what is left closest (in log
    ratio) to the old factor, innermost first; the innermost at most `max_innermost` (when positive)."""
    factors = [1] * len(old)
    left = extent
    for position in range(len(old) - 1, 0, -1):
        limit = max_innermost if position == len(old) - 1 and max_innermost > 0 else left
        divisors = [d for d in _divisors(left) if d <= limit]
        wanted = max(int(old[position]), 1)
        factors[position] = min(divisors, key=lambda d: (abs(math.log(d / wanted)), d))
        left //= factors[position]
    factors[0] = left
    return factors


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def apply_trace(trace: Any, mod: Any, target: Any, moved: list[int] | None = None) -> Any | None:
    """A schedule of `mod` made by re-applying `trace` (post-processing dropped) with its tile sizes
    refitted, then MetaSchedule's post-processors for the target; None if any step does not apply.
    `moved`, if given, gets one entry per refitted tile whose innermost factor was a power of two and
    is not any more (an odd vector width or register block: often many times slower)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    schedule = tvm.s_tir.Schedule(mod)

    def provider(inst: Any, inputs: list[Any], attrs: list[Any], decision: Any) -> Any:
        if inst.kind.name != "SamplePerfectTile" or decision is None:
            return decision
        extent = schedule.get(inputs[0]).extent
        if not hasattr(extent, "value"):
            raise ValueError("a tile of a symbolic loop")
        old = [int(d) for d in decision]
        if math.prod(old) == int(extent.value):
            return decision
        new = [int(f) for f in fit_tiles(int(extent.value), old, int(attrs[1]))]
        if moved is not None and _power_of_two(old[-1]) and not _power_of_two(new[-1]):
            moved.append(1)
        return new

    try:
        trace.apply_to_schedule(schedule, remove_postproc=True, decision_provider=provider)
        schedule.enter_postproc()
        context = light_context(mod, target)
        for postproc in ms.postproc.Postproc.create("llvm"):
            postproc._initialize_with_tune_context(context)
            if not postproc.apply(schedule):
                return None
    except Exception:  # TVM raises ScheduleError, TVMError, ValueError for a decision that no longer fits
        return None
    return schedule


def ranked_candidates(
    mod: Any,
    sources: Iterable[Source],
    target: Any,
    rank: Callable[[Any, Sequence[Any]], Sequence[float]] | None = None,
) -> list[Transferred]:
    """Every schedule for `mod` carried over from `sources` (see the module docstring), best first: by
    `rank(mod, schedules)` (the cost model; higher is faster), ties and no ranker by nearest source."""
    key, shape = signature(mod), shape_of(mod)
    near = sorted((distance(shape, s.shape), n, s) for n, s in enumerate(sources) if s.signature == key)
    near = [entry for entry in near if math.isfinite(entry[0])][:NEAREST]
    found: list[tuple[Any, float, float, int]] = []  # (schedule, distance, estimate_s, innermost moved)
    flops = workload_flops(mod)
    for gap, _, source in near:
        for record in source.records[:TOP_K]:
            moved: list[int] = []
            schedule = apply_trace(record.trace, mod, target, moved)
            if schedule is None or not record.run_secs:
                continue
            seconds = sum(float(s) for s in record.run_secs) / len(record.run_secs)
            ratio = flops / source.flops if source.flops > 0 and flops > 0 else 1.0
            found.append((schedule, gap, seconds * ratio, len(moved)))
    scores = (
        list(rank(mod, [f[0] for f in found])) if rank is not None and len(found) > 1 else [0.0] * len(found)
    )
    # Candidates whose innermost tiles (vector width, register block) kept a power of two come first: the
    # cost model, trained on tuned records only, cannot tell a refitted inner tile of 48 lanes from one of
    # 16 (measured: 3.2 ms against 0.24 ms on one pointwise conv, the slow one ranked first by the model).
    order = sorted(range(len(found)), key=lambda i: (found[i][3], -scores[i], found[i][1]))
    return [
        Transferred(found[i][0].mod, found[i][0].trace, len(found), found[i][1], found[i][2]) for i in order
    ]


def transfer(
    mod: Any,
    sources: Iterable[Source],
    target: Any,
    rank: Callable[[Any, Sequence[Any]], Sequence[float]] | None = None,
) -> Transferred | None:
    """The best schedule for `mod` carried over from `sources`; None if no tuned workload has its
    structure or none of their traces applies."""
    found = ranked_candidates(mod, sources, target, rank)
    return found[0] if found else None


def workload_flops(mod: Any) -> float:
    """TVM's FLOP estimate of one run of the workload (0 when it cannot tell)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # opaque or dynamic loops
        return 0.0


def sources_of(database: Any, index: dict[str, Any] | None = None) -> list[Source]:
    """Every tuned workload of a MetaSchedule database as a transfer source. `index` (workload structural
    hash -> {"signature", "shape", "flops"}), written when the database was packed, saves recomputing
    them."""
    workloads: dict[int, Any] = {}
    for record in database.get_all_tuning_records():
        workloads.setdefault(workload_hash(record.workload.mod), record.workload)
    found = []
    for key, workload in workloads.items():
        records = tuple(r for r in database.get_top_k(workload, TOP_K) if r.run_secs)
        if not records:
            continue
        mod = workload.mod
        known = (index or {}).get(str(key))
        if known is not None:
            found.append(
                Source(known["signature"], tuple(known["shape"]), float(known["flops"]), mod, records)
            )
        else:
            found.append(Source(signature(mod), shape_of(mod), workload_flops(mod), mod, records))
    return found


def workload_tasks(mod: Any, target: Any) -> list[tuple[str, Any]]:
    """(task name, workload module) of every TIR function of the Relax module `mod` still to schedule."""
    from tvm.s_tir import meta_schedule as ms

    found = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        workload = task.dispatched[0]
        if workload.attrs is None or not workload.attrs.get("tirx.is_scheduled", False):
            found.append((task.task_name, workload))
    return found


def wanted_keys(mods: Iterable[Any], index: dict[str, Any]) -> set[str]:
    """The keys of `index` ("<half>:<workload hash>") these workloads need: each one's own entries, or,
    where it has none, its NEAREST workloads of the same structure."""
    keys: set[str] = set()
    for mod in mods:
        key = str(workload_hash(mod))
        own = {f"{half}:{key}" for half in ("warm", "cold")} & index.keys()
        if own:
            keys |= own
            continue
        key_signature, shape = signature(mod), shape_of(mod)
        near = sorted(
            (distance(shape, entry["shape"]), name)
            for name, entry in index.items()
            if entry.get("signature") == key_signature
        )
        keys |= {name for gap, name in near[:NEAREST] if math.isfinite(gap)}
    return keys


def fill_gaps(
    tasks: Sequence[tuple[str, Any]],
    target: Any,
    databases: Sequence[Any],
    sources: Callable[[], Sequence[Source]],
    rank: Callable[[Any, Sequence[Any]], Sequence[float]] | None,
) -> tuple[Any, dict[str, int]]:
    """A database holding a transferred schedule for every task (`workload_tasks`) that none of
    `databases` has a record for, and how many tasks were: found in a database ("tuned"), transferred,
    or left to the plain schedule ("plain"). `sources()` is called only if some task has no record
    (describing a user's database computes every workload's signature)."""
    from tvm.s_tir import meta_schedule as ms

    memory = ms.database.MemoryDatabase()
    counts = {"tuned": 0, "transferred": 0, "plain": 0}
    gaps = []
    for name, workload_mod in tasks:
        if any(db.query_tuning_record(workload_mod, target, name) is not None for db in databases):
            counts["tuned"] += 1
        else:
            gaps.append(workload_mod)
    known = list(sources()) if gaps else []
    # Each gap's candidates are independent schedule work (trace re-application, post-processors,
    # features): spread over the cores.
    for workload_mod, found in zip(
        gaps, threaded_map(lambda mod: transfer(mod, known, target, rank), gaps), strict=True
    ):
        if found is None:
            counts["plain"] += 1
            continue
        workload = memory.commit_workload(workload_mod)
        args = ms.arg_info.ArgInfo.from_entry_func(found.scheduled, remove_preproc=True)
        memory.commit_tuning_record(
            ms.database.TuningRecord(found.trace, workload, [found.estimate_s], target, args)
        )
        counts["transferred"] += 1
    return memory, counts
