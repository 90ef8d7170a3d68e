"""Host tools a build needs: the cross compiler is installed by `compile` where it can be (root, apt), and
otherwise its stages fail with the one exact command to run."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import onnx
import pytest
from test_cli import nndeploy

from nndeploy.errors import HostToolError
from nndeploy.targets.artifacts import host_tools
from nndeploy.targets.devices.registry import device_from_profile, load_profiles

from models import conv_model

REAL_CROSS = Path("/usr/bin/aarch64-linux-gnu-gcc")
PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
INSTALL = f"apt-get install -y --no-install-recommends {PACKAGES}"


def _device(profile: str):
    return device_from_profile(load_profiles()[profile], "camera")


def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_cross_compiler_is_needed_only_off_this_machine_s_triple() -> None:
    pi, server = _device("raspberry-pi-5"), _device("x86-avx512-server")
    assert host_tools.cross_compiler(pi.tvm_target, pi) == "aarch64-linux-gnu-gcc"
    assert host_tools.cross_compiler(server.tvm_target, server) is None
    assert host_tools.packages_of("aarch64-linux-gnu-gcc") == (
        "gcc-aarch64-linux-gnu",
        "libc6-dev-arm64-cross",
    )


def test_without_root_the_error_is_the_exact_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cross compiler, no apt-get
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    lines: list[str] = []
    with pytest.raises(HostToolError) as info:
        host_tools.ensure_cross_compiler(_device("raspberry-pi-5"), lines.append)
    message = str(info.value)
    assert "\n" not in message and lines == []
    assert message.endswith(f"run on a Debian/Ubuntu host, as root: apt-get update && {INSTALL}"), message
    _script(tmp_path, "apt-get", "exit 0")
    _script(tmp_path, "dpkg", "exit 0")
    with pytest.raises(HostToolError, match=r"run as root: apt-get update && apt-get install -y"):
        host_tools.ensure_cross_compiler(_device("raspberry-pi-5"), lines.append)
    assert lines == []  # nothing was attempted


def test_a_failing_apt_get_names_its_error_and_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _script(tmp_path, "apt-get", 'echo "E: Unable to locate package $5" >&2; exit 100')
    _script(tmp_path, "apt-cache", "exit 0")
    _script(tmp_path, "dpkg", "exit 0")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    lines: list[str] = []
    with pytest.raises(HostToolError) as info:
        host_tools.ensure_cross_compiler(_device("raspberry-pi-5"), lines.append)
    assert "E: Unable to locate package" in str(info.value)
    assert str(info.value).endswith(f"run as root: apt-get update && {INSTALL}")
    assert len(lines) == 1 and "installing gcc-aarch64-linux-gnu libc6-dev-arm64-cross" in lines[0]


def test_devices_this_machine_builds_natively_need_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    lines: list[str] = []
    host_tools.ensure_cross_compiler(_device("x86-avx512-server"), lines.append)
    host_tools.ensure_cross_compiler(_device("nvidia-t4"), lines.append)  # x86-64 host code
    assert lines == []


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CROSS.exists() or sys.platform != "linux", reason="needs the aarch64 cross gcc")
def test_compile_installs_a_missing_cross_compiler_and_builds(tmp_path: Path) -> None:
    """`nndeploy compile` on a host whose PATH has no aarch64 gcc: it runs apt-get (here a stand-in that
    records its arguments and then provides the compiler), says so in one line, and the stage builds."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "apt.log"
    _script(fake, "apt-cache", "exit 100")  # the package lists lack it: apt-get update comes first
    _script(fake, "dpkg", "exit 0")
    _script(
        fake,
        "apt-get",
        f'echo "$*" >> {log}\n'
        f'if [ "$1" = install ]; then\n'
        f"  printf '#!/bin/sh\\nexec {REAL_CROSS} \"$@\"\\n' > {fake}/aarch64-linux-gnu-gcc\n"
        f"  /bin/chmod +x {fake}/aarch64-linux-gnu-gcc\nfi",
    )
    model = tmp_path / "m.onnx"
    onnx.save(conv_model(), model)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("devices:\n  - name: camera\n    profile: raspberry-pi-5\n")
    env = {"PATH": str(fake), "NNDEPLOY_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "300"}
    planned = nndeploy("plan", model, "--cluster", cluster, "-o", tmp_path / "plan.json", env=env)
    assert planned.returncode == 0, planned.stderr
    built = nndeploy("compile", tmp_path / "plan.json", "-o", tmp_path / "build", env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert log.read_text().splitlines() == ["update", INSTALL.removeprefix("apt-get ")]
    said = [line for line in built.stdout.splitlines() if "installing" in line]
    assert len(said) == 1 and "device 'camera'" in said[0] and "aarch64-linux-gnu-gcc" in said[0]
    assert (tmp_path / "build" / "stage_0.so").stat().st_size > 0
    assert shutil.which("aarch64-linux-gnu-gcc", path=str(fake))
