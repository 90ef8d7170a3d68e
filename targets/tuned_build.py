"""The tuned CPU build: a stage with a tuning database's schedules applied and its weights pre-packed.

The stage is prepared as for tuning (`tuning.tuning_module`), MetaSchedule's records are applied by
workload, the layout rewrites they ask for are computed on the weights once at compile time, and TIR
functions the database does not know get a plain parallel, vectorised schedule instead of TVM's
single-threaded default. No trial runs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError
from nndeploy.targets import tuning_db
from nndeploy.targets.tuning import tuning_module
from nndeploy.types import Device

# The plain schedule of functions without a tuned one: MetaSchedule's CPU defaults for both.
PARALLEL_JOBS_PER_CORE = 16
MAX_VECTOR_EXTENT = 64
# Weights are evaluated on this machine whatever CPU the stage is built for.
HOST_TARGET = {"kind": "llvm"}


def build_tuned_llvm(model: onnx.ModelProto, device: Device, db_dir: Path, scratch: Path) -> dict[str, str]:
    """CPU build with the tuned schedules of `db_dir` applied and weights pre-packed; no trials run.
    Workloads the database does not know get a plain parallel, vectorised schedule."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from nndeploy.targets.tvm_pipeline import compile_module, export_llvm

    if not tuning_db.has_records(db_dir):
        raise BuildError(f"no tuning records for device '{device.name}' in {db_dir}")
    target = tvm.target.Target(device.tvm_target)
    mod = tuning_module(model, device)
    database = ms.database.JSONDatabase(
        path_workload=str(db_dir / tuning_db.WORKLOADS),
        path_tuning_record=str(db_dir / tuning_db.RECORDS),
        allow_missing=False,
    )
    with target, database:
        mod = tvm.transform.Sequential(
            [
                relax.transform.MetaScheduleApplyDatabase(enable_warning=False),
                relax.transform.SplitLayoutRewritePreproc(),
            ]
        )(mod)
    mod = schedule_untuned(fold_constant_calls(mod), device)
    executable = compile_module(mod, target, "default")
    return export_llvm(executable, device, scratch)


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
    for tiny_bert's); here each round of them is compiled as one library and run once."""
    import tvm
    from tvm import relax

    for _ in range(8):  # a rewrite of a rewritten weight needs a second round
        calls = _constant_calls(mod)
        if not calls:
            break
        builder = relax.BlockBuilder()
        with builder.function("fold", []):
            outputs = []
            for call in calls:
                function = builder.add_func(mod[call.args[0]], call.args[0].name_hint)
                out_ty = list(call.ty.fields) if isinstance(call.ty, relax.TupleType) else call.ty
                outputs.append(builder.emit(relax.call_tir(function, call.args[1], out_ty)))
            builder.emit_func_output(relax.Tuple(outputs))
        executable = tvm.compile(builder.get(), target=tvm.target.Target(HOST_TARGET))
        results = relax.VirtualMachine(executable, tvm.cpu())["fold"]()
        mod = _replace_calls(mod, calls, [_as_constant(results[i]) for i in range(len(calls))])
    return relax.transform.DeadCodeElimination()(mod)


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


def _as_constant(value: Any) -> Any:
    """A Relax constant (or tuple of them) holding a VM result."""
    from tvm import relax

    if hasattr(value, "numpy"):
        return relax.const(value.numpy())
    return relax.Tuple([_as_constant(field) for field in value])


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
