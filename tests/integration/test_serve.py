"""serve as a user runs it: real Ray, real gRPC workers, the KServe v2 endpoint driven by the Triton client.

The Triton client runs in its own process (its generated protos clash with the project's in one process).
Every server started here is stopped by the fixture's finalizer, and the test checks nothing is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_user_error, nndeploy

from nndeploy.oracle import run_model

from conftest import plan_and_compile, servers
from models import conv_residual_model, conv_stack_model

# Checked without importing it: tritonclient's protos clash with the project's in one process.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="needs tritonclient"),
]

# Links as fast as loopback, so the planner splits even this small model over several workers.
CLUSTER = servers(3, profile="x86-avx2-server", gbps=4000.0, latency_ms=1e-4)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2+ stage x86 build of a conv model with a 4.7 MiB input; returns (model path, build dir)."""
    return plan_and_compile(conv_residual_model(640), CLUSTER, tmp_path_factory.mktemp("serve"), "big")


class Server:
    """`nndeploy serve` in a subprocess, with the stage table it printed."""

    def __init__(self, build_dir: Path, port: int, metrics_port: int, http_port: int, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nndeploy",
                "serve",
                str(build_dir),
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
                "--http-port",
                str(http_port),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.address = f"127.0.0.1:{port}"
        self.pids: list[int] = []
        self.metrics = ""
        self.http = ""
        self.output: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            self.output.append(line)
            match = re.match(r"\s*│\s*(\d+)\s*│\s*\S+\s*│\s*\S+\s*│\s*(\d+)\s*│", line)
            if match:
                self.pids.append(int(match.group(2)))
            if "Prometheus metrics on" in line:
                self.metrics = line.split(" on ", 1)[1].strip()
            if "HTTP/REST endpoint listening on" in line:
                self.http = line.split(" on ", 1)[1].split()[0]
            if "press Ctrl-C" in line:
                return
        self.stop()
        raise AssertionError("serve did not start:\n" + "".join(self.output))

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status (kills the group if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode


@pytest.fixture
def server(build: tuple[Path, Path]):
    from nndeploy.runtime.chain import free_ports

    port, metrics_port, http_port = free_ports(3)
    running = Server(build[1], port, metrics_port, http_port)
    yield running
    assert running.stop() == 0
    deadline = time.monotonic() + 20  # Ray reaps its workers asynchronously after shutdown
    while any(_alive(pid) for pid in running.pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = [pid for pid in running.pids if _alive(pid)]
    assert not survivors, f"stage workers {survivors} survived serve's shutdown"


def _alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except OSError:
        return False
    return state != "Z"


TRITON_CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    address, model, inputs_path, outputs_path, http_url = sys.argv[1:6]
    client = grpcclient.InferenceServerClient(address)
    report = {"live": client.is_server_live(), "ready": client.is_server_ready(),
              "model_ready": client.is_model_ready(model)}
    meta = client.get_model_metadata(model, as_json=True)
    report["inputs"] = meta["inputs"]
    report["index"] = client.get_model_repository_index(as_json=True).get("models", [])
    config = client.get_model_config(model, as_json=True)["config"]
    report["config"] = [config["platform"], config["input"][0]["dims"], config["parameters"]["stages"]]
    x = np.load(inputs_path)
    infer_input = grpcclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(model, [infer_input])
    np.save(outputs_path, result.as_numpy("y"))
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    report["grpc_successes"] = int(stats["inference_stats"]["success"]["count"])
    http = httpclient.InferenceServerClient(http_url.split("://", 1)[1])
    http_input = httpclient.InferInput("x", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x)
    http_y = http.infer(model, [http_input]).as_numpy("y")
    report["http_same"] = bool(np.array_equal(http_y, result.as_numpy("y")))
    http_stats = http.get_inference_statistics(model)["model_stats"][0]
    report["http_successes"] = http_stats["inference_stats"]["success"]["count"]
    report["http_config"] = http.get_model_config(model)["parameters"]["stages"]["string_value"]
    report["http_index"] = http.get_model_repository_index()
    bad = grpcclient.InferInput("x", [1, 3, 64, 64], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
    try:
        client.infer(model, [bad])
    except InferenceServerException as exc:
        report["bad_status"], report["bad_message"] = exc.status(), exc.message()
    print(json.dumps(report))
    """
)


def test_triton_client_gets_onnxruntime_results(
    server: Server, build: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = build
    x = np.random.default_rng(1).standard_normal((1, 3, 640, 640)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "client.py"
    script.write_text(TRITON_CLIENT)
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            server.address,
            "big",
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            server.http,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["1", "3", "640", "640"]}]
    assert report["index"] == [{"name": "big", "version": "1", "state": "READY"}]
    stages = str(len(server.pids))
    assert report["config"] == ["nndeploy", ["1", "3", "640", "640"], {"string_value": stages}]
    assert report["grpc_successes"] == 1 and report["http_successes"] == 2  # the HTTP request counted too
    assert report["http_same"] and report["http_config"] == stages
    assert [(m["name"], m["state"]) for m in report["http_index"]] == [(model.stem, "READY")]
    expected = run_model(str(model), {"x": x})["y"]
    got = np.load(tmp_path / "y.npy")
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    assert report["bad_status"] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': shape [1, 3, 64, 64], the model needs [1, 3, 640, 640]" in report["bad_message"]


def test_killed_worker_fails_in_flight_requests_then_recovers(server: Server, tmp_path: Path) -> None:
    assert len(server.pids) >= 2
    load = subprocess.Popen(
        # Long enough that the kill lands mid-load however fast the hops are.
        [
            sys.executable,
            "-m",
            "nndeploy",
            "bench",
            server.address,
            "--concurrency",
            "4",
            "--duration",
            "12s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    os.kill(server.pids[1], signal.SIGKILL)  # a stage worker dies mid-load
    out, err = load.communicate(timeout=240)  # no hang: every request ends, some with UNAVAILABLE
    assert load.returncode == 1  # some requests failed: bench says so in its exit status
    match = re.search(r"(\d+)/(\d+) ok, (\d+) failed \(([^)]*)\)", out)
    assert match, out + err
    assert int(match.group(3)) >= 1 and int(match.group(1)) + int(match.group(3)) == int(match.group(2))
    assert "UNAVAILABLE" in match.group(4)  # failed fast because the stage is down, not by a timeout
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Ray restarts the worker; requests succeed again
        done = nndeploy("infer", server.address)
        if done.returncode == 0:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stderr


def test_infer_bench_and_metrics(server: Server, tmp_path: Path) -> None:
    done = nndeploy("infer", server.address, "-o", tmp_path / "out.npz")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz") as outputs:
        assert outputs["y"].shape == (1, 3, 640, 640)
    bench = nndeploy(
        "bench", server.address, "--concurrency", "4", "--requests", "20", "--metrics", server.metrics
    )
    assert bench.returncode == 0, bench.stderr
    assert "20/20 ok, 0 failed" in bench.stdout
    stage_rows = [line for line in bench.stdout.splitlines() if re.match(r"\s*│\s*\d+\s*│\s*server-\d", line)]
    assert len(stage_rows) == len(server.pids)
    assert all(int(row.split("│")[3]) >= 20 for row in stage_rows)  # every stage saw every request
    assert_user_error(
        nndeploy("infer", server.address, "--model", "nope"), "NOT_FOUND", "unknown model 'nope'"
    )


def test_bench_json_counts_this_run_only_and_exits_1_on_failures(server: Server) -> None:
    import json

    nndeploy("bench", server.address, "--requests", "5")  # traffic before this run
    done = nndeploy("bench", server.address, "--requests", "6", "--json", "--metrics", server.metrics)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["requests"], figures["ok"], figures["failed"], figures["error_codes"]) == (6, 6, 0, {})
    assert figures["latency_ms"]["p50"] > 0 and figures["throughput_per_s"] > 0
    assert len(figures["stages"]) == len(server.pids)
    assert all(stage["requests"] == 6 and stage["errors"] == 0 for stage in figures["stages"])
    late = nndeploy("bench", server.address, "--requests", "4", "--timeout", "0.001", "--json")
    assert late.returncode == 1
    failed = json.loads(late.stdout)
    assert failed["failed"] == 4 and failed["error_codes"] == {"DEADLINE_EXCEEDED": 4}
    assert failed["latency_ms"]["p50"] is None
    # The endpoint's own metrics: answers by status code, latency and per-stage histograms; /metrics only.
    samples = _metric_samples(server.metrics)
    assert samples[("nndeploy_requests_total", (("code", "OK"), ("model", "big")))] >= 11
    assert samples[("nndeploy_request_duration_seconds_count", (("model", "big"),))] >= 11
    for stage in range(len(server.pids)):
        counts = [
            value
            for (name, labels), value in samples.items()
            if name == "nndeploy_stage_compute_duration_seconds_count" and ("stage", str(stage)) in labels
        ]
        assert counts and counts[0] >= 11
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.metrics.replace("/metrics", "/anything"), timeout=10)
    assert caught.value.code == 404


def _metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample at a /metrics URL."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.emulator
def test_x86_plus_emulated_aarch64_pipeline_serves_onnxruntime_results(
    example_models, tmp_path: Path
) -> None:
    from nndeploy.runtime.chain import free_ports

    plan = tmp_path / "plan.json"
    cluster = Path(__file__).resolve().parents[2] / "examples" / "clusters" / "edge-camera-server.yaml"
    assert nndeploy("plan", example_models["camera_cnn"], "--cluster", cluster, "-o", plan).returncode == 0
    devices = [s["device"] for s in json.loads(plan.read_text())["stages"]]
    assert devices == ["camera", "server"]  # aarch64 Raspberry Pi stage, then x86
    assert nndeploy("compile", plan, "-o", tmp_path / "build").returncode == 0
    running = Server(tmp_path / "build", *free_ports(3))
    try:
        x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        script = tmp_path / "client.py"
        script.write_text(
            TRITON_CLIENT.replace('"x"', '"image"')
            .replace('as_numpy("y")', 'as_numpy("probabilities")')
            .replace("[1, 3, 64, 64]", "[1, 3, 32, 32]")
            .replace("(1, 3, 64, 64)", "(1, 3, 32, 32)")
        )
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                running.address,
                "camera_cnn",
                str(tmp_path / "x.npy"),
                str(tmp_path / "y.npy"),
                running.http,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        expected = run_model(str(example_models["camera_cnn"]), {"image": x})["probabilities"]
        assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-4
        # The camera stage's whole worker lives in one emulated process, which serves every request.
        emulated = _emulated_workers()
        assert len(emulated) == 1
        bench = nndeploy("bench", running.address, "--concurrency", "1", "--requests", "3")
        assert "3/3 ok, 0 failed" in bench.stdout, bench.stdout + bench.stderr
        assert _emulated_workers() == emulated
    finally:
        assert running.stop() == 0
    assert _emulated_workers() == []


def _emulated_workers() -> list[int]:
    """The pids of stage workers running under the aarch64 emulator (emulated_worker.py)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(part.endswith("emulated_worker.py") for part in process.info["cmdline"] or ()):
            found.append(process.info["pid"])
    return sorted(found)


BATCH_CLIENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tritonclient.http as httpclient

    url, inputs_path, outputs_path = sys.argv[1:4]
    xs = np.load(inputs_path)
    client = httpclient.InferenceServerClient(url.split("://", 1)[1], concurrency=len(xs))
    config = client.get_model_config("stack")
    assert config["max_batch_size"] == 4 and config["input"][0]["dims"] == [8, 16, 16], config
    pending = []
    for x in xs:
        tensor = httpclient.InferInput("x", [1, 8, 16, 16], "FP32")
        tensor.set_data_from_numpy(x[None])
        pending.append(client.async_infer("stack", [tensor]))
    np.save(outputs_path, np.stack([p.get_result().as_numpy("y")[0] for p in pending]))
    two = httpclient.InferInput("x", [2, 8, 16, 16], "FP32")
    two.set_data_from_numpy(xs[:2])
    both = client.infer("stack", [two]).as_numpy("y")
    assert both.shape == (2, 8, 16, 16), both.shape
    print("batched ok")
    """
)


def test_compile_batch_sizes_and_serve_dynamic_batching(tmp_path: Path) -> None:
    import onnx
    import yaml

    from nndeploy.runtime.chain import free_ports

    model = tmp_path / "stack.onnx"
    onnx.save(conv_stack_model(blocks=2, channels=8, side=16), model)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(servers(2, profile="x86-avx2-server")))
    assert (
        nndeploy(
            "plan", model, "--cluster", tmp_path / "cluster.yaml", "-o", tmp_path / "plan.json"
        ).returncode
        == 0
    )
    build = tmp_path / "build"
    done = nndeploy("compile", tmp_path / "plan.json", "-o", build, "--batch-sizes", "1,4")
    assert done.returncode == 0, done.stderr
    assert "batch sizes: 1 (this folder), 4 (batch-4/)" in done.stdout
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["batch_builds"] == {"4": "batch-4"}
    batch4 = json.loads((build / "batch-4" / "manifest.json").read_text())
    assert batch4["stages"][0]["artifact"]["inputs"][0]["shape"] == [4, 8, 16, 16]
    # Asking for more than the build holds is one clear error, before anything starts.
    assert_user_error(
        nndeploy("serve", build, "--max-batch", "8"), "--max-batch 8", "largest batch size is 4"
    )

    xs = np.random.default_rng(3).standard_normal((8, 8, 16, 16)).astype(np.float32)
    np.save(tmp_path / "xs.npy", xs)
    port, metrics_port, http_port = free_ports(3)
    running = Server(build, port, metrics_port, http_port, "--max-batch", "4", "--batch-delay-ms", "100")
    try:
        assert any("dynamic batching: up to 4 samples within 100 ms" in line for line in running.output)
        script = tmp_path / "client.py"
        script.write_text(BATCH_CLIENT)
        client = subprocess.run(
            [sys.executable, str(script), running.http, str(tmp_path / "xs.npy"), str(tmp_path / "ys.npy")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert client.returncode == 0 and "batched ok" in client.stdout, client.stderr[-3000:]
        ys = np.load(tmp_path / "ys.npy")
        for x, y in zip(xs, ys, strict=True):  # each request got its own sample's result
            expected = run_model(str(model), {"x": x[None]})["y"][0]
            assert np.abs(y - expected).max() < 1e-4
        import urllib.request

        text = urllib.request.urlopen(running.metrics, timeout=30).read().decode()
        count = float(re.search(r'nndeploy_batch_size_count\{model="stack"\} (\S+)', text).group(1))
        total = float(re.search(r'nndeploy_batch_size_sum\{model="stack"\} (\S+)', text).group(1))
        assert total == 10  # 8 single requests and one of 2 samples
        assert count < 8  # fewer runs of the chain than requests: they were batched
    finally:
        assert running.stop() == 0


def _shared_certificate(folder: Path, names: list[str]) -> Path:
    """A CA and one certificate for every process (a single Kubernetes TLS Secret), naming only `names`
    (DNS names or IP addresses); returns the folder with tls.crt, tls.key, ca.crt."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def san(name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test CA")])
    leaf_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "shared")])

    def signed(subject: x509.Name, public_key: object, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([san(n) for n in names]), False)
        return builder.sign(ca_key, hashes.SHA256())

    folder.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(signed(ca_name, ca_key.public_key(), True).public_bytes(pem))
    (folder / "tls.crt").write_bytes(signed(leaf_name, key.public_key(), False).public_bytes(pem))
    (folder / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder


def _stage_addresses(server: Server) -> list[str]:
    """The worker column of serve's stage table."""
    rows = [re.match(r"\s*│\s*\d+\s*│\s*\S+\s*│\s*(\S+)\s*│", line) for line in server.output]
    return [row.group(1) for row in rows if row]


@pytest.mark.parametrize("layout", ["one certificate naming no address", "a certificate per process"])
def test_serve_on_ray_with_mutual_tls_between_stages(
    build: tuple[Path, Path], tmp_path: Path, layout: str
) -> None:
    import grpc

    from nndeploy.proto import stage_pb2, stage_pb2_grpc
    from nndeploy.runtime.chain import free_ports

    model, build_dir = build
    if layout == "a certificate per process":  # endpoint/ and stage-N/, each with its own identity
        made = nndeploy("certs", "make", "--stages", "4", "-o", tmp_path / "tls")
        assert made.returncode == 0, made.stderr
        folder = tmp_path / "tls"
    else:  # stages are dialled at 127.0.0.1, which this certificate does not name: verified by name
        folder = _shared_certificate(tmp_path / "tls", ["nndeploy-peers"])
    port, metrics_port, http_port = free_ports(3)
    server = Server(build_dir, port, metrics_port, http_port, "--tls-dir", str(folder))
    try:
        x = np.random.default_rng(2).standard_normal((1, 3, 640, 640)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        done = nndeploy(
            "infer", server.address, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npz"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with np.load(tmp_path / "y.npz") as got:
            assert np.abs(got["y"] - run_model(str(model), {"x": x})["y"]).max() < 1e-4
        addresses = _stage_addresses(server)
        assert len(addresses) == len(server.pids) >= 2
        for address in addresses:  # a stage takes no plaintext peer
            with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
                stage_pb2_grpc.StageWorkerStub(channel).Stats(stage_pb2.StatsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0, "".join(server.output)


def test_serve_tls_without_a_name_to_verify_peers_by_is_one_line(
    build: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = _shared_certificate(tmp_path / "tls", ["127.0.0.1"])
    assert_user_error(
        nndeploy("serve", build[1], "--tls-dir", folder), "certificate names no DNS name", "--tls-server-name"
    )
    assert_user_error(
        nndeploy("serve", build[1], "--tls-dir", tmp_path / "nothing"), "missing tls.crt, tls.key, ca.crt"
    )
