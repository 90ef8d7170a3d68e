"""The TVM side of a build: the target's pipeline, compile, export (cross-linked where the target is not
this machine), nvcc for CUDA kernels, and the generated code kept for `inspect`."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError, ClusterError, first_line
from nndeploy.targets.artifacts.host_tools import NVCC_HINT, apt_command, cross_compiler, packages_of
from nndeploy.targets.frontend.importer import import_onnx
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
    its optimised LLVM IR beside it; returns {source kind: file name}. The assembly is not written: LLVM
    would generate the machine code a second time for it (2.5 s of a 15 s compile measured here), so
    `inspect` makes it from the IR when asked (targets.inspect.assembly)."""
    _export(executable, scratch / "stage.so", _linker_for(device.tvm_target, device))
    llvm = executable.mod.imports[0] if executable.mod.imports else executable.mod
    (scratch / "stage.ll").write_text(llvm.inspect_source("ll"))
    return {"ir": "stage.ll"}


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
    """tvm.compile (Relax VM in `vm_exec_mode`; float32 exp as vector code on CPU, see `fast_math`) with
    TVM's failure turned into a one-line BuildError."""
    import tvm

    from nndeploy.targets.frontend.fast_math import use_fast_exp

    use_fast_exp()

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


def check_tvm_target(tvm_target: dict[str, Any], where: str) -> None:
    """Construct `tvm_target` in the installed TVM; ClusterError naming `where` (a profile file, a device)
    when TVM refuses it, or when an LLVM cpu name is unknown (LLVM itself only warns and builds generic
    code)."""
    from tvm.target import Target, codegen

    host = tvm_target.get("host")
    for field, config in (("tvm_target", tvm_target), ("tvm_target.host", host)):
        if not isinstance(config, dict) or config.get("kind") != "llvm":
            continue
        mcpu, triple = config.get("mcpu"), config.get("mtriple")
        if isinstance(mcpu, str) and isinstance(triple, str) and not codegen.llvm_is_valid_cpu(mcpu, triple):
            raise ClusterError(f"{where}: {field}.mcpu: LLVM does not know cpu '{mcpu}' for {triple}")
    try:
        Target(copy.deepcopy(tvm_target))
    except (ValueError, TypeError, RuntimeError) as exc:  # TVM reports a bad config as ValueError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split(". Target creation")[0]
        raise ClusterError(f"{where}: tvm_target: TVM refuses it: {first}") from None
