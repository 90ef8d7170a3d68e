"""TVM builds for every target kind, the content cache, failures, and tampered artifacts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from nndeploy.errors import ArtifactError
from nndeploy.model_prep import file_sha256
from nndeploy.targets.artifacts.manifest import checked_artifact_path
from nndeploy.targets.build.stage import build_stage
from nndeploy.targets.devices.registry import device_from_profile, load_profiles
from nndeploy.targets.inspect import assembly

from models import attention_model, conv_model, uncompilable_model

PROFILES = load_profiles()
TARGETS = {
    "x86": "x86-avx512-server",
    "aarch64": "raspberry-pi-5",
    "cuda": "nvidia-t4",
    "jetson": "jetson-orin-nano-gpu",
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test builds into its own cache, so 'cached' means cached by this test."""
    cache = tmp_path / "build-cache"
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(cache))
    return cache


def device(kind: str, name: str = "dev"):
    return device_from_profile(PROFILES[TARGETS[kind]], name)


def save(model: onnx.ModelProto, folder: Path, name: str = "stage.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("kind", ["x86", "aarch64", "cuda", "jetson"])
@pytest.mark.parametrize("builder", [conv_model, attention_model], ids=["conv", "attention"])
def test_every_target_kind_builds(kind: str, builder, tmp_path: Path) -> None:
    if kind in ("cuda", "jetson") and shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    record = build_stage(save(builder(), tmp_path), 0, device(kind), tmp_path)
    assert record.error is None, record.error
    artifact = record.artifact
    assert artifact is not None and artifact.fallback is None
    library = tmp_path / artifact.path
    assert artifact.sha256 == file_sha256(library)
    elf = library.read_bytes()[:20]
    assert elf[:4] == b"\x7fELF"
    machine = int.from_bytes(elf[18:20], "little")
    host_arch = {"x86": 62, "aarch64": 183, "cuda": 62, "jetson": 183}[kind]  # EM_X86_64, EM_AARCH64
    assert machine == host_arch
    sources = artifact.options["sources"]
    if kind in ("cuda", "jetson"):
        assert "__global__" in (tmp_path / sources["cuda"]).read_text()
        assert (tmp_path / sources["fatbin"]).stat().st_size > 1000
        table = json.loads((tmp_path / sources["kernels"]).read_text())
        source_digest = hashlib.sha256((tmp_path / sources["cuda"]).read_bytes()).hexdigest()
        assert table["kernels"][source_digest]["sha256"] == file_sha256(tmp_path / sources["fatbin"])
        assert artifact.options["kernels_sha256"] == file_sha256(tmp_path / sources["kernels"])
        ptx = (tmp_path / sources["ptx"]).read_text()
        arch = PROFILES[TARGETS[kind]].tvm_target["arch"]
        assert f".target {arch}" in ptx and "fma.rn" in ptx
    else:  # the IR is kept; the assembly is made from it when asked (x86 and cross-built aarch64 alike)
        assert "asm" not in sources
        asm = assembly(tmp_path / sources["ir"])
        assert ("fmla" in asm) if kind == "aarch64" else ("vfmadd" in asm)


def test_unchanged_stage_is_not_rebuilt(tmp_path: Path) -> None:
    path = save(conv_model(), tmp_path)
    first = build_stage(path, 0, device("x86"), tmp_path / "a")
    assert not first.cached
    second = build_stage(path, 0, device("x86"), tmp_path / "b")
    assert second.cached and second.artifact.sha256 == first.artifact.sha256
    other_target = build_stage(path, 0, device("aarch64"), tmp_path / "c")
    assert not other_target.cached


def test_op_tvm_cannot_import_names_node_and_op_or_falls_back(tmp_path: Path) -> None:
    """Without fallback the stage fails naming the node; with it, only that node runs on onnxruntime,
    between two TVM-built parts, and the stage still computes what onnxruntime does."""
    from nndeploy.oracle import run_model
    from nndeploy.targets.artifacts.loader import run_artifact
    from nndeploy.targets.artifacts.manifest import StageBuild

    path = save(uncompilable_model(), tmp_path)
    record = build_stage(path, 0, device("x86"), tmp_path)
    assert record.artifact is None
    assert "node 'reverse' (op ReverseSequence)" in record.error and "--fallback onnxruntime" in record.error
    fallback = build_stage(path, 0, device("x86"), tmp_path, fallback="onnxruntime")
    artifact = fallback.artifact
    assert artifact is not None and artifact.fallback is None
    assert [part.fallback for part in artifact.parts] == [None, "onnxruntime", None]
    assert [n["node"] for n in artifact.options["onnxruntime_nodes"]] == ["reverse"]
    assert "ReverseSequence" in artifact.options["onnxruntime_nodes"][0]["reason"]
    assert [Path(p.path).suffix for p in artifact.parts] == [".so", ".onnx", ".so"]
    assert [n.op_type for n in onnx.load(tmp_path / artifact.parts[1].path).graph.node] == ["ReverseSequence"]
    entry = StageBuild(0, "x86", "x86_64", artifact, fallback.seconds, False)
    assert entry.status == "partial fallback"
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    got, _ = run_artifact(tmp_path, entry, {"x": x})
    np.testing.assert_allclose(got["y"], run_model(uncompilable_model(), {"x": x})["y"], rtol=1e-5, atol=1e-5)
    part = tmp_path / artifact.parts[2].path
    part.write_bytes(part.read_bytes() + b"tampered")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        checked_artifact_path(tmp_path, artifact)


def test_missing_cross_compiler_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if "aarch64" in name else real_which(name, *a, **k)
    )
    record = build_stage(save(conv_model(), tmp_path), 0, device("aarch64"), tmp_path)
    assert record.artifact is None
    assert (
        "aarch64-linux-gnu-gcc" in record.error
        and "apt-get install -y --no-install-recommends gcc-aarch64-linux-gnu" in record.error
    )


def test_tampered_artifact_is_refused_before_loading(tmp_path: Path) -> None:
    record = build_stage(save(conv_model(), tmp_path), 0, device("x86"), tmp_path)
    assert checked_artifact_path(tmp_path, record.artifact) == tmp_path / record.artifact.path
    library = tmp_path / record.artifact.path
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        checked_artifact_path(tmp_path, record.artifact)
    library.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        checked_artifact_path(tmp_path, record.artifact)


def test_unknown_target_kind_is_refused(tmp_path: Path) -> None:
    import dataclasses

    odd = dataclasses.replace(device("x86"), tvm_target={"kind": "vulkan"})
    record = build_stage(save(conv_model(), tmp_path), 0, odd, tmp_path)
    assert record.artifact is None and "vulkan" in record.error


def test_a_cpu_llvm_does_not_know_fails_the_stage_instead_of_building_generic_code(tmp_path: Path) -> None:
    import dataclasses

    x86 = device("x86")
    odd = dataclasses.replace(x86, tvm_target={**x86.tvm_target, "mcpu": "icelake-servr"})
    record = build_stage(save(conv_model(), tmp_path), 0, odd, tmp_path)
    assert record.artifact is None
    assert record.error == (
        "device 'dev': tvm_target.mcpu: LLVM does not know cpu 'icelake-servr' for x86_64-linux-gnu"
    ), record.error


def test_plan_time_op_support_comes_from_tvm(make_cluster) -> None:
    from nndeploy.targets.frontend.ops import restrict_to_compiler, tvm_onnx_ops

    ops = tvm_onnx_ops()
    assert {"Conv", "MatMul", "Softmax", "LayerNormalization"} <= ops and "ReverseSequence" not in ops
    cluster = restrict_to_compiler(make_cluster({"devices": [{"name": "cpu", "profile": "x86-avx2-server"}]}))
    assert cluster.devices[0].ops == ops


def test_missing_nvcc_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name, *a, **k: None if name == "nvcc" else real_which(name, *a, **k)
    )
    record = build_stage(save(conv_model(), tmp_path), 0, device("cuda"), tmp_path)
    assert record.artifact is None and "nvcc not found" in record.error and "CUDA toolkit" in record.error
    assert "apt-get install nvidia-cuda-toolkit" in record.error and "\n" not in record.error


@pytest.mark.gpu
def test_cuda_stage_executes_on_a_gpu_and_matches_onnxruntime(tmp_path: Path) -> None:
    from nndeploy.oracle import compare, run_model
    from nndeploy.targets.artifacts.loader import run_artifact, why_not_runnable
    from nndeploy.targets.artifacts.manifest import StageBuild

    from models import random_inputs

    model = conv_model()
    record = build_stage(save(model, tmp_path), 0, device("cuda"), tmp_path)
    entry = StageBuild(0, "dev", "cuda", record.artifact, record.seconds, record.cached)
    reason = why_not_runnable(entry)
    if reason is not None:
        pytest.skip(reason)
    inputs = random_inputs(model)
    got, _ = run_artifact(tmp_path, entry, inputs)
    assert all(c.ok for c in compare(run_model(model, inputs), got, {"float32": (1e-4, 1e-3)}))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_input_names_that_are_not_c_identifiers_build_for_cuda(tmp_path: Path) -> None:
    model = conv_model()
    old = model.graph.input[0].name
    model.graph.input[0].name = "gpu_0/data_0"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "gpu_0/data_0"
    record = build_stage(save(model, tmp_path), 0, device("cuda"), tmp_path)
    assert record.error is None, record.error
    assert record.artifact.inputs[0].name == "gpu_0/data_0"  # the artifact's interface keeps the real name


def test_cuda_kernels_load_from_the_builds_fatbins_after_a_sha256_check(tmp_path: Path) -> None:
    import tvm_ffi

    from nndeploy.errors import ArtifactError
    from nndeploy.targets.artifacts.loader import offer_prebuilt_kernels
    from nndeploy.types import Artifact

    source = 'extern "C" __global__ void add_kernel(float* x) { x[threadIdx.x] += 1.0f; }'
    (tmp_path / "stage_3.fatbin").write_bytes(b"prebuilt kernels")
    table = {
        "arch": "sm_90",
        "kernels": {
            hashlib.sha256(source.encode()).hexdigest(): {
                "file": "fatbin",
                "sha256": hashlib.sha256(b"prebuilt kernels").hexdigest(),
            }
        },
    }
    (tmp_path / "stage_3.kernels.json").write_text(json.dumps(table))
    artifact = Artifact(
        stage=3,
        target={"kind": "cuda", "arch": "sm_90"},
        path="stage_3.so",
        sha256="",
        inputs=(),
        outputs=(),
        tvm_version="0.27",
        options={
            "sources": {"kernels": "stage_3.kernels.json"},
            "kernels_sha256": file_sha256(tmp_path / "stage_3.kernels.json"),
        },
        fallback=None,
    )
    offer_prebuilt_kernels(tmp_path, artifact)
    compile_at_load = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(compile_at_load(source)) == b"prebuilt kernels"

    (tmp_path / "stage_3.fatbin").write_bytes(b"tampered kernels")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        offer_prebuilt_kernels(tmp_path, artifact)
    (tmp_path / "stage_3.kernels.json").write_text(json.dumps({"arch": "sm_90", "kernels": {}}))
    with pytest.raises(ArtifactError, match="not the one the manifest names"):
        offer_prebuilt_kernels(tmp_path, artifact)


def test_cpu_stages_get_compiled_vm_control_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The VM's control code is native for CPU stages (faster between kernels), interpreted on request."""
    from nndeploy.errors import BuildError
    from nndeploy.targets.build.codegen import vm_exec_mode

    record = build_stage(save(conv_model(), tmp_path), 0, device("x86"), tmp_path / "a")
    assert record.artifact is not None and record.artifact.options["vm"] == "compiled"
    assert vm_exec_mode("cuda") == "bytecode"
    monkeypatch.setenv("NNDEPLOY_VM_EXEC_MODE", "bytecode")
    again = build_stage(save(conv_model(), tmp_path), 0, device("x86"), tmp_path / "b")
    assert again.artifact is not None and again.artifact.options["vm"] == "bytecode"
    assert again.artifact.options["cache_key"] != record.artifact.options["cache_key"]
    monkeypatch.setenv("NNDEPLOY_VM_EXEC_MODE", "jit")
    with pytest.raises(BuildError, match="use compiled or bytecode"):
        vm_exec_mode("llvm")
    refused = build_stage(save(conv_model(), tmp_path), 0, device("x86"), tmp_path / "c")
    assert refused.artifact is None
    assert "NNDEPLOY_VM_EXEC_MODE=jit: use compiled or bytecode" in str(refused.error)


def test_assembly_of_a_damaged_ir_file_is_one_clear_error(tmp_path: Path) -> None:
    damaged = tmp_path / "stage_0.ll"
    damaged.write_text("define void @f( {\n")
    with pytest.raises(ArtifactError, match=r"stage_0.ll: LLVM cannot make assembly of it: ") as caught:
        assembly(damaged)
    assert "\n" not in str(caught.value)
