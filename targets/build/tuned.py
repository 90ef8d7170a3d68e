"""The tuned CPU build: a stage with tuned schedules applied and its weights pre-packed.

The stage is prepared as for tuning (`tuning.tuning_module`). Schedules come, by workload, from the
user's tuning database, then from the one shipped with nndeploy (`tuning.shipped`), then are transferred
from tuned workloads of the same structure (`tuning.transfer`); the layout rewrites they ask for are
computed on the weights once at compile time, and TIR functions none of these covers get a plain
parallel, vectorised schedule instead of TVM's single-threaded default. No trial runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError, TuningDatabaseError, first_line
from nndeploy.targets.tuning import database as tuning_db
from nndeploy.targets.tuning.cold import weights_cold
from nndeploy.targets.tuning.metaschedule import open_databases
from nndeploy.targets.tuning.shipped import Knowledge, matched, ranker_for
from nndeploy.targets.tuning.tuner import tuning_module
from nndeploy.types import Device

# The plain schedule of functions without a tuned one: MetaSchedule's CPU defaults for both.
PARALLEL_JOBS_PER_CORE = 16
MAX_VECTOR_EXTENT = 64
# Weights are evaluated on this machine whatever CPU the stage is built for.
HOST_TARGET = {"kind": "llvm"}


def build_tuned_llvm(
    model: onnx.ModelProto,
    device: Device,
    db_dir: Path | None,
    scratch: Path,
    shipped: Knowledge | None = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """CPU build with tuned schedules applied and weights pre-packed; no trials run. Each workload's
    schedule comes from the user's database at `db_dir`, else the shipped one, else is transferred from
    tuned workloads of the same structure in either (`tuning.transfer`, ranked by the shipped cost
    model), else is the plain parallel, vectorised one. A stage whose weights exceed the CPU's cache takes
    each workload's schedule from a database's cold-weights half first. Returns the generated sources and
    how many workloads got each kind of schedule."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.targets.build.codegen import compile_module, export_llvm
    from nndeploy.targets.tuning import transfer

    if db_dir is not None and not tuning_db.has_records(db_dir):
        raise BuildError(f"no tuning records for device '{device.name}' in {db_dir}")
    target = tvm.target.Target(device.tvm_target)
    mod = tuning_module(model, device)
    cold = weights_cold(model)
    try:  # a database of another TVM version, or damaged, fails here: the caller builds untuned
        tasks = transfer.workload_tasks(mod, target)
        user = open_databases(db_dir) if db_dir is not None else []
        halves, shipped_sources = matched(shipped, [w for _, w in tasks]) if shipped else ([], [])
        databases = []
        for found in (user, halves):
            ordered = [database for _, database in sorted(found, key=lambda half: half[0] != cold)]
            if ordered:
                databases.append(
                    ordered[0] if len(ordered) == 1 else ms.database.OrderedUnionDatabase(*ordered)
                )

        def sources() -> list[Any]:  # the user's workloads first; described only if a task needs them
            return [s for _, half in user for s in transfer.sources_of(half)] + shipped_sources

        rank = ranker_for(shipped, device.tvm_target)
        transferred, counts = transfer.fill_gaps(tasks, target, databases, sources, rank)
        database = ms.database.OrderedUnionDatabase(*databases, transferred)
        with target, database:
            mod = tvm.transform.Sequential(
                [
                    relax.transform.MetaScheduleApplyDatabase(enable_warning=False),
                    relax.transform.SplitLayoutRewritePreproc(),
                ]
            )(mod)
    except TuningDatabaseError:
        raise
    except Exception as exc:  # TVM raises many types here
        where = db_dir if db_dir is not None else f"shipped with nndeploy ({shipped and shipped.folder.name})"
        raise TuningDatabaseError(
            f"the tuning database {where} cannot be applied: {first_line(exc)}"
        ) from None
    mod = schedule_untuned(fold_constant_calls(mod), device)
    executable = compile_module(mod, target, "default")
    return export_llvm(executable, device, scratch), counts


def schedule_untuned(mod: Any, device: Device) -> Any:
    """The module with every TIR function that has no tuned schedule given a plain one: outer loops
    parallel over the device's cores, inner loops vectorised (MetaSchedule's own rewrite, no search).
    TVM's default leaves such functions single-threaded and scalar; this made them 2.6x faster on the
    example CNN, and keeps a short tuning budget from leaving whole ops at naive speed."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    cores = max(1, int(device.tvm_target.get("num-cores", 0) or _cpu_count()))
    postprocs = (
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
    )
    for global_var, function in list(mod.functions_items()):
        if not isinstance(function, tvm.tirx.PrimFunc) or _is_scheduled(function):
            continue
        schedule = tvm.s_tir.Schedule(tvm.IRModule({"main": function}))
        try:
            root = schedule.get_sblock("root")
        except Exception:  # no root block (an opaque function): keep TVM's default
            continue
        schedule.annotate(root, "meta_schedule.parallel", PARALLEL_JOBS_PER_CORE * cores)
        schedule.annotate(root, "meta_schedule.vectorize", MAX_VECTOR_EXTENT)
        if all(postproc.apply(schedule) for postproc in postprocs):
            mod[global_var] = schedule.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod


def _is_scheduled(function: Any) -> bool:
    return function.attrs is not None and bool(function.attrs.get("tirx.is_scheduled", False))


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def fold_constant_calls(mod: Any) -> Any:
    """The module with every TIR call on constants alone (the weight layout rewrites MetaSchedule's
    records ask for) replaced by its result. TVM's FoldConstant compiles one library per call (1.7 s
    for tiny_bert's); here each round of them is compiled as one TIR library (no Relax VM) and run once."""
    import tvm
    from tvm import relax

    for _ in range(8):  # a rewrite of a rewritten weight needs a second round
        calls = _constant_calls(mod)
        if not calls:
            break
        results = {id(call): _copy_result(mod[call.args[0]], call) for call in calls}
        compiled = [call for call in calls if results[id(call)] is None]
        if compiled:
            functions = {call.args[0].name_hint: mod[call.args[0]] for call in compiled}
            library = tvm.tirx.build(
                tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in functions.items()}),
                target=tvm.target.Target(HOST_TARGET),
            )
            results.update({id(call): _run_call(library, call) for call in compiled})
        mod = _replace_calls(mod, calls, [results[id(call)] for call in calls])
    return relax.transform.DeadCodeElimination()(mod)


def _out_types(call: Any) -> list[Any]:
    from tvm import relax

    return list(call.ty.fields) if isinstance(call.ty, relax.TupleType) else [call.ty]


def _as_result(call: Any, arrays: list[Any]) -> Any:
    """A Relax constant (or tuple of them, as the call returns) holding `arrays`."""
    from tvm import relax

    constants = [relax.const(array) for array in arrays]
    return relax.Tuple(constants) if isinstance(call.ty, relax.TupleType) else constants[0]


def _run_call(library: Any, call: Any) -> Any:
    """The constant a call_tir on constants evaluates to, run with `library`'s kernel."""
    import tvm

    inputs = [arg.value for arg in call.args[1].fields]
    outputs = [
        tvm.runtime.empty([int(d) for d in ty.shape.values], ty.dtype, tvm.cpu()) for ty in _out_types(call)
    ]
    library[call.args[0].name_hint](*inputs, *outputs)
    return _as_result(call, [out.numpy() for out in outputs])


def _copy_result(function: Any, call: Any) -> Any | None:
    """The call's result computed with numpy when `function` only moves elements (a layout rewrite:
    every block stores one input element at an index computed from its loop variables); None otherwise.
    Even a tiny TIR library costs ~30 ms of LLVM code generation per rewrite (0.45 s for small_unet's)."""
    import numpy as np

    params = list(function.params)
    inputs = [arg.value.numpy() for arg in call.args[1].fields]
    out_types = _out_types(call)
    if len(params) != len(inputs) + len(out_types):
        return None
    arrays = {param: array for param, array in zip(params, inputs, strict=False)}
    outputs = []
    for param, ty in zip(params[len(inputs) :], out_types, strict=True):
        outputs.append(np.zeros([int(d) for d in ty.shape.values], str(ty.dtype)))
        arrays[param] = outputs[-1]
    written = [np.zeros(out.shape, bool) for out in outputs]
    marks = {params[len(inputs) + i]: mark for i, mark in enumerate(written)}
    try:
        _run_copies(function.body, [], arrays, marks)
    except _NotACopy:
        return None
    return _as_result(call, outputs) if all(mark.all() for mark in written) else None


class _NotACopy(Exception):
    pass


def _run_copies(stmt: Any, loops: list[tuple[Any, int]], arrays: dict, marks: dict) -> None:
    """Execute a nest of serial loops and copy blocks with numpy (raises _NotACopy on anything else)."""
    import numpy as np
    import tvm
    from tvm import s_tir, tirx

    if isinstance(stmt, s_tir.SBlockRealize):
        block = stmt.block
        if not (isinstance(stmt.predicate, tirx.IntImm) and int(stmt.predicate) == 1) or block.init:
            raise _NotACopy
        if block.alloc_buffers or block.match_buffers:
            raise _NotACopy
        if not loops and block.name_hint == "root":
            _run_copies(block.body, loops, arrays, marks)
            return
        grid = np.indices([extent for _, extent in loops]) if loops else np.zeros((0,), np.int64)
        env = {var: grid[i] for i, (var, _) in enumerate(loops)}
        for iter_var, value in zip(block.iter_vars, stmt.iter_values, strict=True):
            env[iter_var.var] = _evaluate(value, env)
        store = block.body
        if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tvm.ir.TensorLoad):
            raise _NotACopy
        load = store.value
        if store.buffer not in marks or load.source not in arrays:
            raise _NotACopy
        source = arrays[load.source][tuple(_evaluate(i, env) for i in load.indices)]
        target = tuple(_evaluate(i, env) for i in store.indices)
        arrays[store.buffer][target] = source
        marks[store.buffer][target] = True
    elif isinstance(stmt, tirx.SeqStmt):
        for inner in stmt.seq:
            _run_copies(inner, loops, arrays, marks)
    elif isinstance(stmt, tirx.For):
        if not isinstance(stmt.min, tvm.tirx.IntImm) or int(stmt.min) != 0:
            raise _NotACopy
        if not isinstance(stmt.extent, tvm.tirx.IntImm):
            raise _NotACopy
        _run_copies(stmt.body, [*loops, (stmt.loop_var, int(stmt.extent))], arrays, marks)
    else:
        raise _NotACopy


def _evaluate(expr: Any, env: dict) -> Any:
    """An integer index expression evaluated on numpy arrays of loop-variable values."""
    from tvm import tirx

    if isinstance(expr, tirx.Var):
        if expr not in env:
            raise _NotACopy
        return env[expr]
    if isinstance(expr, tirx.IntImm):
        return int(expr)
    if isinstance(expr, tirx.Cast):
        return _evaluate(expr.value, env)
    operations = {
        tirx.Add: lambda a, b: a + b,
        tirx.Sub: lambda a, b: a - b,
        tirx.Mul: lambda a, b: a * b,
        tirx.FloorDiv: lambda a, b: a // b,
        tirx.FloorMod: lambda a, b: a % b,
    }
    for kind, operation in operations.items():
        if isinstance(expr, kind):
            return operation(_evaluate(expr.a, env), _evaluate(expr.b, env))
    raise _NotACopy


def _constant_calls(mod: Any) -> list[Any]:
    """The call_tir bindings of `main` whose arguments are all constants."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (
                isinstance(value, relax.Call)
                and value.op.same_as(call_tir)
                and len(value.args) == 2
                and isinstance(value.ty, relax.TensorType | relax.TupleType)
                and all(isinstance(arg, tvm.ir.Constant) for arg in value.args[1].fields)
            ):
                found.append(value)
    return found


def _replace_calls(mod: Any, calls: list[Any], constants: list[Any]) -> Any:
    """`mod` with each of `calls` in `main` replaced by the matching constant."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Replace(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            for old, new in zip(calls, constants, strict=True):
                if call.same_as(old):
                    return new
            return self.visit_expr_post_order(call)

    mod["main"] = _Replace(mod).visit_expr(mod["main"])
    return relax.transform.CanonicalizeBindings()(mod)
