"""MetaSchedule tuning of CPU stages, and the tuned build that applies a tuning database.

A stage is prepared the same way for tuning and for the tuned build (`tuning_module`): convolutions in
NHWC, TVM's inference decompositions, operator fusion, and weights marked layout-free so the tuned
schedules may pre-pack them at compile time. Tasks (fused TIR functions) are extracted per stage, merged
across stages and models by workload, and tuned by MetaSchedule (XGBoost cost model + measurement on this
machine) until the time budget is spent or every task has its trials; results go to the per-target JSON
database of `tuning.database`, which `build.tuned` applies without running a single trial. Tasks of stages
whose weights exceed the CPU's cache are timed with their weights evicted (`tuning.cold`), starting from
the warm records re-timed that way, into the database's cold-weights half.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError
from nndeploy.targets.tuning import cold as cold_measure
from nndeploy.targets.tuning import database as tuning_db
from nndeploy.targets.tuning.metaschedule import builder as candidate_builder
from nndeploy.targets.tuning.metaschedule import measure_traces
from nndeploy.targets.tuning.metaschedule import runner as candidate_runner
from nndeploy.targets.tuning.seeds import TransferSeeds, reached
from nndeploy.types import Device

# MetaSchedule's layout rewrite reaches onnxruntime's speed on convolutions only in NHWC (measured: NCHW
# stalls at 1.35-1.7x onnxruntime even at 256 trials, NHWC with pre-packing reaches ~1.0-1.2x).
TUNED_LAYOUT = {"relax.nn.conv2d": ["NHWC", "OHWI"]}
TRIALS_PER_ITERATION = 64
# A task's first batch is small: untuned (naive, single-threaded) code is often 50-100x slower than a few
# measured candidates, so a short budget gains most by reaching every heavy task once before refining any.
FIRST_BATCH = 16
# The evolutionary search between batches took ~40 s per batch on 2 cores with MetaSchedule's defaults
# (population 512, 4 generations); half of both leaves more of a short budget for measuring.
SEARCH_POPULATION = 256
SEARCH_ITERATIONS = 2
# How a task's first batch is chosen: "replay" (random samples of the task's design space, no search) or
# "evolutionary" (the search above, guided by the cost model trained on the tasks measured so far). On a
# YOLO-style detector at 320x320 (3 minutes each, one run, benchmarks/first_batch.py) replay measured 128
# trials (37.8 a minute, 8 tasks reached) to the search's 96 (29.1, 6 tasks), and the tuned stage ran in
# 176 ms against 203 ms: a first batch's search costs time where its cost model knows least.
FIRST_BATCH_SEARCH = "replay"
EXHAUSTED = 1 << 30  # trials_done of a task whose search space has been measured completely


@dataclass(frozen=True)
class Task:
    """One tuning task: a fused TIR workload, the stages it occurs in, and its share of their work."""

    name: str
    workload: str  # TVM structural hash, the database's key
    weight: float  # how many times the workload runs per inference, over all stages
    stages: tuple[int, ...]
    trials_done: int
    flops: float  # per run, TVM's estimate
    extracted: Any  # the MetaSchedule ExtractedTask
    weights_cold: bool = False  # measured with its weights evicted (see tuning.cold), in the cold database


@dataclass(frozen=True)
class Progress:
    """Reported after every measured batch of candidates."""

    trials: int
    elapsed_s: float
    task: str
    best_ms: float | None


def tuning_module(model: onnx.ModelProto, device: Device) -> Any:
    """The stage as the tuned build sees it: imported, NHWC, decomposed, fused, weights layout-free."""
    import tvm
    from tvm import relax

    from nndeploy.targets.frontend.importer import import_onnx

    mod = _nhwc_if_clean(import_onnx(model, device), len(model.graph.output))
    with tvm.target.Target(device.tvm_target):
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                # exp, erf and tanh as polynomials TVM can vectorise: libm's scalar calls left a tuned
                # attention softmax at 23x onnxruntime's (1.25 against 0.054 ms in tiny_bert).
                relax.transform.FastMathTransform(),
                relax.transform.CanonicalizeBindings(),
                relax.pipeline.zero_pipeline(),
                relax.transform.AttachAttrLayoutFreeBuffers(),
            ]
        )(mod)


def _nhwc_if_clean(mod: Any, outputs: int) -> Any:
    """The module with convolutions in NHWC, unless that wraps ops TVM cannot re-layout (for example
    the frontend's Clip) in transposes of activations beyond the model's inputs and outputs: then it
    stays NCHW."""
    from tvm import relax

    try:
        converted = relax.transform.ConvertLayout(TUNED_LAYOUT)(mod)
    except Exception:  # an op TVM cannot re-layout at all
        return mod
    before, after = _activation_transposes(mod), _activation_transposes(converted)
    io = len(mod["main"].params) + outputs  # a transpose each at most
    return _fold_layout_of_constants(converted) if after - before <= 2 * io else mod


def _fold_layout_of_constants(mod: Any) -> Any:
    """Transposes and reshapes of constants (the weights ConvertLayout re-lays) computed with numpy. TVM's
    FoldConstant compiles a kernel for each: 5.8 s for resnet50's 160, against 0.05 s here."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Fold(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = self.visit_expr_post_order(call)
            name = getattr(call.op, "name", "")
            if name not in ("relax.permute_dims", "relax.reshape"):
                return call
            argument = call.args[0]
            if isinstance(argument, relax.Var):
                bound = self.lookup_binding(argument)
                argument = argument if bound is None else bound
            if not isinstance(argument, tvm.ir.Constant):
                return call
            data = argument.value.numpy()
            if name == "relax.reshape":
                if not isinstance(call.args[1], relax.ShapeExpr):
                    return call
                return relax.const(np.ascontiguousarray(data.reshape([int(v) for v in call.args[1].values])))
            axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
            return relax.const(np.ascontiguousarray(np.transpose(data, axes)))

    folder = _Fold(mod)
    for global_var, function in list(mod.functions_items()):
        if isinstance(function, relax.Function):
            mod[global_var] = folder.visit_expr(function)
    return relax.transform.CanonicalizeBindings()(mod)


def _activation_transposes(mod: Any) -> int:
    """How many permute_dims of the main function move a computed tensor: not a constant, nor anything
    computed from constants alone (weights and biases, which are folded at compile time)."""
    import tvm
    from tvm import relax

    def constant(expr: Any, known: set[Any]) -> bool:
        if isinstance(expr, tvm.ir.Constant | relax.ShapeExpr) or type(expr).__name__ == "PrimValue":
            return True
        if isinstance(expr, relax.Tuple):
            return all(constant(field, known) for field in expr.fields)
        return isinstance(expr, relax.Var) and expr in known

    known: set[Any] = set()
    count = 0
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if all(constant(arg, known) for arg in value.args):
                known.add(binding.var)
            elif getattr(value.op, "name", "") == "relax.permute_dims":
                count += 1
    return count


def extract_tasks(models: Sequence[tuple[int, onnx.ModelProto]], device: Device, db_dir: Path) -> list[Task]:
    """The tuning tasks of the given (stage index, stage model) pairs for `device`, one per workload. A
    task that occurs in a stage whose weights exceed the CPU's cache is measured with cold weights."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target(device.tvm_target)
    merged: dict[str, dict[str, Any]] = {}
    for index, model in models:
        cold = cold_measure.weights_cold(model)
        for task in ms.relax_integration.extract_tasks(tuning_module(model, device), target):
            if task.mod.attrs is not None and task.mod.attrs.get("tirx.is_scheduled", False):
                continue
            workload = str(tvm_ffi.structural_hash(task.dispatched[0]))
            entry = merged.setdefault(workload, {"task": task, "weight": 0.0, "stages": set(), "cold": False})
            entry["weight"] += float(task.weight)
            entry["stages"].add(index)
            entry["cold"] |= cold
    done = {cold: trials_done(db_dir, cold) for cold in (False, True)}
    return [
        Task(
            name=entry["task"].task_name,
            workload=workload,
            weight=entry["weight"],
            stages=tuple(sorted(entry["stages"])),
            trials_done=done[entry["cold"]].get(workload, 0),
            flops=_flops(entry["task"].dispatched[0]),
            extracted=entry["task"],
            weights_cold=entry["cold"],
        )
        for workload, entry in merged.items()
    ]


def trials_done(db_dir: Path, weights_cold: bool) -> dict[str, int]:
    """Trials per workload in the warm or the cold database of `db_dir`, EXHAUSTED where the search
    space is used up."""
    folder = tuning_db.half_dir(db_dir, weights_cold)
    done: dict[str, int] = dict(tuning_db.trials_per_workload(folder))
    for workload in tuning_db.exhausted_workloads(folder):
        done[workload] = EXHAUSTED
    return done


def tune_tasks(
    tasks: Sequence[Task],
    device: Device,
    db_dir: Path,
    budget_s: float,
    trials_per_task: int,
    on_progress: Callable[[Progress], None] | None = None,
    seed: int = 0,
    measure: tuple[Any, Any] | None = None,
) -> int:
    """Tune the tasks that have fewer than `trials_per_task` trials in the database for at most
    `budget_s` seconds; returns the number of trials measured.

    One batch of candidates at a time goes to the task that costs the most time now (its best latency
    so far times how often it runs; FLOPs before it has a measurement, and then a small first batch),
    so a short budget goes where it pays. The XGBoost cost model, builder and runner live across
    batches. At least one batch is measured and a batch is never cut short, so the budget may overrun by
    one batch. Every measurement is saved as it comes: an interrupted run keeps its results and the
    next one continues from them. `measure`: (builder, runner) to use instead of building and timing
    on this machine (`tuning.remote`: on the device over RPC; weights are then timed warm)."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    todo = {t.workload: t for t in tasks if t.trials_done < trials_per_task}
    if not todo or budget_s <= 0:
        return 0
    db_dir.mkdir(parents=True, exist_ok=True)
    _quiet_meta_schedule()
    started = time.perf_counter()
    done = {w: t.trials_done for w, t in todo.items()}
    best: dict[str, float] = {}
    stalls: dict[str, int] = dict.fromkeys(todo, 0)
    predicted: dict[str, float | None] = {}  # ms: what the tuned workloads it was seeded from reach
    measured = [0]
    current = [""]

    def record(workload: str, count: int, latest: float | None) -> None:
        measured[0] += count
        done[workload] += count
        if latest is not None and latest < best.get(workload, float("inf")) * 0.99:
            best[workload], stalls[workload] = latest, 0
        else:
            stalls[workload] += 1
        if on_progress is not None:
            elapsed = time.perf_counter() - started
            on_progress(Progress(measured[0], elapsed, todo[workload].name, best.get(workload)))

    @derived_object
    class _Record(PyMeasureCallback):
        """Counts trials and keeps each task's best latency."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            record(current[0], len(runner_results), _best_ms(runner_results))

    work_dir = str(db_dir / "logs")
    ways = {False} | {t.weights_cold for t in todo.values()}  # the warm database seeds the cold one
    databases = {cold: open_database(db_dir, cold) for cold in ways}
    for cold, database in databases.items():
        best.update(_known_best_ms(database, [t for t in todo.values() if t.weights_cold == cold]))
    builder = candidate_builder() if measure is None else measure[0]
    runners: dict[Any, Any] = {}
    cost_models = {
        cold: ms.CostModel.create("xgb", num_tuning_cores=2, tree_method="auto") for cold in databases
    }
    callbacks = [*ms.MeasureCallback.create("default"), _Record()]
    contexts = dict(
        zip(
            todo,
            ms.relax_integration.extracted_tasks_to_tune_contexts(
                [t.extracted for t in todo.values()],
                work_dir,
                strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=SEARCH_POPULATION, genetic_num_iters=SEARCH_ITERATIONS
                ),
                seed=seed,
            )[0],
            strict=True,
        )
    )
    interrupted = _StopOnInterrupt()
    try:
        transferred = TransferSeeds(
            [t.extracted.dispatched[0] for t in todo.values()], device, databases[False]
        )
        with tvm.target.Target(device.tvm_target) as target, interrupted:
            while not interrupted.requested and (
                measured[0] == 0 or time.perf_counter() - started < budget_s
            ):
                alive = [w for w in todo if done[w] < trials_per_task and stalls[w] < 3]
                # A task within reach of its predicted best yields to those that are not; once every task
                # is, the budget left goes on refining them (the prediction is the corpus's best, which
                # this machine's search may beat) until they stall.
                open_tasks = [w for w in alive if not reached(best.get(w), predicted.get(w))] or alive
                if not open_tasks:
                    break
                workload = max(open_tasks, key=lambda w: _priority(todo[w], best.get(w), stalls[w]))
                task = todo[workload]
                current[0] = workload
                before = done[workload]
                runner = _runner(runners, task) if measure is None else measure[1]
                if task.weights_cold and measure is None and done[workload] == 0:
                    seeds = cold_measure.seed_from_warm(
                        task.extracted.dispatched[0],
                        databases[False],
                        databases[True],
                        builder,
                        runner,
                        target,
                    )
                    if seeds:
                        record(workload, *seeds)
                        continue
                if done[workload] == 0:
                    module = task.extracted.dispatched[0]
                    traces, predicted[workload] = transferred.traces(module, FIRST_BATCH)
                    if traces:
                        database = databases[task.weights_cold]
                        record(workload, *measure_traces(module, traces, database, builder, runner, target))
                        continue
                first = done[workload] == 0
                batch = FIRST_BATCH if first else TRIALS_PER_ITERATION
                context = contexts[workload]
                if first and FIRST_BATCH_SEARCH == "replay":
                    context = ms.relax_integration.extracted_tasks_to_tune_contexts(
                        [task.extracted], work_dir, strategy=ms.search_strategy.ReplayTrace(), seed=seed
                    )[0][0]
                _quiet_meta_schedule()
                ms.tune_tasks(
                    tasks=[context],
                    task_weights=[task.weight],
                    work_dir=work_dir,
                    max_trials_global=min(batch, trials_per_task - done[workload]),
                    num_trials_per_iter=batch,
                    builder=builder,
                    runner=runner,
                    database=databases[task.weights_cold],
                    cost_model=cost_models[task.weights_cold],
                    measure_callbacks=callbacks,
                )
                if done[workload] == before:  # its search space is used up
                    done[workload] = EXHAUSTED
                    tuning_db.mark_exhausted(tuning_db.half_dir(db_dir, task.weights_cold), {workload})
    except Exception as exc:  # MetaSchedule raises many types; one line for the user
        from nndeploy.errors import first_line

        raise BuildError(f"tuning for device '{device.name}' failed: {first_line(exc)}") from None
    if interrupted.requested:
        raise KeyboardInterrupt
    return measured[0]


def open_database(db_dir: Path, weights_cold: bool) -> Any:
    """The MetaSchedule JSON database of `db_dir` (or of its cold-weights folder), created if missing."""
    from tvm.s_tir import meta_schedule as ms

    folder = tuning_db.half_dir(db_dir, weights_cold)
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / tuning_db.WORKLOADS), path_tuning_record=str(folder / tuning_db.RECORDS)
    )


def _runner(runners: dict[Any, Any], task: Task) -> Any:
    """MetaSchedule's local runner for the task's way of measuring (cold: per set of weight arguments),
    made once per way."""
    key = cold_measure.weight_arguments(task.extracted.dispatched[0]) if task.weights_cold else None
    if key not in runners:
        runners[key] = candidate_runner() if key is None else cold_measure.runner(key)
    return runners[key]


class _StopOnInterrupt:
    """Ctrl-C while MetaSchedule runs: a KeyboardInterrupt raised inside TVM's C++ loop is lost, so the
    first Ctrl-C only asks the loop to stop after the running batch (whose results are kept); a second
    one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        import signal
        import sys

        if self.requested:
            signal.default_int_handler(signum, frame)
        self.requested = True
        print(
            "stopping after the batch being measured (Ctrl-C again to stop now)", file=sys.stderr, flush=True
        )


def _priority(task: Task, best_ms: float | None, stalls: int) -> float:
    """Time this task costs per inference now, halved for each batch that did not improve it; tasks
    never measured come first, heaviest (by FLOPs) first."""
    if best_ms is None:
        return 1e12 + task.weight * task.flops
    return task.weight * best_ms * 0.5**stalls


def _known_best_ms(database: Any, tasks: Any) -> dict[str, float]:
    """Best measured latency of each task already in the database."""
    found = {}
    for task in tasks:
        module = task.extracted.dispatched[0]
        if not database.has_workload(module):
            continue
        records = database.get_top_k(database.commit_workload(module), 1)
        if records and records[0].run_secs:
            secs = [float(s) for s in records[0].run_secs]
            found[task.workload] = sum(secs) / len(secs) * 1e3
    return found


def _flops(module: Any) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(module))
    except Exception:  # opaque or dynamic loops: no estimate, the task goes last
        return 0.0


def _best_ms(runner_results: Sequence[Any]) -> float | None:
    times = [
        sum(float(s) for s in r.run_secs) / len(r.run_secs) * 1e3
        for r in runner_results
        if r.run_secs and not r.error_msg
    ]
    return min(times) if times else None


def _quiet_meta_schedule() -> None:
    """MetaSchedule prints task tables and XGBoost iterations; they go to its log files, not the terminal
    (called before every batch: creating a task's context rebuilds MetaSchedule's logging at DEBUG).
    Unnamed handlers are dropped from its logger: MetaSchedule rebuilds its logging configuration from
    the names of the handlers it finds, and fails on one without (a second tuning run in one process)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)
        elif not isinstance(handler, logging.FileHandler):  # its console: each new task context resets it
            handler.setLevel(logging.WARNING)


def why_not_tunable(device: Device) -> str | None:
    """None if this machine can measure code for `device`, else the reason (one line)."""
    from nndeploy.targets.artifacts.loader import cuda_problem, missing_cpu_features

    kind = device.tvm_target.get("kind")
    if kind == "cuda":
        problem = cuda_problem()
        return (
            f"CUDA tuning measures kernels on the GPU: {problem}"
            if problem
            else "CUDA tuning is not supported yet (TVM's GPU schedules are used)"
        )
    if kind != "llvm":
        return f"TVM target kind '{kind}' cannot be tuned"
    missing = missing_cpu_features(device.tvm_target)
    if not missing:
        return None
    if any(m.startswith("the ") for m in missing):
        return (
            "this machine cannot run its instruction set natively (timings under the emulator say nothing "
            "about the device): run `nndeploy tune` on the device and copy its database folder"
        )
    return f"this CPU lacks {', '.join(sorted(missing))}: run `nndeploy tune` on a machine that has them"
