"""Thin helpers over MetaSchedule's objects shared by the tuning room: a tuning database folder opened
read-only, a workload's key, a TuneContext that costs nothing to make, and a map over this machine's
cores for independent schedule work."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nndeploy.targets.tuning import database as tuning_db

# How long a candidate is timed at least (MetaSchedule's default: 100 ms). With the default, timing was
# 48 s of a 152 s tune of small_detector (261 trials; py-spy): kernels run 0.05-1 ms, so 30 ms is still
# 30-600 runs per candidate.
MIN_REPEAT_MS = 30
Item = TypeVar("Item")
Result = TypeVar("Result")


def open_databases(db_dir: Path) -> list[tuple[bool, Any]]:
    """(weights cold, MetaSchedule database) of the halves that exist in `db_dir` (warm first),
    read-only."""
    from tvm.s_tir import meta_schedule as ms

    found = []
    for cold in (False, True):
        half = tuning_db.half_dir(db_dir, cold)
        if (half / tuning_db.RECORDS).is_file():
            database = ms.database.JSONDatabase(
                path_workload=str(half / tuning_db.WORKLOADS),
                path_tuning_record=str(half / tuning_db.RECORDS),
                allow_missing=False,
            )
            found.append((cold, database))
    return found


def workload_hash(mod: Any) -> int:
    """TVM's structural hash of a workload module (the tuning database's key)."""
    import tvm_ffi

    return int(tvm_ffi.structural_hash(mod))


def light_context(mod: Any, target: Any) -> Any:
    """A MetaSchedule TuneContext holding only `mod` and `target`. TuneContext's Python constructor
    imports every tensor intrinsic TVM has first (13.7 s measured here), which post-processors and
    feature extraction never use; the C++ constructor is called directly."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    context = ms.TuneContext.__new__(ms.TuneContext)
    logging = get_logging_func(get_logger(__name__))
    context.__init_handle_by_constructor__(
        _ffi_api.TuneContext, mod, target, None, None, "main", 1, -1, logging
    )
    return context


def measure_traces(
    mod: Any, traces: list[Any], database: Any, builder: Any, runner: Any, target: Any
) -> tuple[int, float | None]:
    """Build and time schedules of the workload `mod` given by `traces` (each replayed in full) with
    MetaSchedule's builder and runner, and commit every successful measurement to `database`. Returns
    (candidates measured, best ms or None)."""
    import shutil

    from tvm.s_tir import meta_schedule as ms

    if not traces:
        return 0, None
    modules = [replayed(mod, trace).mod for trace in traces]
    # the arguments as the scheduled kernel takes them: a layout rewrite changes the weights' shapes
    arguments = [ms.arg_info.ArgInfo.from_entry_func(module, remove_preproc=True) for module in modules]
    built = builder.build([ms.builder.BuilderInput(module, target) for module in modules])
    ready = [
        (trace, args, b)
        for trace, args, b in zip(traces, arguments, built, strict=True)
        if b.error_msg is None
    ]
    inputs = [ms.runner.RunnerInput(b.artifact_path, "cpu", args) for _, args, b in ready]
    results = [future.result() for future in runner.run(inputs)] if inputs else []
    workload = database.commit_workload(mod)
    best = None
    for (trace, args_info, artifact), result in zip(ready, results, strict=True):
        shutil.rmtree(Path(str(artifact.artifact_path)).parent, ignore_errors=True)
        if result.error_msg or not result.run_secs:
            continue
        database.commit_tuning_record(
            ms.database.TuningRecord(trace, workload, result.run_secs, target, args_info)
        )
        milliseconds = sum(float(s) for s in result.run_secs) / len(result.run_secs) * 1e3
        best = milliseconds if best is None else min(best, milliseconds)
    return len(traces), best


def replayed(mod: Any, trace: Any) -> Any:
    """The workload `mod` scheduled by replaying `trace` in full (post-processing included)."""
    import tvm

    schedule = tvm.s_tir.Schedule(mod)
    trace.apply_to_schedule(schedule, remove_postproc=False)
    return schedule


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default candidate build without its first step, importing every tensor intrinsic
    TVM has: that took 13.7 s in each fresh builder process (MetaSchedule starts new ones for every
    batch), against ~0.1 s to build a candidate, and an fp32 CPU schedule never tensorizes."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from nndeploy.targets.frontend.fast_math import use_fast_exp

    use_fast_exp()  # candidates are timed with the exp the stage will be built with
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def builder() -> Any:
    """MetaSchedule's local builder, building candidates with `build_candidate`."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build=build_candidate)


def runner() -> Any:
    """MetaSchedule's local runner, timing each candidate for at least MIN_REPEAT_MS."""
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=MIN_REPEAT_MS)
    return ms.Runner.create("local", evaluator_config=config)


def threaded_map(function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """`function` over `items` in order, on a thread per core. TVM's calls release the GIL, so parsing
    records and re-applying traces of independent workloads run in parallel (measured here: 240
    records parsed in 2.2 s on one thread, 1.2 s on two)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="schedules") as pool:
        return list(pool.map(function, items))
