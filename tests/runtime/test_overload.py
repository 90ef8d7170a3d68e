"""Overload: the endpoint refuses what it cannot hold at once with RESOURCE_EXHAUSTED, and every request
sent ends in exactly one answer or one error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.client import Metadata, run_bench
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec


def slow(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(0.2)
    return {"y": tensors["x"] + 1}


META = Metadata("m", {"x": (np.dtype("float32"), (4,))})


def with_slow_chain(body: Callable[[Any, str], Awaitable[Any]]) -> Any:
    """Run `body(endpoint, target)` against a real endpoint (at most 2 requests in flight) in front of one
    worker whose stage takes 0.2 s; both are stopped afterwards."""
    stage_port, client_port = free_ports(2)
    model = ModelSpec(
        "m",
        "1",
        (TensorSpec("x", (4,), "float32"),),
        (TensorSpec("y", (4,), "float32"),),
        (("cpu", f"127.0.0.1:{stage_port}"),),
        max_in_flight=2,
    )

    async def scenario() -> Any:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            serve_stage(StageSpec(0, "cpu", ("x",), ("y",), None), slow, stage_port, stop=stop)
        )
        server, endpoint, _ = await start_endpoint(model, client_port)
        try:
            for _ in range(100):
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            return await body(endpoint, f"127.0.0.1:{client_port}")
        finally:
            stop.set()
            await server.stop(grace=1.0)
            await worker

    return asyncio.run(asyncio.wait_for(scenario(), 120))


def test_requests_beyond_the_in_flight_limit_are_refused_at_once() -> None:
    async def body(endpoint: Any, target: str) -> Any:
        report = await asyncio.to_thread(run_bench, target, META, 8, 24, 30.0)
        return report, len(endpoint.pending)

    report, left = with_slow_chain(body)
    assert report.ok + report.errors == 24  # each request ended exactly once
    assert report.ok >= 2 and report.errors > 0
    assert set(report.error_codes) == {"RESOURCE_EXHAUSTED"}
    assert left == 0  # nothing left waiting in the endpoint
    # Only admitted requests waited for the 0.2 s stage; the refused ones did not queue behind them.
    assert report.seconds < (report.ok + 2) * 0.2 + 1.0


def test_the_endpoint_counts_every_answer_by_code_with_latency_and_stage_histograms() -> None:
    from prometheus_client import generate_latest

    async def body(endpoint: Any, target: str) -> Any:
        ok = await asyncio.to_thread(run_bench, target, META, 1, 2, 30.0)
        late = await asyncio.to_thread(run_bench, target, META, 1, 2, 0.05)  # the stage takes 0.2 s
        crowded = await asyncio.to_thread(run_bench, target, META, 8, 8, 30.0)
        await asyncio.sleep(0.3)
        return ok, late, crowded, generate_latest(endpoint.observed.registry).decode()

    ok, late, crowded, text = with_slow_chain(body)
    assert ok.ok == 2 and late.error_codes == {"DEADLINE_EXCEEDED": 2}
    assert "RESOURCE_EXHAUSTED" in crowded.error_codes
    counts = {
        line.split("{")[1].split(",")[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("nndeploy_requests_total{")
    }
    assert counts['code="OK"'] == 2 + crowded.ok
    assert counts['code="DEADLINE_EXCEEDED"'] == 2
    assert counts['code="RESOURCE_EXHAUSTED"'] == crowded.errors
    assert f'nndeploy_request_duration_seconds_count{{model="m"}} {float(2 + crowded.ok)}' in text
    # Each successful request's stage time: 0.2 s of compute, in the 0.25 s bucket.
    assert 'nndeploy_stage_compute_duration_seconds_bucket{device="cpu",le="0.1",stage="0"} 0.0' in text
    bucket = 'nndeploy_stage_compute_duration_seconds_bucket{device="cpu",le="0.25",stage="0"}'
    assert f"{bucket} {float(2 + crowded.ok)}" in text
    # And the hop into the stage, per successful request.
    hops = 'nndeploy_stage_transfer_duration_seconds_count{device="cpu",stage="0"}'
    assert f"{hops} {float(2 + crowded.ok)}" in text


def test_a_version_the_endpoint_does_not_serve_is_not_found() -> None:
    import grpc

    from nndeploy.proto import inference_pb2, inference_pb2_grpc
    from nndeploy.runtime.tensors import numpy_to_infer_request_inputs

    def calls(target: str) -> dict[str, str]:
        found = {}
        with grpc.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            for version in ("", "1", "2"):
                request = inference_pb2.ModelInferRequest(model_name="m", model_version=version)
                numpy_to_infer_request_inputs({"x": np.ones(4, np.float32)}, request)
                try:
                    stub.ModelInfer(request, timeout=30)
                    found[f"infer {version}"] = "OK"
                except grpc.RpcError as exc:
                    found[f"infer {version}"] = f"{exc.code().name}: {exc.details()}"
            try:
                stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="m", version="2"), timeout=30)
                found["metadata 2"] = "OK"
            except grpc.RpcError as exc:
                found["metadata 2"] = exc.code().name
            index = stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=True), timeout=30)
            found["index"] = str([(m.name, m.version, m.state) for m in index.models])
        return found

    async def body(endpoint: Any, target: str) -> Any:
        return await asyncio.to_thread(calls, target)

    found = with_slow_chain(body)
    assert found["infer "] == "OK" and found["infer 1"] == "OK"
    assert found["infer 2"] == "NOT_FOUND: model 'm' has no version '2'; this server serves version 1"
    assert found["metadata 2"] == "NOT_FOUND"
    assert found["index"] == str([("m", "1", "READY")])
