"""The small loader API: run a built stage artifact on this machine (natively, under the aarch64 emulator,
on a GPU, or through onnxruntime for flagged fallback stages) after checking its sha256.

This is the one place outside the build that touches TVM's runtime; the runtime package loads stages
through it.
"""

from __future__ import annotations

import platform
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from nndeploy.targets.artifacts.manifest import StageBuild, checked_artifact_path
from nndeploy.types import Artifact

ISA_PREFIXES = ("avx", "amx", "sse", "fma", "bmi", "f16c", "vaes", "vpclmul", "gfni", "sha", "neon", "sve")


class NotRunnable(Exception):
    """This machine cannot execute the artifact; the message says why and what would make it run."""


def why_not_runnable(entry: StageBuild) -> str | None:
    """None if the stage can run here, else the reason it cannot."""
    artifact = entry.artifact
    if artifact is None:
        return f"stage {entry.stage} was not built: {entry.error}"
    return _why_not(artifact)


def _why_not(artifact: Artifact) -> str | None:
    if artifact.parts:
        return next((r for r in map(_why_not, artifact.parts) if r is not None), None)
    if artifact.fallback == "onnxruntime":
        return None
    if artifact.target.get("kind") == "cuda":
        return cuda_problem()
    if _emulated(artifact):
        from nndeploy.targets.artifacts.emulator import find_emulator

        if find_emulator("aarch64") is None:
            return "the aarch64 emulator is not set up: run nndeploy emulator setup aarch64"
        return None
    missing = missing_cpu_features(artifact.target)
    if missing:
        return (
            f"this CPU lacks {', '.join(sorted(missing))} needed by the '{artifact.target.get('mcpu')}' build"
        )
    return None


def _emulated(artifact: Artifact) -> bool:
    """Whether this machine runs `artifact` under the aarch64 emulator (built for aarch64, run elsewhere)."""
    triple = str(artifact.target.get("mtriple", ""))
    return triple.startswith("aarch64") and not platform.machine().startswith("aarch64")


def emulated_library(build_dir: Path, entry: StageBuild) -> tuple[Path, list[str], list[str]] | None:
    """For a stage this machine runs under the aarch64 emulator as one TVM library: the library (sha256
    checked) and its main's inputs and outputs by name; None for any other stage."""
    artifact = entry.artifact
    if artifact is None or artifact.parts or artifact.fallback or not _emulated(artifact):
        return None
    path = _verified(build_dir, artifact)
    return path, [spec.name for spec in artifact.inputs], [spec.name for spec in artifact.outputs]


def start_emulated_worker(config: dict[str, Any]) -> tuple[Any, int]:
    """A stage's whole gRPC worker started in the emulated aarch64 python (emulator.start_worker; `config`
    as emulated_worker.py says) and the port it serves on; EmulatorError if the emulator is not set up."""
    from nndeploy.errors import EmulatorError
    from nndeploy.targets.artifacts.emulator import find_emulator, start_worker

    emulator = find_emulator("aarch64")
    if emulator is None:
        raise EmulatorError("the aarch64 emulator is not set up: run nndeploy emulator setup aarch64")
    return start_worker(emulator, config)


def run_artifact(
    build_dir: Path, entry: StageBuild, inputs: dict[str, np.ndarray], repeats: int = 0
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run a stage's artifact on `inputs` (by name); returns its outputs by name and, when `repeats` > 0,
    the latency in ms of that many further runs. Raises NotRunnable if this machine cannot run it."""
    reason = why_not_runnable(entry)
    if reason is not None:
        raise NotRunnable(reason)
    artifact = entry.artifact
    assert artifact is not None
    if artifact.parts:
        return _run_parts(build_dir, artifact, inputs, repeats)
    return _run_one(build_dir, artifact, inputs, repeats)


def _run_parts(
    build_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray], repeats: int
) -> tuple[dict[str, np.ndarray], list[float]]:
    """A stage built as TVM parts and onnxruntime regions: each part in order on one tensor dict."""

    def once() -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for part in artifact.parts:
            tensors.update(_run_one(build_dir, part, tensors, 0)[0])
        return {spec.name: tensors[spec.name] for spec in artifact.outputs}

    outputs = once()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append((time.perf_counter() - started) * 1e3)
    return outputs, times


def _run_one(
    build_dir: Path, artifact: Artifact, inputs: dict[str, np.ndarray], repeats: int
) -> tuple[dict[str, np.ndarray], list[float]]:
    path = _verified(build_dir, artifact)
    feed = [contiguous(inputs[spec.name]) for spec in artifact.inputs]
    names = [spec.name for spec in artifact.outputs]
    if artifact.fallback == "onnxruntime":
        return _run_onnxruntime(path, artifact.sha256, inputs, names, repeats)
    if _emulated(artifact):
        from nndeploy.targets.artifacts.emulator import find_emulator, run_artifact_emulated

        emulator = find_emulator("aarch64")
        assert emulator is not None
        return run_artifact_emulated(
            emulator,
            path,
            dict(zip([s.name for s in artifact.inputs], feed, strict=True)),
            [s.name for s in artifact.inputs],
            names,
            repeats=repeats,
        )
    return _run_tvm(path, artifact, feed, names, repeats)


_VERIFIED: dict[tuple[str, str], tuple[int, int]] = {}


def _verified(build_dir: Path, artifact: Artifact) -> Path:
    """The artifact's path, its sha256 checked on first use and again whenever the file changes
    (hashing a multi-MB library on every request would be the hot path's biggest cost)."""
    path = build_dir / artifact.path
    key = (str(path.resolve()), artifact.sha256)
    try:
        stat = path.stat()
        if _VERIFIED.get(key) == (stat.st_mtime_ns, stat.st_size):
            return path
    except OSError:
        pass
    checked = checked_artifact_path(build_dir, artifact)
    stat = checked.stat()
    _VERIFIED[key] = (stat.st_mtime_ns, stat.st_size)
    return checked


def _run_tvm(
    path: Path, artifact: Artifact, feed: list[np.ndarray], names: list[str], repeats: int
) -> tuple[dict[str, np.ndarray], list[float]]:
    import tvm

    device = tvm.cuda(0) if artifact.target.get("kind") == "cuda" else tvm.cpu(0)
    if artifact.target.get("kind") == "cuda":
        offer_prebuilt_kernels(path.parent, artifact)
    vm = _virtual_machine(str(path), artifact.target.get("kind", "llvm"))
    args = [tvm.runtime.tensor(x, device) for x in feed]
    result = vm["main"](*args)
    outputs = _as_list(result, len(names))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        _as_array(_as_list(vm["main"](*args), len(names))[-1])
        times.append((time.perf_counter() - started) * 1e3)
    return {name: _as_array(out) for name, out in zip(names, outputs, strict=True)}, times


_PREBUILT_KERNELS: dict[str, bytes] = {}


def offer_prebuilt_kernels(build_dir: Path, artifact: Artifact) -> None:
    """Make TVM load a CUDA stage's kernels from the fatbins nvcc built at compile time (sha256-checked)
    instead of compiling their source when the library loads: TVM keeps CUDA source in the library and
    by default compiles it then with NVRTC, which a serving machine need not have."""
    import hashlib
    import json

    from nndeploy.errors import ArtifactError
    from nndeploy.model_prep import file_sha256
    from nndeploy.paths import inside

    table_name = artifact.options.get("sources", {}).get("kernels")
    if not table_name:
        return
    table_path = build_dir / table_name
    if not table_path.is_file() or file_sha256(table_path) != artifact.options.get("kernels_sha256"):
        raise ArtifactError(f"{table_path}: missing or not the one the manifest names; compile again")
    stem = Path(artifact.path).stem
    for digest, entry in json.loads(table_path.read_text())["kernels"].items():
        fatbin_path = inside(build_dir, f"{stem}.{entry['file']}")
        if fatbin_path is None or not fatbin_path.is_file():
            raise ArtifactError(f"{table_path}: kernel file '{entry['file']}' is not inside {build_dir}")
        fatbin = fatbin_path.read_bytes()
        if hashlib.sha256(fatbin).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{build_dir / (stem + '.' + entry['file'])}: sha256 mismatch; compile again")
        _PREBUILT_KERNELS[digest] = fatbin
    _register_kernel_callback()


@cache
def _register_kernel_callback() -> None:
    import hashlib

    import tvm_ffi

    fallback = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _prebuilt(code: str) -> bytearray:
        found = _PREBUILT_KERNELS.get(hashlib.sha256(code.encode()).hexdigest())
        if found is not None:
            return bytearray(found)
        if fallback is None:
            raise RuntimeError("a CUDA kernel of the library is not among the build's fatbins; compile again")
        return fallback(code)


@cache
def _virtual_machine(path: str, kind: str) -> Any:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
    return VirtualMachine(tvm.runtime.load_module(path), device)


def contiguous(array: Any) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray turns a 0-d array into 1-d)."""
    return np.asarray(array, order="C")


def _as_array(value: Any) -> np.ndarray:
    """A VM output as numpy: a tensor, or a shape (what TVM returns for shape values) as int64."""
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.array([int(v) for v in value], dtype=np.int64)


def _as_list(result: Any, count: int) -> list[Any]:
    """The VM's result as one item per output: it returns one tensor, a shape (for an output that is a
    shape value, possibly empty), or a tuple of them."""
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    items = list(result)
    if count == 1 and all(isinstance(item, int) for item in items):
        return [result]
    return items


@cache
def _onnxruntime_session(path: str, sha256: str) -> Any:
    """One session per artifact file and content (creating one per request cost more than running it)."""
    from nndeploy.oracle import session

    return session(path)


def _run_onnxruntime(
    path: Path, sha256: str, inputs: dict[str, np.ndarray], names: list[str], repeats: int
) -> tuple[dict[str, np.ndarray], list[float]]:
    sess = _onnxruntime_session(str(path), sha256)
    wanted = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in inputs.items() if k in wanted}
    outputs = dict(zip(names, sess.run(names, feed), strict=True))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sess.run(names, feed)
        times.append((time.perf_counter() - started) * 1e3)
    return outputs, times


@cache
def cuda_problem() -> str | None:
    """None if TVM can run CUDA code here, else why not (no GPU, or its runtime libraries missing)."""
    import tvm

    try:
        if not tvm.cuda(0).exist:
            return "no NVIDIA GPU on this machine (CUDA stages are built, not executed)"
    except Exception:
        return (
            "TVM's CUDA runtime did not start: it needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 "
            "runtime (libcudart.so.13) on the library path"
        )
    return None


def missing_cpu_features(target: dict[str, Any], host_features: frozenset[str] | None = None) -> set[str]:
    """Instruction-set features the build's CPU has and this machine's CPU does not (or, given
    `host_features`, LLVM's names of another host's features, that host)."""
    import tvm
    from tvm.target import codegen

    triple = str(target.get("mtriple", "x86_64-linux-gnu"))
    if not triple.startswith(platform.machine()):
        return {f"the {triple.split('-')[0]} instruction set"}
    if "mcpu" not in target:
        return set()

    def features(cpu: str) -> set[str]:
        spec = {"kind": "llvm", "mtriple": triple, "mcpu": cpu}
        return {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(spec))}

    wanted = features(str(target["mcpu"])) | {str(a).lstrip("+") for a in target.get("mattr", [])}
    have = set(host_features) if host_features is not None else features(str(codegen.llvm_get_system_cpu()))
    return {f for f in wanted - have if f.startswith(ISA_PREFIXES)}
