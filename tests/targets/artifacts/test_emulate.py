"""Tests for targets/artifacts/emulator.py: the cached aarch64 environment under qemu-user and running
artifacts in it.

The `emulator` tests set the environment up in the user's cache on first use (about a minute, then cached)
and run real cross-compiled TVM libraries against onnxruntime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from nndeploy.errors import EmulatorError, NNDeployError
from nndeploy.oracle import run_model
from nndeploy.targets.artifacts import emulator as emulate
from nndeploy.targets.artifacts.emulator import (
    Emulator,
    emulator_dir,
    find_emulator,
    missing_prerequisites,
    run_artifact_emulated,
    run_in_emulator,
    setup_emulator,
)

from models import attention_model, conv_model, multi_output_model, random_inputs

TARGET = {
    "kind": "llvm",
    "mtriple": "aarch64-linux-gnu",
    "mcpu": "cortex-a76",
    "mattr": ["+neon"],
    "num-cores": 4,
}


def test_unsupported_arch_is_a_clear_error() -> None:
    for call in (emulator_dir, find_emulator, missing_prerequisites, setup_emulator):
        with pytest.raises(EmulatorError, match=r"cannot emulate arch 'riscv64': only aarch64 is supported"):
            call("riscv64")
    assert issubclass(EmulatorError, NNDeployError)


def test_emulator_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NNDEPLOY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert emulator_dir() == tmp_path / "xdg" / "nndeploy" / "emulators" / "aarch64"
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    assert emulator_dir("aarch64") == tmp_path / "cache" / "emulators" / "aarch64"


def test_find_emulator_is_none_for_an_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path))
    assert find_emulator() is None


def test_find_emulator_is_none_when_built_for_another_tvm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path))
    folder = emulator_dir()
    (folder / "root" / "usr" / "bin").mkdir(parents=True)
    (folder / "root" / "usr" / "bin" / "python3.11").touch()
    versions = {**emulate._host_versions(), "apache-tvm": "0.0.1"}
    (folder / emulate.MARKER).write_text(json.dumps({"arch": "aarch64", "versions": versions}))
    assert find_emulator() is None
    (folder / emulate.MARKER).write_text("{not json")
    assert find_emulator() is None


def test_without_root_setup_names_the_command_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("not a Debian or Ubuntu host")
    real_which = shutil.which
    monkeypatch.setattr(emulate.shutil, "which", lambda n: None if n.startswith("qemu") else real_which(n))
    monkeypatch.setattr(emulate.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("NNDEPLOY_CACHE_DIR", str(tmp_path))
    assert "qemu-aarch64-static (apt-get install qemu-user-static)" in missing_prerequisites()
    with pytest.raises(EmulatorError, match=r"run as root: .*apt-get install -y .*qemu-user-static"):
        setup_emulator(log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_bad_library_and_missing_inputs_fail_before_running(tmp_path: Path) -> None:
    fake = Emulator("aarch64", Path("/nonexistent/qemu"), tmp_path, tmp_path, tmp_path / "python3.11")
    with pytest.raises(EmulatorError, match="artifact library not found"):
        run_artifact_emulated(fake, tmp_path / "absent.so", {}, [], [])
    (tmp_path / "lib.so").write_bytes(b"")
    with pytest.raises(EmulatorError, match=r"inputs missing for lib\.so: x"):
        run_artifact_emulated(fake, tmp_path / "lib.so", {}, ["x"], ["y"])


# --- with the emulator -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    """The cached aarch64 environment (set up on first use)."""
    return setup_emulator("aarch64", log=print)


def _cross_compile(model: onnx.ModelProto, folder: Path) -> Path:
    """Build `model` for the aarch64 target with TVM and export it with the cross compiler."""
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed")
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {name: list(array.shape) for name, array in random_inputs(model).items()}
    mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    executable = tvm.compile(mod, target=tvm.target.Target(TARGET))
    path = folder / f"{model.graph.name}.so"
    executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


@pytest.mark.emulator
def test_setup_is_cached_and_complete(emulator: Emulator) -> None:
    assert setup_emulator(log=lambda _: None) == emulator
    assert find_emulator() == emulator
    assert missing_prerequisites() == []
    assert emulator.versions["apache-tvm"] == emulate._host_versions()["apache-tvm"]


@pytest.mark.emulator
@pytest.mark.slow
@pytest.mark.parametrize("build", [conv_model, attention_model, multi_output_model])
def test_cross_compiled_artifact_matches_onnxruntime(emulator: Emulator, build, tmp_path: Path) -> None:
    model = build()
    library = _cross_compile(model, tmp_path)
    inputs = random_inputs(model)
    names = [o.name for o in model.graph.output]
    outputs, latencies = run_artifact_emulated(emulator, library, inputs, list(inputs), names)
    assert latencies == []
    expected = run_model(model, inputs)
    assert list(outputs) == names
    for name in names:
        assert outputs[name].shape == expected[name].shape
        assert float(np.max(np.abs(outputs[name] - expected[name]))) < 1e-4, name


@pytest.mark.emulator
@pytest.mark.slow
def test_repeats_give_latencies(emulator: Emulator, tmp_path: Path) -> None:
    model = conv_model()
    library = _cross_compile(model, tmp_path)
    inputs = random_inputs(model)
    _, latencies = run_artifact_emulated(emulator, library, inputs, ["x"], ["y"], repeats=3)
    assert len(latencies) == 3 and all(t > 0 for t in latencies)
    with pytest.raises(EmulatorError, match="returned 1 outputs under emulation, expected 2"):
        run_artifact_emulated(emulator, library, inputs, ["x"], ["y", "z"])


@pytest.mark.emulator
def test_runner_failure_is_one_line(emulator: Emulator, tmp_path: Path) -> None:
    library = tmp_path / "broken.so"
    library.write_text("not a shared library")
    with pytest.raises(EmulatorError, match=r"running broken\.so under qemu-aarch64 failed") as info:
        run_artifact_emulated(emulator, library, {"x": np.zeros(2, np.float32)}, ["x"], ["y"])
    assert "\n" not in str(info.value)


@pytest.mark.emulator
def test_run_in_emulator_timeout(emulator: Emulator) -> None:
    with pytest.raises(EmulatorError, match="timed out after 2 s"):
        run_in_emulator(emulator, ["-c", "import time; time.sleep(60)"], timeout=2)
    done = run_in_emulator(emulator, ["-c", "import platform; print(platform.machine())"], timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "aarch64"


@pytest.mark.emulator
@pytest.mark.slow
def test_a_stage_worker_lives_in_the_emulator_across_requests(emulator: Emulator, tmp_path: Path) -> None:
    from nndeploy.proto import stage_pb2
    from nndeploy.runtime.tensors import proto_to_tensors, tensors_to_proto
    from tests.runtime.test_worker import exchange

    model = conv_model()
    library = _cross_compile(model, tmp_path)
    inputs = random_inputs(model)
    names = [o.name for o in model.graph.output]
    spec = {"index": 0, "device": "board", "inputs": list(inputs), "outputs": names, "downstream": None}
    config = {"library": str(library), "inputs": list(inputs), "outputs": names, "spec": spec}
    worker, port = emulate.start_worker(emulator, {**config, "port": 0, "host": "127.0.0.1", "tls": None})
    try:
        requests = [
            stage_pb2.StageRequest(request_id=f"r{i}", tensors=tensors_to_proto(inputs)) for i in range(3)
        ]
        replies = exchange(f"127.0.0.1:{port}", requests, expected=3)
        expected = run_model(model, inputs)
        for reply in replies:
            assert reply.ok, reply.error
            got = proto_to_tensors(reply.tensors)
            assert all(float(np.max(np.abs(got[n] - expected[n]))) < 1e-4 for n in names)
        assert worker.poll() is None  # one emulated process served every request
    finally:
        worker.terminate()
        status = worker.wait(timeout=60)
        shutil.rmtree(worker.overlay, ignore_errors=True)  # type: ignore[attr-defined]
    assert status == 0  # SIGTERM stops it cleanly


@pytest.mark.emulator
def test_a_stage_worker_that_cannot_start_is_one_line(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "lib.so").write_bytes(b"not a library")
    spec = {"index": 0, "device": "board", "inputs": ["x"], "outputs": ["y"], "downstream": None}
    config = {"library": str(tmp_path / "lib.so"), "inputs": ["x"], "outputs": ["y"], "spec": spec}
    with pytest.raises(EmulatorError, match=r"did not start: emulated_worker: .*Error"):
        emulate.start_worker(emulator, {**config, "port": 0, "host": "127.0.0.1", "tls": None}, timeout=300)
