"""serve on a real multi-node Ray cluster: three hosts (network namespaces) on one switch
(benchmarks/hosts.py), the edge's link shaped to Wi-Fi speed (100 Mbit/s). Ray's head runs on a host with
no device; the edge and the server each join it declaring their device. `nndeploy serve --address` runs on
the edge (where requests arrive), the Triton client too.

Proven here: each stage's worker runs on the host that declares its device (its process is in that host's
namespace, Ray's actor table puts it on that host's node, and it listens on that host's address); results
match onnxruntime; tensors go edge -> server -> edge without passing through the head (its link counts a
few KiB of control traffic against the tensors' hundreds); with `serve --tls-dir` the same hops run over
mutual TLS with certificates that do not name the hosts' addresses, and a plaintext peer is refused; losing
the whole server (raylet, workers) fails
requests in flight with UNAVAILABLE within the deadline, serve says which device is gone, and when the
server joins again the stage restarts there and requests succeed; losing the head stops serve with one
line (exit 2). Nothing is left afterwards: no namespace, no process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hosts import Hosts, RayNodes, leftovers, unavailable
from multi_host import DEVICES, Serving
from multi_host import build as build_camera
from test_cli import nndeploy

from nndeploy.oracle import run_model

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "-"),
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="needs tritonclient"),
]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The camera model planned on edge + server (100 Mbit/s) and compiled: (model, build, plan)."""
    model, build_dir, plan = build_camera(tmp_path_factory.mktemp("multi-host"))
    assert [s["device"] for s in plan["stages"]] == ["edge", "server"], plan["stages"]
    return model, build_dir, plan


ACTORS = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray._private import state
    ray.init(address=sys.argv[1], log_to_driver=False)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    actors = {a["Name"]: nodes.get(a["Address"]["NodeID"], "?") for a in state.actors().values()
              if a["Name"].startswith("nndeploy-stage-") and a["State"] == "ALIVE"}
    print(json.dumps(actors))
    """
)

CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    address, inputs_path, outputs_path, count, timeout_s = sys.argv[1:6]
    client = grpcclient.InferenceServerClient(address)
    x = np.load(inputs_path)
    codes, seconds, y = [], [], None
    for _ in range(int(count)):
        item = grpcclient.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        started = time.monotonic()
        try:
            y = client.infer("camera", [item], client_timeout=float(timeout_s)).as_numpy("y")
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(str(exc.status()).rsplit(".", 1)[-1])
        seconds.append(time.monotonic() - started)
    if y is not None:
        np.save(outputs_path, y)
    print(json.dumps({"codes": codes, "seconds": seconds}))
    """
)


PLAINTEXT = textwrap.dedent(
    """
    import sys, grpc
    from nndeploy.proto import stage_pb2, stage_pb2_grpc
    with grpc.insecure_channel(sys.argv[1]) as channel:
        try:
            stage_pb2_grpc.StageWorkerStub(channel).Stats(stage_pb2.StatsRequest(), timeout=5)
            print("ANSWERED")
        except grpc.RpcError as exc:
            print(exc.code().name)
    """
)


def run_client(net: Hosts, ray: RayNodes, serving: Serving, folder: Path, count: int, timeout_s: float):
    """The Triton client on the edge: `count` requests; returns its report (and starts no sooner)."""
    (folder / "client.py").write_text(CLIENT)
    args = [sys.executable, str(folder / "client.py"), serving.address, str(folder / "x.npy")]
    args += [str(folder / "y.npy"), str(count), str(timeout_s)]
    return subprocess.Popen(net.command("edge", args), env=ray.env, stdout=subprocess.PIPE, text=True)


def link_bytes(net: Hosts, host: str) -> int:
    """Bytes received plus sent on `host`'s link so far."""
    done = subprocess.run(net.command(host, ["cat", "/proc/net/dev"]), capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.strip().startswith("eth0:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0]) + int(fields[8])
    raise AssertionError(f"no eth0 on {host}")


def test_stages_run_on_their_devices_hosts_and_survive_losing_one(
    build: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    model, build_dir, _ = build
    x = np.random.default_rng(3).standard_normal((1, 3, 128, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "actors.py").write_text(ACTORS)
    try:
        with (
            Hosts(["head", "edge", "server"], shaped={"edge": "100mbit"}) as net,
            RayNodes(net, "head", {"head": {}, **DEVICES}, deferred=("server",)) as ray,
        ):
            # 0. No node has the server yet: one line naming it and the command that adds it, exit 2.
            args = [sys.executable, "-m", "nndeploy", "serve", str(build_dir), "--address", ray.address]
            refused = subprocess.run(
                net.command("edge", [*args, "--no-http"]),
                env=ray.env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert refused.returncode == 2, refused.stdout + refused.stderr
            said = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
            assert len(said) == 1 and "device(s) server" in said[0], refused.stderr
            assert "Traceback" not in refused.stderr
            assert (
                f"ray start --address {ray.address} --resources '{{\"nndeploy-device-server\": 1}}'"
                in said[0]
            )
            assert not _stage_workers(net, "edge")  # nothing left running
            ray.start("server")
            # The link as `profile --links` measures it between the two devices' nodes: the shaped 100 Mbit/s.
            measured = build_dir.parent / "measured"
            probe = [sys.executable, "-m", "nndeploy", "profile", "--links", "--address", ray.address]
            probe += ["--cluster", str(build_dir.parent / "cluster.yaml"), "-o", str(measured)]
            done = subprocess.run(net.command("edge", probe), env=ray.env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            (link,) = yaml.safe_load((measured / "cluster.yaml").read_text())["links"]
            assert link["between"] == ["edge", "server"] and 0.07 < link["gbps"] < 0.11, link
            assert 0 < link["latency_ms"] < 5, link
            serving = Serving(net, ray, build_dir)
            try:
                edge_pid, server_pid = serving.pids
                # 1. Placement: the process, Ray's node, and the address it listens on.
                assert edge_pid in net.pids("edge") and server_pid in net.pids("server")
                probe = net.command("edge", [sys.executable, str(tmp_path / "actors.py"), ray.address])
                placed = json.loads(
                    subprocess.run(probe, env=ray.env, capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                assert placed == {
                    "nndeploy-stage-0": net.hosts["edge"].address,
                    "nndeploy-stage-1": net.hosts["server"].address,
                }
                listening = subprocess.run(
                    net.command("server", ["ss", "-ltnpH"]), capture_output=True, text=True
                ).stdout
                assert re.search(
                    rf"{re.escape(net.hosts['server'].address)}:\d+ .*pid={server_pid},", listening
                )

                # 2. Results over the hosts, and the head's link carries no tensors.
                head_before = link_bytes(net, "head")
                done = run_client(net, ray, serving, tmp_path, 5, 30.0)
                report = json.loads(done.communicate(timeout=120)[0].strip().splitlines()[-1])
                assert report["codes"] == ["OK"] * 5
                expected = run_model(str(model), {"x": x})["y"]
                assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-3
                head_traffic = link_bytes(net, "head") - head_before
                assert head_traffic < 5 * x.nbytes / 4, head_traffic

                # 3. Mutual TLS between the stages, from one folder every host sees: certificates that do
                # not name the hosts' addresses, verified by their DNS name instead. Serve again with it.
                certs = tmp_path / "certs"
                made = nndeploy("certs", "make", "--stages", "2", "-o", certs)
                assert made.returncode == 0, made.stderr
                plain = serving.pids
                serving.stop()
                deadline = time.monotonic() + 30  # the fixed stage ports are free once the workers are gone
                while any(_alive(pid) for pid in plain) and time.monotonic() < deadline:
                    time.sleep(0.5)
                serving = Serving(net, ray, build_dir, extra=("--tls-dir", str(certs)))
                done = run_client(net, ray, serving, tmp_path, 3, 30.0)
                report = json.loads(done.communicate(timeout=120)[0].strip().splitlines()[-1])
                assert report["codes"] == ["OK"] * 3
                assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-3
                listening = subprocess.run(
                    net.command("server", ["ss", "-ltnpH"]), capture_output=True, text=True
                ).stdout
                server_port = re.search(
                    # (gRPC's TLS server shows as [::ffff:ADDRESS]:PORT)
                    rf"{re.escape(net.hosts['server'].address)}\]?:(\d+) .*pid={serving.pids[1]},",
                    listening,
                )
                assert server_port, listening
                plaintext = [sys.executable, "-c", PLAINTEXT, f"{net.hosts['server'].address}:"]
                plaintext[-1] += server_port.group(1)
                refused = subprocess.run(net.command("edge", plaintext), capture_output=True, text=True)
                assert refused.stdout.strip() == "UNAVAILABLE", refused.stdout + refused.stderr

                # 4. The server host goes down mid-load: requests fail fast, serve says which device.
                load = run_client(net, ray, serving, tmp_path, 40, 20.0)
                time.sleep(3)
                net.kill("server")
                report = json.loads(load.communicate(timeout=600)[0].strip().splitlines()[-1])
                failed = [s for c, s in zip(report["codes"], report["seconds"], strict=True) if c != "OK"]
                assert failed and set(report["codes"]) - {"OK"} <= {"UNAVAILABLE"}, report["codes"]
                assert max(failed) < 20.0  # within the deadline: no hang

                # 5. The server joins again: the stage restarts there and requests succeed.
                ray.start("server")
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    again = run_client(net, ray, serving, tmp_path, 1, 20.0)
                    codes = json.loads(again.communicate(timeout=60)[0].strip().splitlines()[-1])["codes"]
                    if codes == ["OK"]:
                        break
                    time.sleep(3)
                assert codes == ["OK"]
                assert _stage_workers(net, "server")  # the restarted stage runs on the server again

                # 6. The head is lost: serve stops everything it ran and says so in one line, exit 2.
                net.kill("head")
                assert serving.process.wait(timeout=90) == 2
                ran = [pid for host in net.hosts for pid in net.pids(host)]
            finally:
                printed = serving.stop()
            assert "stage 1 on device server stopped answering" in printed, printed
            assert "stage 1 on device server answers again" in printed, printed
            assert "cannot restart" not in printed, printed  # it could, once the server was back
            assert "Ray's head" in printed and "stopped answering" in printed, printed
    finally:
        assert leftovers() == []
    assert ran and not [pid for pid in ran if _alive(pid)]  # every process of every host is gone


def _alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _stage_workers(net: Hosts, host: str) -> list[int]:
    """The processes in `host`'s namespace that are Ray workers running a stage actor."""
    pids = []
    for pid in net.pids(host):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "StageActorImpl" in cmdline:
            pids.append(pid)
    return pids
