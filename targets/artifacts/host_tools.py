"""Host tools a build or the emulator needs (the aarch64 cross compiler, qemu-user, nvcc): which Debian
packages provide them, installing them with apt-get on a root Debian/Ubuntu host, and otherwise the one
exact command a user runs first."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from nndeploy.errors import HostToolError
from nndeploy.types import Device

# tool -> the Debian packages that provide it, installed with --no-install-recommends (the cross gcc only
# recommends the arm64 libc headers and crt files that linking a shared library needs)
PACKAGES: dict[str, tuple[str, ...]] = {
    "aarch64-linux-gnu-gcc": ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
    "qemu-aarch64-static": ("qemu-user-static",),
}
NVCC_HINT = (
    "the CUDA build needs nvcc: install the CUDA toolkit (Debian/Ubuntu: apt-get install "
    "nvidia-cuda-toolkit, or cuda-toolkit from NVIDIA's apt repository) and put its bin/ on PATH"
)
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}  # apt-get asks nothing


def run_command(cmd: Sequence[str], what: str, timeout: float = 1800, **kwargs: Any) -> str:
    """Run `cmd`, returning its stdout; a failure is one HostToolError line with the tool's own error."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise HostToolError(f"{what} failed: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise HostToolError(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))]
        raise HostToolError(f"{what} failed ({' '.join(cmd[:3])} ...): {(errors or lines)[-1].strip()}")
    return proc.stdout


def cross_compiler(target: dict[str, Any], device: Device) -> str | None:
    """The C compiler that links a library for `target` (a TVM target dict) when its triple is not this
    machine's; None when the native compiler does."""
    triple = str(target.get("mtriple", ""))
    if not triple or triple.startswith(platform.machine()):
        return None
    return (device.cross_compile or {}).get("cc") or f"{triple}-gcc"


def packages_of(tool: str, device: Device | None = None) -> tuple[str, ...]:
    """The Debian packages that provide `tool` (the device profile's `debian_package` for compilers this
    module does not know)."""
    if tool in PACKAGES:
        return PACKAGES[tool]
    named = str((device.cross_compile or {}).get("debian_package") or "") if device else ""
    return tuple(named.split()) or (f"gcc-{tool.removesuffix('-gcc')}",)


def apt_command(packages: Sequence[str], update: bool = True) -> str:
    """The one shell line, run as root, that installs `packages`."""
    install = f"apt-get install -y --no-install-recommends {' '.join(packages)}"
    return f"apt-get update && {install}" if update else install


def can_install() -> bool:
    """Whether this process may install Debian packages itself (root, with apt-get and dpkg)."""
    return os.geteuid() == 0 and bool(shutil.which("apt-get") and shutil.which("dpkg"))


def _lists_know(packages: Sequence[str]) -> bool:
    probe = ["apt-cache", "show", "--no-all-versions", *packages]
    return subprocess.run(probe, capture_output=True).returncode == 0


def install_packages(packages: Sequence[str], why: str, log: Callable[[str], None]) -> None:
    """Install `packages` with apt-get (running `apt-get update` first when the package lists lack them),
    logging one line; raises HostToolError with the exact command when this host cannot do it."""
    if not can_install():
        how = "as root" if shutil.which("apt-get") else "on a Debian/Ubuntu host, as root"
        raise HostToolError(f"{why} needs {' '.join(packages)}; run {how}: {apt_command(packages)}")
    update = not _lists_know(packages)
    log(f"{why}: installing {' '.join(packages)} ({apt_command(packages, update)})")
    env = {**os.environ, **APT_ENV}
    try:
        if update:
            run_command(["apt-get", "update"], "apt-get update", env=env)
        install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        run_command(install, "apt-get install", env=env)
    except HostToolError as exc:
        raise HostToolError(f"{why}: {exc}; run as root: {apt_command(packages)}") from None


def ensure_cross_compiler(device: Device, log: Callable[[str], None]) -> None:
    """Install `device`'s cross compiler (a CUDA device's: its host target's) if it is missing and this host
    can, logging one line; raises HostToolError with the exact command when it cannot."""
    cuda = device.tvm_target.get("kind") == "cuda"
    tool = cross_compiler(dict(device.tvm_target.get("host") or {}) if cuda else device.tvm_target, device)
    if tool is None or shutil.which(tool) is not None:
        return
    packages = packages_of(tool, device)
    install_packages(packages, f"device '{device.name}' needs the cross compiler {tool}", log)
    if shutil.which(tool) is None:
        raise HostToolError(f"{tool} is still not on PATH after installing {' '.join(packages)}")
