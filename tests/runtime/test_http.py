"""The KServe v2 HTTP/REST endpoint: health, metadata, Triton's config/statistics/index, JSON and binary
inference, the same validation as gRPC, TLS and token, hostile bodies, and tritonclient.http unchanged."""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nndeploy.runtime.access import ServerAccess, read_token
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.http import HttpLimits, start_http
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec

MODEL = ModelSpec(
    "m",
    "1",
    (TensorSpec("x", (2, 3), "float32"), TensorSpec("k", (4,), "int64")),
    (TensorSpec("y", (2, 3), "float32"), TensorSpec("j", (4,), "int64")),
    (("cpu", ""),),
)
LIMITS = HttpLimits(max_request_bytes=1 << 20, read_timeout_s=1.0)


def stage(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if float(tensors["x"][0, 0]) == 99.0:  # a way for a test to make one request slow
        time.sleep(3)
    return {"y": tensors["x"] * 2, "j": tensors["k"] + 1}


@dataclass
class Running:
    port: int
    grpc_port: int
    endpoint: Any


class ServerThread:
    """A stage worker, the gRPC endpoint and its HTTP API on an event loop in a thread of their own."""

    def __init__(self, access: ServerAccess | None = None) -> None:
        self.access = access
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stop_event: asyncio.Event | None = None
        self.running: Running | None = None
        self.http: Any = None
        self.server: Any = None
        self.worker: Any = None

    def start(self) -> Running:
        self.thread.start()
        self.running = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self.running

    async def _start(self) -> Running:
        stage_port, grpc_port, sink_port = free_ports(3)
        model = ModelSpec(
            MODEL.name, MODEL.version, MODEL.inputs, MODEL.outputs, (("cpu", f"127.0.0.1:{stage_port}"),)
        )
        self.stop_event = asyncio.Event()
        spec = StageSpec(0, "cpu", ("x", "k"), ("y", "j"), None)
        self.worker = asyncio.create_task(serve_stage(spec, stage, stage_port, stop=self.stop_event))
        # With TLS the result sink needs a port of its own (by default the next one, maybe the stage's).
        self.server, endpoint, _ = await start_endpoint(
            model, grpc_port, access=self.access, sink_port=sink_port
        )
        self.http = await start_http(endpoint, 0, access=self.access, limits=LIMITS)
        for _ in range(100):
            if all(endpoint.stage_up) and all(endpoint.stats):
                break
            await asyncio.sleep(0.1)
        return Running(self.http.port, grpc_port, endpoint)

    async def _stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.worker is not None:
            await self.worker

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    running = ServerThread()
    try:
        yield running.start()
    finally:
        running.stop()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_json(port: int, path: str, document: Any) -> tuple[int, Any]:
    status, _, body = call(
        port, "POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


X = np.arange(6, dtype=np.float32).reshape(2, 3)
K = np.array([1, 2, 3, -4], dtype=np.int64)
JSON_REQUEST = {
    "id": "r1",
    "inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()},
        {"name": "k", "shape": [4], "datatype": "INT64", "data": [[1, 2], [3, -4]]},
    ],
}


def test_health_metadata_and_the_model_extensions(server: Running) -> None:
    port = server.port
    assert call(port, "GET", "/v2/health/live")[0] == 200
    assert call(port, "GET", "/v2/health/ready")[0] == 200
    status, _, body = call(port, "GET", "/v2")
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "nndeploy" and "binary_tensor_data" in meta["extensions"]
    status, _, body = call(port, "GET", "/v2/models/m")
    model = json.loads(body)  # shapes as JSON numbers (protobuf's JSON would make int64 strings)
    assert status == 200 and model["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("x", "FP32", [2, 3]),
        ("k", "INT64", [4]),
    ]
    assert call(port, "GET", "/v2/models/m/versions/1/ready")[0] == 200
    status, _, body = call(port, "GET", "/v2/models/m/config")
    config = json.loads(body)
    assert status == 200 and config["name"] == "m" and config["platform"] == "nndeploy"
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == [2, 3]
    status, _, body = call(port, "POST", "/v2/repository/index", b"{}")
    assert status == 200 and json.loads(body) == [
        {"name": "m", "version": "1", "state": "READY", "reason": ""}
    ]


def test_json_inference_and_statistics(server: Running) -> None:
    before = json.loads(call(server.port, "GET", "/v2/models/m/stats")[2])["model_stats"][0]
    status, answer = post_json(server.port, "/v2/models/m/infer", JSON_REQUEST)
    assert status == 200, answer
    assert answer["id"] == "r1" and answer["model_name"] == "m" and answer["model_version"] == "1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["y"]["datatype"] == "FP32" and outputs["y"]["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(outputs["y"]["data"], np.float32).reshape(2, 3), X * 2)
    assert outputs["j"]["data"] == (K + 1).tolist()
    after = json.loads(call(server.port, "GET", "/v2/models/m/stats")[2])["model_stats"][0]
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 1


def test_binary_tensors_both_ways(server: Running) -> None:
    header = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
            {"name": "k", "shape": [4], "datatype": "INT64", "data": K.tolist()},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "j"}],
    }
    head = json.dumps(header).encode()
    status, headers, body = call(
        server.port,
        "POST",
        "/v2/models/m/versions/1/infer",
        head + X.tobytes(),
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, body
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    y = next(o for o in answer["outputs"] if o["name"] == "y")
    assert y["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 3), X * 2)
    j = next(o for o in answer["outputs"] if o["name"] == "j")
    assert j["data"] == (K + 1).tolist() and [o["name"] for o in answer["outputs"]] == ["y", "j"]


@pytest.mark.parametrize(
    ("path", "document", "status", "words"),
    [
        ("/v2/models/other/infer", JSON_REQUEST, 404, "unknown model 'other'"),
        ("/v2/models/m/versions/2/infer", JSON_REQUEST, 404, "no version '2'"),
        (
            "/v2/models/m/infer",
            {"inputs": [JSON_REQUEST["inputs"][0]]},
            400,
            "missing ['k']",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{**JSON_REQUEST["inputs"][0], "shape": [3, 2]}, JSON_REQUEST["inputs"][1]]},
            400,
            "shape [3, 2]",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{**JSON_REQUEST["inputs"][0], "data": [1.0] * 5}, JSON_REQUEST["inputs"][1]]},
            400,
            "has 5 elements",
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [JSON_REQUEST["inputs"][0], {**JSON_REQUEST["inputs"][1], "data": [1.5, 2, 3, 4]}]},
            400,
            "fractions",
        ),
        ("/v2/models/m/infer", {**JSON_REQUEST, "outputs": [{"name": "nope"}]}, 400, "unknown output"),
        ("/v2/models/m/infer", {"inputs": "x"}, 400, "non-empty 'inputs' list"),
        ("/v2/models/m/infer", [1, 2], 400, "JSON object"),
    ],
)
def test_bad_requests_get_kserve_errors(
    server: Running, path: str, document: Any, status: int, words: str
) -> None:
    got, answer = post_json(server.port, path, document)
    assert got == status and words in answer["error"], answer


def test_malformed_bodies_and_headers(server: Running) -> None:
    port = server.port
    status, _, body = call(
        port, "POST", "/v2/models/m/infer", b"{not json", {"Content-Type": "application/json"}
    )
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, _, body = call(port, "POST", "/v2/models/m/infer", b"<x/>", {"Content-Type": "text/xml"})
    assert status == 415 and "application/json" in json.loads(body)["error"]
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    status, _, body = call(port, "POST", "/v2/models/m/infer", head + b"\0" * 20, headers)
    assert status == 400 and "ends before" in json.loads(body)["error"]
    status, _, body = call(port, "POST", "/v2/models/m/infer", head + b"\0" * 30, headers)
    assert status == 400 and "declare" in json.loads(body)["error"]
    status, _, body = call(
        port, "POST", "/v2/models/m/infer", head, {"Inference-Header-Content-Length": "9999"}
    )
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(body)["error"]
    status, _, body = call(port, "POST", "/v2/models/m/infer", b"\0" * (2 << 20))
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, _, body = call(port, "GET", "/v2/models/m", headers={"X-Big": "a" * 20000})
    assert status == 431 and "too long" in json.loads(body)["error"]
    status, headers_, body = call(port, "GET", "/v2/models/m/infer")
    assert status == 405 and headers_["Allow"] == "POST"
    status, _, body = call(port, "GET", "/metrics")
    assert status == 404 and "no KServe v2 resource" in json.loads(body)["error"]
    # The server is still up and answers correctly after all of that.
    assert post_json(port, "/v2/models/m/infer", JSON_REQUEST)[0] == 200


def _raw(port: int, data: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or `wait_s` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_slow_and_short_clients_are_cut_off_and_garbage_is_answered(server: Running) -> None:
    port = server.port
    # A body shorter than its Content-Length: 408 once the read timeout (1 s here) passes.
    started = time.monotonic()
    answer = _raw(port, b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer
    assert time.monotonic() - started < 4.5
    # Headers that never end (slowloris): the connection is closed after the read timeout.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        for _ in range(8):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.3)
        try:
            leftover = sock.recv(100)
        except OSError:
            leftover = b""
    assert leftover == b"" and time.monotonic() - started < 8
    # Not HTTP at all.
    answer = _raw(port, b"\x16\x03\x01 hello\r\n\r\n")
    assert answer.split(b" ")[1] == b"400" and b"HTTPS traffic" in answer
    assert call(port, "GET", "/v2/health/live")[0] == 200


def test_fuzzed_bodies_never_take_the_server_down(server: Running) -> None:
    rng = np.random.default_rng(7)
    base = json.dumps(JSON_REQUEST).encode()
    statuses = set()
    for _ in range(60):
        body = bytearray(base)
        for _ in range(int(rng.integers(1, 8))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        cut = int(rng.integers(len(body) // 2, len(body) + 1))
        status, _, answer = call(server.port, "POST", "/v2/models/m/infer", bytes(body[:cut]))
        statuses.add(status)
        assert status in (200, 400), (status, answer)
        if status == 400:
            assert json.loads(answer)["error"]
    assert 400 in statuses
    assert post_json(server.port, "/v2/models/m/infer", JSON_REQUEST)[0] == 200


def test_triton_timeout_parameter_is_a_deadline(server: Running) -> None:
    slow = {**JSON_REQUEST, "parameters": {"timeout": 200_000}}  # 0.2 s, in microseconds
    slow["inputs"] = [{**JSON_REQUEST["inputs"][0], "data": [99.0] + [0.0] * 5}, JSON_REQUEST["inputs"][1]]
    status, answer = post_json(server.port, "/v2/models/m/infer", slow)
    assert status == 504 and "no result within 0.2 s" in answer["error"]


TRITON_HTTP = """
import sys
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

client = httpclient.InferenceServerClient(sys.argv[1])
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m")
meta = client.get_model_metadata("m")
assert [t["name"] for t in meta["inputs"]] == ["x", "k"], meta
config = client.get_model_config("m")
assert config["name"] == "m" and config["input"][1]["data_type"] == "TYPE_INT64", config
index = client.get_model_repository_index()
assert index[0]["name"] == "m" and index[0]["state"] == "READY", index
x = np.arange(6, dtype=np.float32).reshape(2, 3)
k = np.array([1, 2, 3, -4], dtype=np.int64)
for binary in (True, False):
    inputs = [httpclient.InferInput("x", [2, 3], "FP32"), httpclient.InferInput("k", [4], "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(k, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
    result = client.infer("m", inputs, outputs=outputs, request_id="abc")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert result.as_numpy("j") is None
    result = client.infer("m", inputs)
    np.testing.assert_array_equal(result.as_numpy("j"), k + 1)
stats = client.get_inference_statistics("m")
assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 4, stats
try:
    client.infer("m", [httpclient.InferInput("x", [2, 3], "FP32").set_data_from_numpy(x)])
except InferenceServerException as exc:
    assert "missing ['k']" in exc.message(), exc.message()
else:
    raise SystemExit("a request without 'k' was answered")
print("tritonclient.http ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("tritonclient.http") is None, reason="needs tritonclient[http]")
def test_tritonclient_http_works_unchanged(server: Running, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(TRITON_HTTP)
    done = subprocess.run(
        [sys.executable, str(script), f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "tritonclient.http ok" in done.stdout, done.stderr[-3000:]


def test_tls_and_token_on_the_http_port(tmp_path: Path) -> None:
    from nndeploy.runtime.certs import make_certificates

    make_certificates(tmp_path, stages=1)
    access = ServerAccess(
        cert=(tmp_path / "server.crt").read_bytes(),
        key=(tmp_path / "server.key").read_bytes(),
        token=read_token(tmp_path / "token"),
    )
    running = ServerThread(access)
    try:
        port = running.start().port
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        token = (tmp_path / "token").read_text().strip()

        def secure(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
            connection = http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                return response.status, dict(response.getheaders())
            finally:
                connection.close()

        assert secure("/v2/health/ready", {})[0] == 200  # probes need no token
        status, headers = secure("/v2/models/m", {})
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert secure("/v2/models/m", {"Authorization": "Bearer wrong"})[0] == 401
        assert secure("/v2/models/m", {"Authorization": f"Bearer {token}"})[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            call(port, "GET", "/v2/health/live")  # plaintext to a TLS port
    finally:
        running.stop()
