"""plan -> compile -> verify -> inspect as a user runs them, on x86, emulated aarch64 and CUDA stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import CLUSTERS, assert_user_error, nndeploy

from models import uncompilable_model

MIXED = """
name: mixed
devices:
  - {name: server, profile: x86-avx512-server}
  - {name: gpu, profile: nvidia-t4}
default_link: {gbps: 10, latency_ms: 0.05}
hop: {fixed_ms: 0, ms_per_mib: 0}  # the example CNN is small: split it only if hops are free
input_at: server
output_to: server
"""
THREE_BOARDS = """
devices:
  - {name: a, profile: raspberry-pi-5}
  - {name: b, profile: x86-avx512-server}
  - {name: c, profile: raspberry-pi-5}
default_link: {gbps: 400, latency_ms: 0.0001}
hop: {fixed_ms: 0, ms_per_mib: 0}
input_at: a
output_to: a
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(stdout: str, first_cell: str) -> list[str]:
    """Table rows whose first cell is `first_cell`."""
    return [line for line in stdout.splitlines() if line.strip("│ ").startswith(first_cell)]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_x86_and_cuda_stages_compile_verify_and_inspect(example_models, tmp_path: Path) -> None:
    cluster = write(tmp_path, "mixed.yaml", MIXED)
    plan = tmp_path / "plan.json"
    done = nndeploy(
        "plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan, "--objective", "throughput"
    )
    assert done.returncode == 0, done.stderr
    devices = {s["device"] for s in json.loads(plan.read_text())["stages"]}
    assert devices == {"server", "gpu"}
    build = tmp_path / "build"
    done = nndeploy("compile", plan, "-o", build, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((build / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["built", "built"]
    again = nndeploy("compile", plan, "-o", build)
    assert again.returncode == 0 and again.stdout.count("(cached)") == 2, again.stdout
    done = nndeploy("verify", build, "--samples", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    gpu_stage = next(s["stage"] for s in manifest["stages"] if s["device"] == "gpu")
    x86_stage = 1 - gpu_stage
    assert "pass" in rows(done.stdout, f"stage {x86_stage}")[0]
    assert (
        "not run" in rows(done.stdout, f"stage {gpu_stage}")[0]
        or "pass" in rows(done.stdout, f"stage {gpu_stage}")[0]
    )
    as_json = nndeploy("verify", build, "--samples", "1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = __import__("json").loads(as_json.stdout)
    assert report["ok"] and len(report["checks"]) == len(manifest["stages"]) + 1
    x86 = report["checks"][x86_stage]
    assert x86["status"] == "pass" and all(o["ok"] and o["max_abs"] <= o["atol"] for o in x86["outputs"])
    strict = nndeploy("verify", build, "--atol", "0", "--rtol", "0")
    assert strict.returncode == 1 and "FAIL" in strict.stdout
    summary = nndeploy("inspect", build, "--stage", str(x86_stage))
    assert summary.returncode == 0 and "FMA" in summary.stdout
    ptx = nndeploy("inspect", build, "--stage", str(gpu_stage), "--asm")
    assert ptx.returncode == 0 and ".target sm_75" in ptx.stdout
    cuda = nndeploy("inspect", build, "--stage", str(gpu_stage), "--source")
    assert "__global__" in cuda.stdout
    assert_user_error(nndeploy("inspect", build, "--stage", "7"), "no stage 7")


@pytest.mark.emulator
def test_emulated_aarch64_stage_runs_and_matches(example_models, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    cluster = CLUSTERS / "edge-camera-server.yaml"
    assert nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan).returncode == 0
    assert json.loads(plan.read_text())["stages"][0]["device"] == "camera"
    build = tmp_path / "build"
    assert nndeploy("compile", plan, "-o", build).returncode == 0
    setup = nndeploy("emulator", "setup", "aarch64")
    assert setup.returncode == 0, setup.stderr
    done = nndeploy("verify", build)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "TVM llvm aarch64 (emulated)" in rows(done.stdout, "stage 0")[0]
        and "pass" in rows(done.stdout, "stage 0")[0]
    )
    assert "pass" in rows(done.stdout, "end to end")[0]
    neon = nndeploy("inspect", build, "--stage", "0")
    assert "NEON FMA" in neon.stdout


def test_fallback_runs_only_the_uncompilable_node_on_onnxruntime(tmp_path: Path) -> None:
    model = tmp_path / "reverse.onnx"
    onnx.save(uncompilable_model(), model)
    cluster = write(tmp_path, "boards.yaml", THREE_BOARDS)
    plan = tmp_path / "plan.json"
    assert_user_error(
        nndeploy("plan", model, "--cluster", cluster, "-o", plan), "ReverseSequence", "--fallback onnxruntime"
    )
    done = nndeploy("plan", model, "--cluster", cluster, "-o", plan, "--fallback", "onnxruntime")
    assert done.returncode == 0, done.stderr
    stages = json.loads(plan.read_text())["stages"]
    assert len(stages) >= 2
    odd_stage = next(s["index"] for s in stages if "reverse" in s["nodes"])
    assert "onnxruntime fallback: stage" in done.stdout and "'reverse' (ReverseSequence)" in done.stdout
    odd_plan = next(s for s in stages if s["index"] == odd_stage)
    assert [f["node"] for f in odd_plan["fallback"]] == ["reverse"]
    # The plan decided: only that node runs on onnxruntime, flagged in the build and in verify.
    build = tmp_path / "build"
    done = nndeploy("compile", plan, "-o", build)
    assert done.returncode == 0, done.stderr
    alone = odd_plan["nodes"] == ["reverse"]  # a stage of that node only runs on onnxruntime whole
    assert "onnxruntime fallback" in done.stdout and "ReverseSequence" in done.stderr
    manifest = json.loads((build / "manifest.json").read_text())
    statuses = {s["stage"]: s["status"] for s in manifest["stages"]}
    assert statuses.pop(odd_stage) == ("fallback" if alone else "partial fallback")
    assert set(statuses.values()) <= {"built"}
    verify = nndeploy("verify", build)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    expected = "onnxruntime (fallback)" if alone else "+ onnxruntime for 1 node(s)"
    assert expected in rows(verify.stdout, f"stage {odd_stage}")[0]
    assert "pass" in rows(verify.stdout, "end to end")[0]


def test_tampered_artifact_and_missing_build_are_refused(example_models, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert (
        nndeploy(
            "plan", example_models["camera_cnn"], "--cluster", CLUSTERS / "two-servers.yaml", "-o", plan
        ).returncode
        == 0
    )
    build = tmp_path / "build"
    assert nndeploy("compile", plan, "-o", build).returncode == 0
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, image=np.random.default_rng(3).random((1, 3, 224, 224), dtype=np.float32))
    np.savez(bad, image=np.zeros((1, 3, 32, 32), np.float32))
    done = nndeploy("verify", build, "--inputs", good)
    assert done.returncode == 0 and "1 input set(s)" in done.stdout, done.stdout + done.stderr
    assert_user_error(
        nndeploy("verify", build, "--inputs", bad), "'image' has shape [1, 3, 32, 32]", "[1, 3, 224, 224]"
    )
    library = build / "stage_0.so"
    library.write_bytes(library.read_bytes() + b"tampered")
    assert_user_error(nndeploy("verify", build), "sha256", "refusing to load")
    assert_user_error(nndeploy("verify", tmp_path / "nowhere"), "manifest.json", "nndeploy compile")
