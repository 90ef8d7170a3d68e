"""Shared fixtures: example models built once per session, clusters from dicts, and marker handling."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# compile's best-of (on by default) times every CPU stage against onnxruntime and keeps the faster, so what
# a build holds would depend on this machine's timings: tests see pure TVM builds unless they turn it on
# (tests/targets/build/test_best_of_regions.py does, and .ci/run's quickstart runs the default).
os.environ.setdefault("NNDEPLOY_BEST_OF", "0")
EXIT_STATUS = pytest.StashKey[int]()
EXAMPLES = ROOT / "examples"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's own status once its report is written. After a full run, with
    TVM, onnxruntime, Ray and gRPC all loaded in one process, a native library's exit-time destructors
    crashed it (SIGSEGV after every test had passed, past the point where faulthandler reports); the
    tools' own processes exit normally (every CLI test checks their exit codes)."""
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without nvidia-smi and `emulator` tests when the aarch64 emulator is not set up."""
    from nndeploy.targets.artifacts.emulator import find_emulator

    skips = {
        "gpu": (shutil.which("nvidia-smi") is None, "no NVIDIA GPU on this machine"),
        "emulator": (find_emulator("aarch64") is None, "run nndeploy emulator setup aarch64 first"),
    }
    for item in items:
        for marker, (absent, reason) in skips.items():
            if absent and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def example_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped example models, built by examples/build_models.py into a temporary folder."""
    spec = importlib.util.spec_from_file_location("build_models", EXAMPLES / "build_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import onnx

    folder = tmp_path_factory.mktemp("example_models")
    paths = {}
    for name, build in (
        ("camera_cnn", module.camera_cnn),
        ("tiny_bert", module.tiny_bert),
        ("small_unet", module.small_unet),
    ):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(build(), paths[name])
    return paths


@pytest.fixture
def make_cluster(tmp_path: Path) -> Callable[..., Any]:
    """Build a Cluster from a cluster.yaml-shaped dict (profiles resolved from the registry)."""
    from nndeploy.targets.devices.cluster import parse_cluster

    def build(data: dict[str, Any], extra_profile_paths: tuple[Path, ...] = ()) -> Any:
        devices = data.get("devices")
        if isinstance(devices, list) and devices and isinstance(devices[0], dict) and "name" in devices[0]:
            # Where requests arrive and results go: the first device, unless the test says otherwise.
            data = {"input_at": devices[0]["name"], "output_to": devices[0]["name"], **data}
        return parse_cluster(data, "cluster.yaml", tmp_path, extra_profile_paths)

    return build


# A hop the data plane does for nothing: the tests' models are tiny, and split only if hops are free.
FREE_HOP = {"fixed_ms": 0.0, "ms_per_mib": 0.0}


def servers(
    count: int,
    profile: str = "x86-avx512-server",
    gbps: float = 25.0,
    latency_ms: float = 0.05,
    hop: dict[str, float] | None = FREE_HOP,
) -> dict[str, Any]:
    """A cluster.yaml dict of `count` identical devices on one network (`hop`: cluster.yaml's hop cost,
    None for the planner's default)."""
    cluster: dict[str, Any] = {
        "name": f"{count}-servers",
        "devices": [{"name": f"server-{i}", "profile": profile} for i in range(count)],
        "default_link": {"gbps": gbps, "latency_ms": latency_ms},
        "input_at": "server-0",
        "output_to": f"server-{count - 1}",
    }
    if hop is not None:
        cluster["hop"] = dict(hop)
    return cluster


def plan_and_compile(model: Any, cluster: dict[str, Any], folder: Path, name: str) -> tuple[Path, Path]:
    """Save `model` as folder/name.onnx, plan it on `cluster` and compile it with the CLI; returns
    (model path, build folder), after checking the plan has at least two stages."""
    import json
    import subprocess
    import sys

    import onnx
    import yaml

    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    (folder / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    for args in (
        ["plan", str(path), "--cluster", str(folder / "cluster.yaml"), "-o", str(folder / "plan.json")],
        ["compile", str(folder / "plan.json"), "-o", str(folder / "build")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "nndeploy", *args], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
    assert len(json.loads((folder / "plan.json").read_text())["stages"]) >= 2
    return path, folder / "build"
