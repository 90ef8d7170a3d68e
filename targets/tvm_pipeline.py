"""The TVM side of a build: ONNX import, the target's pipeline, compile, export, and the generated code.

Everything here imports TVM; callers reach it only through `build.py`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError, first_line
from nndeploy.targets.function_expansion import expand_functions
from nndeploy.targets.host_tools import NVCC_HINT, apt_command, cross_compiler, packages_of
from nndeploy.targets.onnx_rewrites import fold_batch_norms, sums_to_adds
from nndeploy.targets.opset_upgrade import upgrade_opset
from nndeploy.types import Device

X86_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


def build_llvm(model: onnx.ModelProto, device: Device, scratch: Path) -> dict[str, str]:
    """CPU build (x86-64 natively, aarch64 cross-compiled) with TVM's default CPU pipeline.

    TVM's untuned CPU schedules (dlight GEMV/Reduction rules) were measured against this default on the
    example CNN and squeezenet (2 threads): within +-10% either way, and they lost NEON vectorisation of
    convolutions on aarch64, so the default stays; speed on CPU comes from tuning."""
    import tvm

    target = tvm.target.Target(device.tvm_target)
    mod = import_onnx(model, device)
    return export_llvm(compile_module(mod, target, "default"), device, scratch)


def export_llvm(executable: Any, device: Device, scratch: Path) -> dict[str, str]:
    """Link a compiled CPU stage into scratch/stage.so (cross-linked for another CPU architecture) and keep
    its LLVM IR and assembly beside it; returns {source kind: file name}."""
    _export(executable, scratch / "stage.so", _linker_for(device.tvm_target, device))
    llvm = executable.mod.imports[0] if executable.mod.imports else executable.mod
    (scratch / "stage.ll").write_text(llvm.inspect_source("ll"))
    (scratch / "stage.s").write_text(llvm.inspect_source("asm"))
    return {"ir": "stage.ll", "asm": "stage.s"}


def build_cuda(model: onnx.ModelProto, device: Device, scratch: Path) -> dict[str, str]:
    """CUDA build: TVM's CUDA pipeline (dlight GPU schedules); kernels compiled by nvcc for the sm_XX."""
    import tvm

    if shutil.which("nvcc") is None:
        raise BuildError(f"device '{device.name}': nvcc not found; {NVCC_HINT}")
    arch = str(device.tvm_target.get("arch", ""))
    if not arch.startswith("sm_"):
        raise BuildError(f"device '{device.name}': its CUDA target has no sm_XX arch")
    spec = dict(device.tvm_target)
    host = spec.setdefault("host", dict(X86_HOST))
    target = tvm.target.Target(spec)
    mod = import_onnx(model, device)
    executable = compile_module(mod, target, "default")
    _export(executable, scratch / "stage.so", _linker_for(host, device))
    host_module = executable.mod.imports[0] if executable.mod.imports else executable.mod
    kernels = [m.inspect_source("") for m in host_module.imports if m.kind == "cuda"]
    source = "\n".join(kernels)
    (scratch / "stage.cu").write_text(source)
    (scratch / "stage.s").write_text(host_module.inspect_source("asm"))
    sources = {"cuda": "stage.cu", "asm": "stage.s"}
    if source.strip():
        sources.update(_nvcc_kernels(kernels, target, arch, device, scratch))
    return sources


def _nvcc_kernels(
    kernels: list[str], target: Any, arch: str, device: Device, scratch: Path
) -> dict[str, str]:
    """Compile each CUDA kernel module with nvcc to a fatbin (and the first to PTX for `inspect`), and
    write stage.kernels.json mapping each module source's sha256 to its fatbin. TVM keeps CUDA source in
    the library and compiles it when the library is loaded (NVRTC by default); the loader hands it these
    fatbins instead, so a machine that runs the stage needs neither a compiler nor NVRTC."""
    import hashlib
    import json

    from tvm.support import nvcc

    gencode = ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    table = {}
    names = {}
    try:
        with target:
            for index, code in enumerate(kernels):
                fatbin = nvcc.compile_cuda(code, target_format="fatbin", arch=gencode, compiler="nvcc")
                suffix = "fatbin" if len(kernels) == 1 else f"k{index}.fatbin"
                (scratch / f"stage.{suffix}").write_bytes(bytes(fatbin))
                digest = hashlib.sha256(code.encode()).hexdigest()
                table[digest] = {"file": suffix, "sha256": hashlib.sha256(bytes(fatbin)).hexdigest()}
                names[suffix.replace(".fatbin", "") if index else "fatbin"] = f"stage.{suffix}"
            ptx = nvcc.compile_cuda(kernels[0], target_format="ptx", arch=gencode, compiler="nvcc")
    except Exception as exc:  # nvcc's own message is the useful part
        raise BuildError(
            f"device '{device.name}': nvcc failed on the generated kernels: {first_line(exc)}"
        ) from None
    (scratch / "stage.ptx").write_bytes(bytes(ptx))
    (scratch / "stage.kernels.json").write_text(json.dumps({"arch": arch, "kernels": table}, indent=1))
    return {**names, "ptx": "stage.ptx", "kernels": "stage.kernels.json"}


def import_onnx(model: onnx.ModelProto, device: Device) -> Any:
    """TVM Relax module of a stage model, or a BuildError naming the node and op TVM cannot import."""
    from nndeploy.targets.tvm_converters import from_onnx
    from nndeploy.targets.tvm_ops import tvm_onnx_ops

    supported = tvm_onnx_ops()
    model = expand_functions(upgrade_opset(model), supported)
    for node in model.graph.node:
        if node.op_type not in supported:
            raise BuildError(
                f"device '{device.name}': node '{node.name}' (op {node.op_type}) cannot be imported by TVM's "
                "ONNX frontend; use --fallback onnxruntime or place it on another device"
            )
    model = _c_identifier_inputs(sums_to_adds(fold_batch_norms(model)))
    shapes, dtypes = {}, {}
    inits = {init.name for init in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tensor = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value for d in tensor.shape.dim]
        dtypes[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the frontend prints each failure too
            return from_onnx(model, shapes, dtypes)
    except Exception as exc:  # the frontend raises many types; find the node it chokes on
        node = _failing_node(model)
        where = f"node '{node.name}' (op {node.op_type})" if node is not None else "the stage"
        raise BuildError(f"device '{device.name}': TVM cannot import {where}: {first_line(exc)}") from None


def _c_identifier_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have C-identifier names: TVM puts input names into generated CUDA kernel
    signatures (an input named 'gpu_0/data_0' breaks nvcc). The VM takes inputs by position, so the
    artifact's interface is unchanged."""
    import re

    valid = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    inits = {init.name for init in model.graph.initializer}
    taken = {vi.name for vi in model.graph.input}
    renames = {}
    for index, vi in enumerate(model.graph.input):
        if vi.name in inits or valid.match(vi.name):
            continue
        candidate = re.sub(r"\W", "_", vi.name).lstrip("0123456789") or f"input_{index}"
        while candidate in taken:
            candidate = f"{candidate}_{index}"
        taken.add(candidate)
        renames[vi.name] = candidate
    if not renames:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in copy.graph.input:
        vi.name = renames.get(vi.name, vi.name)
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    for vi in copy.graph.output:  # an input passed straight through as an output
        vi.name = renames.get(vi.name, vi.name)
    return copy


def _failing_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The first node that TVM fails to import on its own (one node per op type is tried)."""
    from nndeploy.cutting import value_infos
    from nndeploy.targets.tvm_coverage import import_problem

    types = value_infos(model)
    initializers = {init.name: init for init in model.graph.initializer}
    tried: set[str] = set()
    for node in model.graph.node:
        if node.op_type in tried:
            continue
        tried.add(node.op_type)
        if import_problem(node, model, types, initializers) is not None:
            return node
    return None


def vm_exec_mode(target_kind: str) -> str:
    """How the Relax VM runs a stage's control code: 'compiled' (native code calling the kernels) for CPU
    stages, 'bytecode' (interpreted) for CUDA ones. On tuned resnet50 (2 threads, alone in a process,
    medians of 9 rounds) compiled control code was 0.33-0.36 ms faster per inference out of 18.5 ms.
    NNDEPLOY_VM_EXEC_MODE=bytecode keeps the interpreter on CPU too: only it reports each kernel call to a
    VM instrument (benchmarks/tuning.py's per-family breakdown)."""
    import os

    default = "compiled" if target_kind == "llvm" else "bytecode"
    chosen = os.environ.get("NNDEPLOY_VM_EXEC_MODE", default)
    if chosen not in ("compiled", "bytecode"):
        raise BuildError(f"NNDEPLOY_VM_EXEC_MODE={chosen}: use compiled or bytecode")
    return chosen


def compile_module(mod: Any, target: Any, pipeline: Any) -> Any:
    """tvm.compile (Relax VM in `vm_exec_mode`) with TVM's failure turned into a one-line BuildError."""
    import tvm

    try:
        return tvm.relax.build(mod, target, relax_pipeline=pipeline, exec_mode=vm_exec_mode(target.kind.name))
    except Exception as exc:
        raise BuildError(
            f"TVM failed to compile the stage for {target.kind.name}: {first_line(exc)}"
        ) from None


def _linker_for(target: dict[str, Any], device: Device) -> str | None:
    """The cross compiler for a target whose triple is not this machine's (None: the native compiler)."""
    cross = cross_compiler(target, device)
    if cross is not None and shutil.which(cross) is None:
        raise BuildError(
            f"device '{device.name}': cross compiler '{cross}' not found; run as root: "
            f"{apt_command(packages_of(cross, device))}"
        )
    return cross


def _export(executable: Any, path: Path, cross: str | None) -> None:
    from tvm.support import cc

    try:
        if cross is None:
            executable.export_library(str(path))
        else:
            executable.export_library(str(path), fcompile=cc.cross_compiler(cross))
    except Exception as exc:
        raise BuildError(f"linking the stage library failed: {first_line(exc)}") from None
