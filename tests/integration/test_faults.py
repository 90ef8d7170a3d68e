"""Faults under load, against real processes on loopback: a stage worker stopped past the deadline, the
endpoint restarted while the stages keep running, a corrupted artifact at a worker's restart, and Ray's
head gone under `serve`. Every request sent ends in exactly one answer or one gRPC error with a proper
code, no answer differs from onnxruntime, and nothing is left running. Loads are bounded in count and time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli import nndeploy

from nndeploy.oracle import run_model
from nndeploy.runtime.chain import free_ports

from conftest import plan_and_compile, servers
from models import conv_residual_model

pytestmark = pytest.mark.slow

# Links as fast as loopback, so the planner splits the model over every server.
CLUSTER = servers(3, profile="x86-avx2-server", gbps=4000.0, latency_ms=1e-4)
BENCH = re.compile(r"(\d+)/(\d+) ok, (\d+) failed(?: \(([^)]*)\))?")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model path, build dir) of a small conv model compiled over CLUSTER in two or more stages."""
    return plan_and_compile(conv_residual_model(64), CLUSTER, tmp_path_factory.mktemp("faults"), "faults")


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nndeploy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


class Chain:
    """`nndeploy worker` per stage and `nndeploy endpoint`, one process each (the Kubernetes layout)."""

    def __init__(self, build_dir: Path) -> None:
        self.build_dir = build_dir
        stages = len(json.loads((build_dir / "manifest.json").read_text())["stages"])
        *self.ports, self.endpoint_port = free_ports(stages + 1)
        self.address = f"127.0.0.1:{self.endpoint_port}"
        self.workers = [self.start_worker(i) for i in range(stages)]
        self.endpoint = self.start_endpoint()
        assert self.wait_serving(60), "the chain did not come up"

    def start_worker(self, index: int) -> subprocess.Popen[str]:
        downstream = (
            ["--downstream", f"127.0.0.1:{self.ports[index + 1]}"] if index + 1 < len(self.ports) else []
        )
        return _start(
            "worker",
            str(self.build_dir),
            "--stage",
            str(index),
            "--port",
            str(self.ports[index]),
            *downstream,
        )

    def start_endpoint(self) -> subprocess.Popen[str]:
        stages = [arg for port in self.ports for arg in ("--stage", f"127.0.0.1:{port}")]
        return _start(
            "endpoint", str(self.build_dir), *stages, "--port", str(self.endpoint_port), "--metrics-port", "0"
        )

    def wait_serving(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if nndeploy("infer", self.address).returncode == 0:
                return True
            time.sleep(1)
        return False

    def stop(self) -> None:
        for process in [self.endpoint, *self.workers]:
            _stop(process)


@pytest.fixture
def chain(build: tuple[Path, Path]) -> Iterator[Chain]:
    running = Chain(build[1])
    yield running
    running.stop()
    assert all(p.poll() is not None for p in [running.endpoint, *running.workers])


def bench(address: str, *args: str, limit_s: float = 120) -> tuple[int, int, str, float]:
    """(ok, failed, failure codes, seconds) of one bounded `nndeploy bench` run; sent == ok + failed."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "nndeploy", "bench", address, *args],
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    match = BENCH.search(done.stdout)
    assert match, done.stdout + done.stderr
    ok, sent, failed = int(match.group(1)), int(match.group(2)), int(match.group(3))
    assert ok + failed == sent
    return ok, failed, match.group(4) or "", time.monotonic() - started


def check_answer(address: str, model: Path, tmp_path: Path, side: int = 64) -> None:
    """One request with a known input: the answer matches onnxruntime on the whole model."""
    x = np.random.default_rng(3).standard_normal((1, 3, side, side)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = nndeploy("infer", address, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "y.npz", allow_pickle=False) as got:
        assert np.abs(got["y"] - run_model(str(model), {"x": x})["y"]).max() < 1e-4


def test_a_stage_stopped_past_the_deadline_times_requests_out_then_resumes(
    chain: Chain, build: tuple[Path, Path], tmp_path: Path
) -> None:
    os.kill(chain.workers[-1].pid, signal.SIGSTOP)
    try:
        ok, failed, codes, seconds = bench(
            chain.address, "--concurrency", "4", "--requests", "12", "--timeout", "2"
        )
    finally:
        os.kill(chain.workers[-1].pid, signal.SIGCONT)
    assert ok == 0 and failed == 12
    assert set(re.findall(r"([A-Z_]+) x\d+", codes)) <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, codes
    assert seconds < 60  # nothing hung on the stopped stage
    resumed = time.monotonic()
    assert chain.wait_serving(30)
    recovered = time.monotonic() - resumed
    print(f"SIGSTOP: 12 sent, 0 ok, 12 failed ({codes}); serving {recovered:.1f} s after SIGCONT")
    check_answer(chain.address, build[0], tmp_path)


def test_the_endpoint_restarts_while_the_stages_keep_running(
    chain: Chain, build: tuple[Path, Path], tmp_path: Path
) -> None:
    workers = [w.pid for w in chain.workers]
    command = [sys.executable, "-m", "nndeploy", "bench", chain.address, "--concurrency", "4"]
    load = subprocess.Popen(
        [*command, "--duration", "12s", "--timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    os.killpg(chain.endpoint.pid, signal.SIGKILL)  # the endpoint dies under load
    chain.endpoint.wait(timeout=30)
    restarted = time.monotonic()
    chain.endpoint = chain.start_endpoint()
    assert chain.wait_serving(60)
    recovery = time.monotonic() - restarted
    out, err = load.communicate(timeout=120)
    match = BENCH.search(out)
    assert match, out + err
    ok, sent, failed = int(match.group(1)), int(match.group(2)), int(match.group(3))
    assert ok + failed == sent and ok > 0
    assert set(re.findall(r"([A-Z_]+) x\d+", match.group(4) or "")) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    print(
        f"endpoint restart under load: {sent} sent, {ok} ok, {failed} failed ({match.group(4)}); "
        f"serving {recovery:.1f} s after the restart"
    )
    assert [w.pid for w in chain.workers] == workers and all(w.poll() is None for w in chain.workers)
    ok, failed, codes, _ = bench(chain.address, "--concurrency", "4", "--requests", "20")
    assert (ok, failed) == (20, 0), codes
    check_answer(chain.address, build[0], tmp_path)


def _segments(pids: list[int]) -> list[str]:
    """The shared-memory segments (runtime.shm) that the processes `pids` created and that still exist."""
    return [p.name for p in Path("/dev/shm").glob("nndeploy-*") if int(p.name.split("-")[2]) in pids]


@pytest.fixture(scope="module")
def large_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """As `build`, with tensors of 192 KiB: over runtime.shm.MIN_BYTES, so they go through shared memory."""
    return plan_and_compile(conv_residual_model(128), CLUSTER, tmp_path_factory.mktemp("shm"), "shm")


def test_a_worker_killed_mid_request_leaves_no_shared_segment(
    large_build: tuple[Path, Path], tmp_path: Path
) -> None:
    chain = Chain(large_build[1])
    try:
        _kill_a_worker_mid_request(chain, large_build[0], tmp_path)
    finally:
        chain.stop()


def _kill_a_worker_mid_request(chain: Chain, model: Path, tmp_path: Path) -> None:
    first = chain.workers[0].pid
    command = [sys.executable, "-m", "nndeploy", "bench", chain.address, "--concurrency", "4"]
    load = subprocess.Popen(
        [*command, "--duration", "8s", "--timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    # Stages on one host hand tensors over in shared memory: stage 0 holds segments for stage 1.
    assert _segments([first]), "stage 0 sent nothing through shared memory"
    os.killpg(first, signal.SIGKILL)  # no chance to unlink its segments
    chain.workers[0].wait(timeout=30)
    out, err = load.communicate(timeout=120)
    match = BENCH.search(out)
    assert match, out + err
    assert set(re.findall(r"([A-Z_]+) x\d+", match.group(4) or "")) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    chain.workers[0] = chain.start_worker(0)  # starting, it removes what the dead one left
    assert chain.wait_serving(60)
    assert _segments([first]) == []
    ok, failed, codes, _ = bench(chain.address, "--concurrency", "4", "--requests", "20")
    assert (ok, failed) == (20, 0), codes
    check_answer(chain.address, model, tmp_path, side=128)
    pids = [w.pid for w in [chain.endpoint, *chain.workers]]
    chain.stop()  # stopped cleanly, every process unlinks its own
    assert _segments(pids) == []


def test_a_corrupted_artifact_is_refused_at_restart_and_no_answer_is_served(
    build: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "build"
    shutil.copytree(build[1], copy)
    running = Chain(copy)
    try:
        last = len(running.workers) - 1
        manifest = json.loads((copy / "manifest.json").read_text())
        library = copy / manifest["stages"][last]["artifact"]["path"]
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))
        os.killpg(running.workers[last].pid, signal.SIGKILL)
        running.workers[last].wait(timeout=30)
        running.workers[last] = running.start_worker(last)
        _, err = running.workers[last].communicate(timeout=120)
        assert running.workers[last].returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "sha256" in lines[0], err
        ok, failed, codes, _ = bench(
            running.address, "--concurrency", "2", "--requests", "6", "--timeout", "10"
        )
        assert ok == 0 and failed == 6 and set(re.findall(r"([A-Z_]+) x\d+", codes)) == {"UNAVAILABLE"}, codes
    finally:
        running.stop()


def _session_processes(session: int) -> list[int]:
    """Live processes of a session (everything `serve` and Ray started under it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def test_serve_exits_in_one_line_when_rays_head_is_gone(build: tuple[Path, Path]) -> None:
    port, metrics = free_ports(2)
    serve = _start("serve", str(build[1]), "--port", str(port), "--metrics-port", str(metrics), "--no-http")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and nndeploy("infer", f"127.0.0.1:{port}").returncode != 0:
            assert serve.poll() is None, serve.communicate()
            time.sleep(1)
        heads = [
            pid
            for pid in _session_processes(serve.pid)
            if "gcs_server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert heads, "no Ray GCS process under serve"
        command = [sys.executable, "-m", "nndeploy", "bench", f"127.0.0.1:{port}", "--concurrency", "4"]
        load = subprocess.Popen(
            [*command, "--duration", "25s", "--timeout", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        killed = time.monotonic()
        for pid in heads:
            os.kill(pid, signal.SIGKILL)
        out, err = serve.communicate(timeout=120)
        exited = time.monotonic() - killed
        load_out, load_err = load.communicate(timeout=120)
        match = BENCH.search(load_out)
        assert match, load_out + load_err
        ok, sent, failed = int(match.group(1)), int(match.group(2)), int(match.group(3))
        assert ok + failed == sent and ok > 0
        codes = {code: int(n) for code, n in re.findall(r"([A-Z_]+) x(\d+)", match.group(4) or "")}
        assert set(codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}, load_out
        # The endpoint answers UNAVAILABLE once it closes; only calls gRPC had taken in but not yet handed
        # to it when its server stopped are cut (CANCELLED): at most the requests in flight then.
        assert codes.get("CANCELLED", 0) <= 4, load_out
        print(
            f"Ray head gone under load: serve exited {exited:.1f} s later; "
            f"{sent} sent, {ok} ok, {failed} failed ({match.group(4)})"
        )
        assert serve.returncode == 2, out + err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Ray" in errors[0], err
        assert "Traceback" not in out + err
        deadline = time.monotonic() + 30
        while _session_processes(serve.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _session_processes(serve.pid), "processes left behind"
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for pid in _session_processes(serve.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_corrupted_artifact_under_ray_is_reported_and_no_answer_is_served(
    build: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil
    import threading

    copy = tmp_path / "build"
    shutil.copytree(build[1], copy)
    port, metrics = free_ports(2)
    serve = _start("serve", str(copy), "--port", str(port), "--metrics-port", str(metrics), "--no-http")
    lines: dict[str, list[str]] = {"out": [], "err": []}

    def collect(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    readers = [
        threading.Thread(target=collect, args=(serve.stdout, lines["out"]), daemon=True),
        threading.Thread(target=collect, args=(serve.stderr, lines["err"]), daemon=True),
    ]
    for reader in readers:
        reader.start()
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and nndeploy("infer", address).returncode != 0:
            assert serve.poll() is None, "".join(lines["out"] + lines["err"])
            time.sleep(1)
        pids = [
            int(m.group(1))
            for line in lines["out"]
            if (m := re.match(r"\s*│\s*\d+\s*│\s*\S+\s*│\s*\S+\s*│\s*(\d+)\s*│", line))
        ]
        assert len(pids) >= 2, "".join(lines["out"])
        manifest = json.loads((copy / "manifest.json").read_text())
        library = copy / manifest["stages"][-1]["artifact"]["path"]
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))
        os.kill(pids[-1], signal.SIGKILL)  # Ray restarts the worker, which finds its artifact changed
        killed = time.monotonic()
        reported = ""
        while time.monotonic() - killed < 90 and not reported:
            reported = next((line for line in lines["err"] if "cannot restart" in line), "")
            time.sleep(1)
        assert reported and "sha256" in reported, "".join(lines["err"])
        print(f"corrupted artifact under Ray: reported {time.monotonic() - killed:.1f} s after the kill")
        ok, failed, codes, _ = bench(address, "--concurrency", "2", "--requests", "6", "--timeout", "10")
        assert ok == 0 and failed == 6 and set(re.findall(r"([A-Z_]+) x\d+", codes)) == {"UNAVAILABLE"}, codes
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
    assert serve.returncode == 0, "".join(lines["out"] + lines["err"])
