"""Stage model -> TVM artifact, one function per target kind, with a content-addressed build cache; or
the stage model itself as an onnxruntime artifact.

x86-64 and aarch64 stages are LLVM builds for the profile's CPU (aarch64 is cross-compiled and linked with
the aarch64 GNU toolchain); CUDA stages get TVM's GPU schedules (dlight) and their kernels are compiled with
nvcc for the profile's sm_XX. Every build also keeps the generated code (LLVM IR, assembly, CUDA source)
beside the artifact for `nndeploy inspect`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from nndeploy.errors import BuildError, ClusterError, TuningDatabaseError, first_line
from nndeploy.graph import io_specs
from nndeploy.model_prep import file_sha256
from nndeploy.targets.build.record import BuildRecord, build_key, cache_dir, tvm_version
from nndeploy.targets.tuning.cold import weights_cold
from nndeploy.targets.tuning.database import fingerprint
from nndeploy.targets.tuning.shipped import Knowledge
from nndeploy.types import Artifact, Device, FallbackNode


def build_compiled(
    stage_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    tuning_db_dir: Path | None = None,
    name: str | None = None,
    use_shipped: bool = True,
) -> BuildRecord:
    """The whole model at `stage_path` built by TVM (no fallback), as out_dir/<name>.so; with the
    tuning knowledge shipped for its CPU unless `use_shipped` is False."""
    name = name or f"stage_{index}"
    started = time.perf_counter()
    stage_bytes = stage_path.read_bytes()
    model = onnx.load_from_string(stage_bytes)
    inputs, outputs = io_specs(model)
    try:
        shipped = _shipped(device) if use_shipped else None
        options = _build_options(model, device, tuning_db_dir, shipped)
        key = build_key(stage_bytes, device, options)
        cached = cache_dir() / key
        hit = (cached / "meta.json").is_file()
        if not hit:
            _build_into(model, device, cached, tuning_db_dir, shipped)
        files = json.loads((cached / "meta.json").read_text())
        out_dir.mkdir(parents=True, exist_ok=True)
        library = out_dir / f"{name}.so"
        shutil.copyfile(cached / files["library"], library)
        sources = {}
        for kind, source in files["sources"].items():
            target = out_dir / f"{name}.{source.split('.', 1)[1]}"
            shutil.copyfile(cached / source, target)
            sources[kind] = target.name
    except TuningDatabaseError as exc:  # the untuned build, flagged
        untuned = build_compiled(stage_path, index, device, out_dir, None, name, use_shipped=False)
        return _untuned_because(untuned, str(exc))
    except BuildError as exc:
        return BuildRecord(index, device.name, None, time.perf_counter() - started, False, str(exc))
    artifact = Artifact(
        stage=index,
        target=device.tvm_target,
        path=library.name,
        sha256=file_sha256(library),
        inputs=inputs,
        outputs=outputs,
        tvm_version=tvm_version(),
        options={
            **options,
            "cache_key": key,
            "build_seconds": files["seconds"],
            **({"schedules": files["schedules"]} if files.get("schedules") else {}),
            "sources": sources,
            "device_arch": device.arch,
            **({"kernels_sha256": file_sha256(out_dir / sources["kernels"])} if "kernels" in sources else {}),
        },
        fallback=None,
    )
    return BuildRecord(index, device.name, artifact, time.perf_counter() - started, hit, None, sources)


def _untuned_because(record: BuildRecord, problem: str) -> BuildRecord:
    """`record` (an untuned build) with the reason the tuning database was not applied in its options."""
    from dataclasses import replace

    if record.artifact is None:
        return record
    options = {**record.artifact.options, "untuned_because": problem}
    return replace(record, artifact=replace(record.artifact, options=options))


def _build_options(
    model: onnx.ModelProto, device: Device, tuning_db_dir: Path | None, shipped: Knowledge | None
) -> dict[str, Any]:
    """What, besides the model and the device, decides the build (part of its cache key); a BuildError
    for a bad setting (NNDEPLOY_VM_EXEC_MODE, NNDEPLOY_LLC_BYTES)."""
    from nndeploy.targets.build.codegen import vm_exec_mode

    options: dict[str, Any] = {"pipeline": _pipeline_name(device)}
    if tuning_db_dir is not None or shipped is not None:
        options = {
            "pipeline": "llvm-metaschedule",
            "tuning_db": fingerprint(tuning_db_dir) if tuning_db_dir is not None else "",
            "weights_cold": weights_cold(model),  # which of the database's two ways of measuring leads
        }
        if shipped is not None:
            options["shipped_db"] = shipped.fingerprint[:16]
    options["vm"] = vm_exec_mode(str(device.tvm_target.get("kind")))
    return options


def fallback_build(stage_path: Path, index: int, device: Device, out_dir: Path) -> BuildRecord:
    """The stage as an onnxruntime artifact (a candidate for best-of selection)."""
    return onnxruntime_record(stage_path, index, device, out_dir, "")


def onnxruntime_record(
    model_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    reason: str,
    name: str | None = None,
    nodes: Sequence[FallbackNode] = (),
) -> BuildRecord:
    """The model at `model_path` run on onnxruntime instead of compiled: its artifact is the model
    itself (copied to out_dir/<name>.onnx), flagged as a fallback with the reason (and per node, why)."""
    started = time.perf_counter()
    options: dict[str, Any] = {"reason": reason, "device_arch": device.arch}
    if nodes:
        options["nodes"] = [node.to_dict() for node in nodes]
    artifact = model_artifact(model_path, index, device, out_dir, name, options, "onnxruntime")
    return BuildRecord(index, device.name, artifact, time.perf_counter() - started, False, None)


def model_artifact(
    model_path: Path,
    index: int,
    device: Device,
    out_dir: Path,
    name: str | None,
    options: dict[str, Any],
    fallback: str | None,
    parts: tuple[Artifact, ...] = (),
) -> Artifact:
    """An artifact whose file is an ONNX model (copied to out_dir/<name>.onnx, default stage_<index>):
    an onnxruntime fallback, or the reference model of a stage built in `parts`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs, outputs = io_specs(onnx.load(str(model_path), load_external_data=False))
    copy = out_dir / f"{name or f'stage_{index}'}.onnx"
    if copy.resolve() != model_path.resolve():
        shutil.copyfile(model_path, copy)
    return Artifact(
        stage=index,
        target=device.tvm_target,
        path=copy.name,
        sha256=file_sha256(copy),
        inputs=inputs,
        outputs=outputs,
        tvm_version=tvm_version(),
        options=options,
        fallback=fallback,
        parts=parts,
    )


def _shipped(device: Device) -> Knowledge | None:
    """The tuning knowledge shipped for the device's CPU (None: none ships, it is off, or not a CPU)."""
    from nndeploy.targets.tuning.shipped import knowledge

    return knowledge(device.tvm_target)


def _pipeline_name(device: Device) -> str:
    return "cuda-default-dlight" if device.tvm_target.get("kind") == "cuda" else "llvm-default"


def _build_into(
    model: onnx.ModelProto,
    device: Device,
    folder: Path,
    tuning_db_dir: Path | None,
    shipped: Knowledge | None,
) -> None:
    """Run the TVM build for `device` and leave library, sources and meta.json in `folder` (atomically)."""
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=folder.parent))
    try:
        started = time.perf_counter()
        schedules: dict[str, int] = {}
        if tuning_db_dir is not None or shipped is not None:
            from nndeploy.targets.build.tuned import build_tuned_llvm

            user_db = _best_records(tuning_db_dir) if tuning_db_dir is not None else None
            sources, schedules = build_tuned_llvm(model, device, user_db, scratch, shipped)
        else:
            sources = _tvm_build(model, device, scratch)
        meta = {
            "library": "stage.so",
            "sources": sources,
            "seconds": time.perf_counter() - started,
            "schedules": schedules,
        }
        (scratch / "meta.json").write_text(json.dumps(meta))
        if folder.exists():  # a stale entry without meta.json, or one a parallel build just finished
            if (folder / "meta.json").is_file():
                return
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # a parallel build of the same content got there first
            scratch.rename(folder)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def _tvm_build(model: onnx.ModelProto, device: Device, scratch: Path) -> dict[str, str]:
    """Import, schedule, compile and export; returns {source kind: file name} written into `scratch`."""
    from nndeploy.targets.build import codegen as tvm_pipeline

    try:
        tvm_pipeline.check_tvm_target(device.tvm_target, f"device '{device.name}'")
    except ClusterError as exc:
        raise BuildError(str(exc)) from None
    kind = device.tvm_target.get("kind")
    if kind == "cuda":
        return tvm_pipeline.build_cuda(model, device, scratch)
    if kind == "llvm":
        return tvm_pipeline.build_llvm(model, device, scratch)
    raise BuildError(f"device '{device.name}': TVM target kind '{kind}' is not supported (use llvm or cuda)")


def _best_records(db_dir: Path) -> Path:
    """A copy of the database with each workload's best record only, cached by the database's content:
    loading every record of a long tuning run takes seconds (2.7 s for 700), the best ones a tenth."""
    import tempfile

    from nndeploy.targets.tuning.database import export_best
    from nndeploy.targets.tuning.transfer import TOP_K

    folder = cache_dir().parent / "tuning-best" / fingerprint(db_dir)
    if not (folder / "done").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="export-", dir=folder.parent))
        try:
            export_best(db_dir, scratch, keep=TOP_K)
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # a line that is not a record
            shutil.rmtree(scratch, ignore_errors=True)
            raise TuningDatabaseError(
                f"the tuning database {db_dir} is damaged ({first_line(exc)})"
            ) from None
        except BuildError as exc:  # a line the database's own reader refuses
            shutil.rmtree(scratch, ignore_errors=True)
            raise TuningDatabaseError(str(exc)) from None
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        (scratch / "done").write_text("")
        try:
            scratch.rename(folder)
        except OSError:  # a parallel build exported it first
            shutil.rmtree(scratch, ignore_errors=True)
    return folder
