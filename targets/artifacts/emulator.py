"""Run cross-compiled aarch64 TVM artifacts on an x86 host under qemu user-mode emulation.

Owns the emulated environment (Debian's arm64 python3.11 plus the aarch64 wheels of TVM and numpy, cached
under ~/.cache/nndeploy/emulators/<arch>), its one-time setup, and running an artifact inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nndeploy.errors import EmulatorError
from nndeploy.targets.artifacts.host_tools import APT_ENV, PACKAGES, can_install, run_command

# arch -> (Debian architecture, qemu binaries in order of preference)
ARCHES: dict[str, tuple[str, tuple[str, ...]]] = {
    "aarch64": ("arm64", ("qemu-aarch64-static", "qemu-aarch64")),
}
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libstdc++6",
    "libgcc-s1", "libgomp1", "zlib1g", "libffi8", "libssl3", "libexpat1", "libbz2-1.0", "liblzma5",
)  # fmt: skip
# The TVM runtime for the compute; grpcio, protobuf and cryptography (with cffi) for the stage's own gRPC
# worker, which runs in the emulated python for the life of a served stage (`start_worker`).
WHEELS = (
    "apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions",
    "grpcio", "protobuf", "cryptography", "cffi",
)  # fmt: skip
# A cached emulator is stale when the host has other versions of these (or it lacks them).
PINNED = ("apache-tvm", "apache-tvm-ffi", "grpcio", "protobuf")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
MARKER = "nndeploy-emulator.json"
RUNNER = Path(__file__).parent / "emulated_runner.py"
RPC_SERVER = Path(__file__).parent / "emulated_rpc_server.py"
WORKER = Path(__file__).parent / "emulated_worker.py"
# The parts of nndeploy the emulated worker imports (pure Python), as (package, its source folder's
# files): copied into an overlay on the emulated PYTHONPATH when a worker starts.
OVERLAY = {
    "nndeploy": ("__init__.py", "errors.py"),
    "nndeploy.runtime": ("*.py",),
    "nndeploy.proto": ("*.py",),
}
_CLEAN_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "LD_LIBRARY_PATH", "LD_PRELOAD")


@dataclass(frozen=True)
class Emulator:
    """A ready emulated environment: run `qemu -L root python` with PYTHONPATH=site."""

    arch: str
    qemu: Path
    root: Path
    site: Path
    python: Path
    versions: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def _check_arch(arch: str) -> tuple[str, tuple[str, ...]]:
    if arch not in ARCHES:
        raise EmulatorError(f"cannot emulate arch {arch!r}: only {', '.join(ARCHES)} is supported")
    return ARCHES[arch]


def emulator_dir(arch: str = "aarch64") -> Path:
    """Where the environment for `arch` lives: $NNDEPLOY_CACHE_DIR/emulators/<arch>, else under
    $XDG_CACHE_HOME (default ~/.cache)/nndeploy."""
    _check_arch(arch)
    if os.environ.get("NNDEPLOY_CACHE_DIR"):
        base = Path(os.environ["NNDEPLOY_CACHE_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nndeploy"
    return base.expanduser() / "emulators" / arch


def _host_versions() -> dict[str, str]:
    versions = {}
    for dist in WHEELS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _qemu(arch: str) -> Path | None:
    found = (shutil.which(name) for name in _check_arch(arch)[1])
    return next((Path(p) for p in found if p), None)


def _lacks(tool: str) -> bool:
    return (_qemu("aarch64") if tool.startswith("qemu-") else shutil.which(tool)) is None


def find_emulator(arch: str = "aarch64") -> Emulator | None:
    """The cached environment for `arch` if it is complete, qemu is installed and it was built for the
    host's TVM and tvm-ffi versions; otherwise None."""
    folder, qemu = emulator_dir(arch), _qemu(arch)
    try:
        recorded = json.loads((folder / MARKER).read_text())["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    host = _host_versions()
    python = folder / "root" / "usr" / "bin" / "python3.11"
    if qemu is None or not python.exists() or any(recorded.get(d) != host.get(d) for d in PINNED):
        return None
    return Emulator(arch, qemu, folder / "root", folder / "site", python, dict(recorded))


def _system_needs(arch: str, need_env: bool) -> tuple[list[str], bool, bool]:
    """(Debian packages to install, whether to add the arm64 architecture, whether to run apt-get update)."""
    debarch = _check_arch(arch)[0]
    packages = [pkg for tool, pkgs in PACKAGES.items() if _lacks(tool) for pkg in pkgs]
    need_arch = need_lists = False
    if need_env and shutil.which("dpkg") and shutil.which("apt-cache"):
        archs = run_command(["dpkg", "--print-foreign-architectures"], "dpkg").split()
        need_arch = debarch not in [*archs, run_command(["dpkg", "--print-architecture"], "dpkg").strip()]
        probe = ["apt-cache", "show", "--no-all-versions", f"{DEBS[0]}:{debarch}"]
        need_lists = need_arch or subprocess.run(probe, capture_output=True).returncode != 0
    return packages, need_arch, need_lists or bool(packages)


def _apt_commands(arch: str, need_env: bool) -> list[list[str]]:
    """The dpkg/apt-get commands (run as root) that supply what `_system_needs` reports."""
    packages, need_arch, need_update = _system_needs(arch, need_env)
    commands = [["dpkg", "--add-architecture", ARCHES[arch][0]]] if need_arch else []
    commands += [["apt-get", "update"]] if need_update else []
    commands += [["apt-get", "install", "-y", "--no-install-recommends", *packages]] if packages else []
    return commands


def missing_prerequisites(arch: str = "aarch64") -> list[str]:
    """What setup_emulator would have to install or configure first, one human-readable item each
    (empty when the emulator can be set up, or is set up, without touching the system)."""
    need_env = find_emulator(arch) is None
    missing = [f"{t} (apt-get install {' '.join(p)})" for t, p in PACKAGES.items() if _lacks(t)]
    if not need_env:
        return missing
    missing += [f"{tool} (a Debian or Ubuntu host)" for tool in ("apt-get", "dpkg") if not shutil.which(tool)]
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        missing.append(f"pip for {sys.executable} ({sys.executable} -m ensurepip)")
    _, need_arch, need_lists = _system_needs(arch, need_env)
    debarch = ARCHES[arch][0]
    if need_arch:
        missing.append(f"dpkg architecture {debarch} (dpkg --add-architecture {debarch} && apt-get update)")
    elif need_lists and not missing:
        missing.append(f"apt package lists for {debarch} (apt-get update)")
    return missing


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for data in site.glob("*.data"):
        for item in [*data.glob("purelib/*"), *data.glob("platlib/*")]:
            if item.is_dir():
                shutil.copytree(item, site / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, site / item.name)
        shutil.rmtree(data)


def _build(arch: str, tmp: Path, versions: dict[str, str], log: Callable[[str], None]) -> Emulator:
    debarch, root, site = ARCHES[arch][0], tmp / "root", tmp / "site"
    (tmp / "debs").mkdir()
    log(f"emulator: downloading {len(DEBS)} Debian {debarch} packages (apt-get download)")
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    debs = [f"{p}:{debarch}" for p in DEBS]
    run_command(
        ["apt-get", "download", *sandbox, *debs], f"apt-get download of {debarch} packages", cwd=tmp / "debs"
    )
    for deb in sorted((tmp / "debs").glob("*.deb")):
        run_command(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    log(f"emulator: downloading the {arch} wheels of {', '.join(f'{d}=={v}' for d, v in versions.items())}")
    platforms = [arg for plat in WHEEL_PLATFORMS for arg in ("--platform", plat)]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    pip += ["--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp"]
    pip += ["--no-deps", "-d", str(tmp / "wheels"), *(f"{d}=={v}" for d, v in versions.items())]
    run_command(pip, "pip download of the aarch64 wheels")
    for wheel in sorted((tmp / "wheels").glob("*.whl")):
        _unpack_wheel(wheel, site)
    shutil.rmtree(tmp / "debs")
    shutil.rmtree(tmp / "wheels")
    python = root / "usr" / "bin" / "python3.11"
    if not python.exists():
        raise EmulatorError(f"setting up the {arch} emulator failed: {DEBS[0]}:{debarch} has no python3.11")
    emulator = Emulator(arch, _qemu(arch) or Path("qemu-aarch64-static"), root, site, python, versions)
    log("emulator: compiling Python files and checking that numpy and tvm import (about a minute)")
    run_in_emulator(
        emulator, ["-m", "compileall", "-q", "-j", "0", str(root / "usr/lib/python3.11"), str(site)], 1800
    )
    check = "import json, numpy, grpc, tvm.relax; print(json.dumps([numpy.__version__, grpc.__version__]))"
    proc = run_in_emulator(emulator, ["-c", check], 900)
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise EmulatorError(f"the {arch} emulator's self-check (import numpy, tvm, grpc) failed: {last}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"emulator: emulated python imports numpy {got[0]}, tvm and grpc {got[1]}")
    return emulator


def setup_emulator(arch: str = "aarch64", log: Callable[[str], None] = print) -> Emulator:
    """Make the emulated environment for `arch` ready and return it; does nothing when it already is.

    As root, installs missing host packages with apt-get and adds the Debian architecture; otherwise
    raises EmulatorError naming the command to run as root. Then downloads Debian's python3.11 and the
    wheels of the host's TVM, tvm-ffi and numpy versions, unpacks them beside the cache folder, checks
    that they import under qemu, and renames the result into place (a marker file is written last).
    """
    ready = find_emulator(arch)
    commands = _apt_commands(arch, need_env=ready is None)
    has_apt = bool(shutil.which("apt-get") and shutil.which("dpkg"))
    if commands and ready is not None and not can_install():
        log(
            f"emulator: ready; cross-compiling for {arch} also needs {', '.join(missing_prerequisites(arch))}"
        )
        return ready
    if commands and not has_apt:
        raise EmulatorError(f"the {arch} emulator needs apt-get and dpkg (a Debian or Ubuntu host)")
    if commands and os.geteuid() != 0:
        line = " && ".join(" ".join(cmd) for cmd in commands)
        raise EmulatorError(f"the {arch} emulator needs system packages; run as root: {line}")
    for cmd in commands:
        log(f"emulator: {' '.join(cmd)}")
        run_command(cmd, " ".join(cmd[:2]), env={**os.environ, **APT_ENV})
    if ready is not None:
        return ready
    final = emulator_dir(arch)
    with _locked(final.parent):
        ready = find_emulator(arch)  # another process may have finished it meanwhile
        if ready is not None:
            return ready
        for leftover in final.parent.glob(f".{arch}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-tmp-", dir=final.parent))
        try:
            versions = _host_versions()
            _build(arch, tmp, versions, log)
            (tmp / MARKER).write_text(json.dumps({"arch": arch, "versions": versions}, indent=1) + "\n")
            if final.exists():
                final.rename(tmp.with_name(f".{arch}-stale-{tmp.name}"))
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for leftover in final.parent.glob(f".{arch}-stale-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    ready = find_emulator(arch)
    if ready is None:
        raise EmulatorError(f"the {arch} emulator in {final} is incomplete after setup; remove it and retry")
    log(f"emulator: ready in {final}")
    return ready


def _python_command(emulator: Emulator, path: str) -> tuple[list[str], dict[str, str]]:
    """qemu's command line up to the emulated python (its PYTHONPATH `path`), and the host environment
    without the variables that would point the emulated python at the host's libraries."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN_ENV}
    return [str(emulator.qemu), "-L", str(emulator.root), "-E", f"PYTHONPATH={path}"], env


def run_in_emulator(
    emulator: Emulator, args: Sequence[str], timeout: float, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the emulated python with `args` (e.g. a script and its arguments); output is captured."""
    cmd, env = _python_command(emulator, str(emulator.site))
    env.update(PYTHONNOUSERSITE="1", PYTHONPATH=str(emulator.site))
    try:
        return subprocess.run(
            [*cmd, str(emulator.python), *map(str, args)],
            capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        what = " ".join(map(str, args))[:120]
        raise EmulatorError(
            f"the {emulator.arch} emulator timed out after {timeout:.0f} s: python {what}"
        ) from None
    except OSError as exc:
        raise EmulatorError(f"cannot start {emulator.qemu}: {exc.strerror}") from None


def start_rpc_server(emulator: Emulator, host: str, port: int, timeout: float = 300) -> subprocess.Popen[str]:
    """TVM's RPC server running under the emulator on host:port, once it listens (stop it with
    `.terminate()`); EmulatorError if it does not come up within `timeout` seconds."""
    cmd, env = _python_command(emulator, str(emulator.site))
    server = subprocess.Popen(
        [*cmd, str(emulator.python), "-P", str(RPC_SERVER), host, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    listening, last = _listening(server, timeout)
    if listening is None:
        raise EmulatorError(
            f"the RPC server under qemu-{emulator.arch} did not start on {host}:{port}: {last}"
        )
    return server


def _listening(process: subprocess.Popen[str], timeout: float) -> tuple[str | None, str]:
    """Wait for `process` to print its "listening on ..." line: (that line, "") once it does, else
    (None, its last line or why) after killing it (it exited, or `timeout` seconds passed)."""
    import select
    import time

    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        line = process.stdout.readline() if ready else ""
        if line.startswith("listening on"):
            return line, ""
        if line:
            seen.append(line.strip())
        if process.poll() is not None and not line:
            break
    process.kill()
    process.wait()
    return None, seen[-1] if seen else f"no answer in {timeout:.0f} s"


def start_worker(
    emulator: Emulator, config: dict[str, Any], timeout: float = 300
) -> tuple[subprocess.Popen[str], int]:
    """A stage's gRPC worker running in the emulated python (emulated_worker.py; `config` as it says) and
    the port it serves on, once it serves. The caller stops it with `.terminate()` and removes `.overlay`
    (the folder of nndeploy sources it imports); its further output is left on `.stdout`. EmulatorError
    with its last line if it does not come up within `timeout`."""
    import importlib.util

    overlay = Path(tempfile.mkdtemp(prefix="nndeploy-emulated-worker-"))
    for package, patterns in OVERLAY.items():
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        source = Path(next(iter(spec.submodule_search_locations)))
        target = overlay.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for file in source.glob(pattern):
                shutil.copy2(file, target / file.name)
    (overlay / "config.json").write_text(json.dumps(config))
    cmd, env = _python_command(emulator, f"{emulator.site}:{overlay}")
    worker = subprocess.Popen(
        [*cmd, str(emulator.python), str(WORKER), str(overlay / "config.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    worker.overlay = overlay  # type: ignore[attr-defined]
    listening, last = _listening(worker, timeout)
    if listening is None:
        shutil.rmtree(overlay, ignore_errors=True)
        raise EmulatorError(f"the stage worker under qemu-{emulator.arch} did not start: {last}")
    return worker, int(listening.split()[-1])


def run_artifact_emulated(
    emulator: Emulator,
    library: Path,
    inputs: dict[str, np.ndarray],
    input_order: list[str],
    output_names: list[str],
    repeats: int = 0,
    timeout: float = 600,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Run a cross-compiled Relax VM library's `main` under the emulator: returns the outputs by name
    and, when `repeats` > 0, that many per-run latencies in milliseconds (emulated, so only relative)."""
    library = Path(library).resolve()
    if not library.is_file():
        raise EmulatorError(f"artifact library not found: {library}")
    absent = [name for name in input_order if name not in inputs]
    if absent:
        raise EmulatorError(f"inputs missing for {library.name}: {', '.join(absent)}")
    with tempfile.TemporaryDirectory(prefix="nndeploy-emulated-") as folder:
        keys = [f"in{i}" for i in range(len(input_order))]  # positional keys: names may hold any character
        np.savez(
            Path(folder) / "inputs.npz",
            **{k: np.asarray(inputs[n]) for k, n in zip(keys, input_order, strict=True)},
        )
        out = Path(folder) / "outputs.npz"
        args = ["-P", RUNNER, library, Path(folder) / "inputs.npz", out, ",".join(keys), int(repeats)]
        proc = run_in_emulator(emulator, args, timeout, cwd=folder)
        if proc.returncode != 0 or not out.exists():
            last = ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"])[
                -1
            ]
            raise EmulatorError(f"running {library.name} under qemu-{emulator.arch} failed: {last}")
        with np.load(out, allow_pickle=False) as data:
            produced = sorted((k for k in data.files if k.startswith("out")), key=lambda k: int(k[3:]))
            if len(produced) != len(output_names):
                got, want = len(produced), len(output_names)
                raise EmulatorError(f"{library.name} returned {got} outputs under emulation, expected {want}")
            outputs = {name: data[key] for name, key in zip(output_names, produced, strict=True)}
            latencies = [float(t) for t in data["latency_ms"]] if "latency_ms" in data.files else []
    return outputs, latencies
