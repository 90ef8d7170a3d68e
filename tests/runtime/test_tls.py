"""Mutual TLS between stages: a TLS chain serves correct results; plaintext peers are refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from nndeploy.errors import NNDeployError
from nndeploy.proto import stage_pb2, stage_pb2_grpc
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.client import Client
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.tls import load_tls
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def make_certs(folder: Path) -> Path:
    """A throwaway CA and one certificate for 127.0.0.1 signed by it, as a TLS Secret's files."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=nndeploy-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=localhost",
    )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    return folder


def test_tls_chain_serves_and_refuses_plaintext(tmp_path: Path) -> None:
    tls = load_tls(make_certs(tmp_path))
    port0, port1, client_port, sink_port = free_ports(4)
    stages = (("cpu-a", f"127.0.0.1:{port0}"), ("cpu-b", f"127.0.0.1:{port1}"))
    model = ModelSpec(
        "m", "1", (TensorSpec("x", (2, 3), "float32"),), (TensorSpec("y", (2, 3), "float32"),), stages
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    async def scenario() -> tuple[dict[str, np.ndarray], grpc.StatusCode]:
        stop = asyncio.Event()
        first = StageSpec(0, "cpu-a", ("x",), ("h",), stages[1][1])
        last = StageSpec(1, "cpu-b", ("h",), ("y",), None)
        tasks = [
            asyncio.create_task(serve_stage(last, lambda t: {"y": t["h"] + 1}, port1, stop=stop, tls=tls)),
            asyncio.create_task(serve_stage(first, lambda t: {"h": t["x"] * 2}, port0, stop=stop, tls=tls)),
        ]
        server, endpoint, _ = await start_endpoint(model, client_port, tls=tls, sink_port=sink_port)
        try:
            for _ in range(100):  # the workers come up and the endpoint's health watcher sees them (over TLS)
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            outputs = await asyncio.to_thread(lambda: Client(f"127.0.0.1:{client_port}").infer("m", {"x": x}))
            async with grpc.aio.insecure_channel(stages[0][1], options=CHANNEL_OPTIONS) as plain:
                try:
                    await stage_pb2_grpc.StageWorkerStub(plain).Stats(stage_pb2.StatsRequest(), timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
            return outputs, code
        finally:
            stop.set()
            await server.stop(grace=1.0)
            await asyncio.gather(*tasks)

    outputs, plaintext_code = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert np.array_equal(outputs["y"], x * 2 + 1)
    assert (
        plaintext_code == grpc.StatusCode.UNAVAILABLE
    )  # a worker does not talk to a peer without a certificate


def test_missing_tls_files_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(NNDeployError, match=r"missing tls\.key, ca\.crt"):
        load_tls(tmp_path)


def test_per_stage_certificates_admit_only_the_upstream(tmp_path: Path) -> None:
    """With `nndeploy certs make` certificates each process knows its peers: the chain works, and a stage
    refuses requests from anyone but its upstream and counter reads from anyone but the endpoint."""
    from nndeploy.runtime.certs import make_certificates

    make_certificates(tmp_path, stages=2)
    own = {name: load_tls(tmp_path / name) for name in ("stage-0", "stage-1", "endpoint")}
    port0, port1, client_port, sink_port = free_ports(4)
    stages = (("cpu-a", f"127.0.0.1:{port0}"), ("cpu-b", f"127.0.0.1:{port1}"))
    model = ModelSpec(
        "m", "1", (TensorSpec("x", (2, 3), "float32"),), (TensorSpec("y", (2, 3), "float32"),), stages
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)

    async def call(address: str, who: str, method: str) -> grpc.StatusCode:
        tls = own[who]
        assert tls is not None
        async with grpc.aio.secure_channel(address, tls.channel_credentials(), options=CHANNEL_OPTIONS) as ch:
            stub = stage_pb2_grpc.StageWorkerStub(ch)
            try:
                if method == "Stats":
                    await stub.Stats(stage_pb2.StatsRequest(), timeout=5)
                else:
                    stream = stub.Process(
                        iter([stage_pb2.StageRequest(request_id="r", cancel=True)]), timeout=5
                    )
                    async for _ in stream:
                        pass
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    async def scenario() -> tuple[dict[str, np.ndarray], dict[str, grpc.StatusCode]]:
        stop = asyncio.Event()
        first = StageSpec(0, "cpu-a", ("x",), ("h",), stages[1][1])
        last = StageSpec(1, "cpu-b", ("h",), ("y",), None)
        tasks = [
            asyncio.create_task(
                serve_stage(last, lambda t: {"y": t["h"] + 1}, port1, stop=stop, tls=own["stage-1"])
            ),
            asyncio.create_task(
                serve_stage(first, lambda t: {"h": t["x"] * 2}, port0, stop=stop, tls=own["stage-0"])
            ),
        ]
        server, endpoint, _ = await start_endpoint(
            model, client_port, tls=own["endpoint"], sink_port=sink_port
        )
        try:
            for _ in range(100):
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            outputs = await asyncio.to_thread(lambda: Client(f"127.0.0.1:{client_port}").infer("m", {"x": x}))
            codes = {
                "stage-1 -> stage-1 Process": await call(stages[1][1], "stage-1", "Process"),
                "endpoint -> stage-1 Process": await call(stages[1][1], "endpoint", "Process"),
                "stage-0 -> stage-1 Process": await call(stages[1][1], "stage-0", "Process"),
                "stage-0 -> stage-0 Stats": await call(stages[0][1], "stage-0", "Stats"),
                "endpoint -> stage-0 Stats": await call(stages[0][1], "endpoint", "Stats"),
            }
            return outputs, codes
        finally:
            stop.set()
            await server.stop(grace=1.0)
            await asyncio.gather(*tasks)

    outputs, codes = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert np.array_equal(outputs["y"], x * 2 + 1)
    assert codes == {
        "stage-1 -> stage-1 Process": grpc.StatusCode.PERMISSION_DENIED,
        "endpoint -> stage-1 Process": grpc.StatusCode.PERMISSION_DENIED,
        "stage-0 -> stage-1 Process": grpc.StatusCode.OK,
        "stage-0 -> stage-0 Stats": grpc.StatusCode.PERMISSION_DENIED,
        "endpoint -> stage-0 Stats": grpc.StatusCode.OK,
    }
