"""`nndeploy tune --rpc HOST:PORT --device NAME`: candidates timed on the device through TVM's RPC server
(here one running under the aarch64 emulator: the flow is real, its timings mean nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from test_cli import assert_user_error, nndeploy
from test_transfer import conv_relu

from nndeploy.errors import BuildError
from nndeploy.targets.tuning import database as tuning_db
from nndeploy.targets.tuning.remote import Remote, parse_remote

EDGE = "name: edge\ndevices:\n  - {name: camera, profile: raspberry-pi-5}\n"


def edge_plan(tmp_path: Path) -> Path:
    onnx.save(conv_relu(8, 16), tmp_path / "m.onnx")
    (tmp_path / "c.yaml").write_text(EDGE)
    plan = tmp_path / "plan.json"
    done = nndeploy("plan", tmp_path / "m.onnx", "--cluster", tmp_path / "c.yaml", "-o", plan)
    assert done.returncode == 0, done.stderr
    return plan


def free_port() -> int:
    from nndeploy.runtime.chain import free_ports

    return free_ports(1)[0]


@pytest.mark.parametrize("text", ["board", "board:", ":9090", "board:ninety", "board:70000"])
def test_an_address_that_is_not_host_and_port_is_refused(text: str) -> None:
    with pytest.raises(BuildError, match="is not HOST:PORT"):
        parse_remote(text)


def test_addresses_parse() -> None:
    assert parse_remote("192.168.1.20:9090") == Remote("192.168.1.20", 9090)
    assert parse_remote("[::1]:9090") == Remote("::1", 9090)


def test_rpc_mistakes_are_one_line_each(tmp_path: Path) -> None:
    plan = edge_plan(tmp_path)
    db = tmp_path / "db"
    assert_user_error(
        nndeploy("tune", plan, "--rpc", "127.0.0.1:9090", "--db", db), "--device NAME go together"
    )
    assert_user_error(
        nndeploy("tune", plan, "--rpc", "127.0.0.1:9090", "--device", "camra", "--db", db),
        "--device 'camra' is not in the plan's cluster",
        "did you mean 'camera'",
    )
    dead = nndeploy("tune", plan, "--rpc", f"127.0.0.1:{free_port()}", "--device", "camera", "--db", db)
    assert_user_error(dead, "no TVM RPC server answers there", "python -m tvm.exec.rpc_server")
    assert not tuning_db.has_records(tuning_db.target_db_dir(db, {"kind": "none"}))


@pytest.mark.emulator
@pytest.mark.slow
def test_tune_measures_on_the_device_over_rpc_and_compile_applies_it(tmp_path: Path) -> None:
    from nndeploy.targets.artifacts.emulator import find_emulator, start_rpc_server

    plan = edge_plan(tmp_path)
    emulator = find_emulator("aarch64")
    assert emulator is not None
    port = free_port()
    server = start_rpc_server(emulator, "127.0.0.1", port)
    db = tmp_path / "db"
    try:
        tuned = nndeploy(
            "tune", plan, "--rpc", f"127.0.0.1:{port}", "--device", "camera", "--budget", "1s",
            "--trials-per-task", "4", "--db", db,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
    assert tuned.returncode == 0, tuned.stderr
    assert "4 trials measured" in tuned.stdout
    (folder,) = [p for p in db.iterdir() if p.is_dir()]
    assert folder.name.startswith("llvm-cortex-a76-")  # the device's own target, not this machine's
    assert sum(tuning_db.trials_per_workload(folder).values()) == 4

    build = tmp_path / "build"
    done = nndeploy("compile", plan, "-o", build, "--db", db)
    assert done.returncode == 0, done.stderr
    options = json.loads((build / "manifest.json").read_text())["stages"][0]["artifact"]["options"]
    assert options["pipeline"] == "llvm-metaschedule"
    assert options["schedules"]["tuned"] >= 1
    verified = nndeploy("verify", build, "--samples", "1")
    assert verified.returncode == 0, verified.stdout + verified.stderr
