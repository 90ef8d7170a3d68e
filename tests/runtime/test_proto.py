"""The wire formats (proto/): the generated modules are current, the KServe v2 field numbers are the spec's,
stage messages over 4 MiB cross a real gRPC server and channel, the health service answers, and a real KServe
client (tritonclient, in subprocesses: its protos and ours cannot share a process) talks to a server built
from our inference.proto."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from nndeploy.proto import (
    health_pb2,
    health_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    stage_pb2,
    stage_pb2_grpc,
)
from nndeploy.runtime.tensors import proto_to_tensors, tensor_to_proto, tensors_to_proto

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
TIMEOUT_S = 30


def test_generated_modules_are_current(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(PROTO / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.py")}
    committed = {p.name: p.read_text() for p in PROTO.glob("*_pb2*.py")}
    assert (
        sorted(fresh)
        == sorted(committed)
        == sorted(
            f"{name}{suffix}"
            for name in ("health", "inference", "stage")
            for suffix in ("_pb2.py", "_pb2_grpc.py")
        )
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `python proto/generate.py` and commit the result; stale: {stale}"
    for name, text in committed.items():
        if name.endswith("_grpc.py"):
            assert "from nndeploy.proto import " in text
            assert not any(line.startswith("import ") and "_pb2" in line for line in text.splitlines())


def number(message: type, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


# Triton's numbers for its model configuration and statistics extensions (model_config.proto and
# grpc_service.proto); tritonclient decodes by these numbers.
_pb = inference_pb2
# Triton's DataType, by value.
TRITON_DATA_TYPES = (
    "INVALID",
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "STRING",
    "BF16",
)
TRITON_EXTENSION_FIELDS = {
    (_pb.ModelConfigRequest, "name"): 1,
    (_pb.ModelConfigRequest, "version"): 2,
    (_pb.ModelConfigResponse, "config"): 1,
    (_pb.ModelConfig, "name"): 1,
    (_pb.ModelConfig, "platform"): 2,
    (_pb.ModelConfig, "backend"): 17,
    (_pb.ModelConfig, "max_batch_size"): 4,
    (_pb.ModelConfig, "input"): 5,
    (_pb.ModelConfig, "output"): 6,
    (_pb.ModelConfig, "dynamic_batching"): 11,
    (_pb.ModelConfig, "parameters"): 14,
    (_pb.ModelInput, "name"): 1,
    (_pb.ModelInput, "data_type"): 2,
    (_pb.ModelInput, "format"): 3,
    (_pb.ModelInput, "dims"): 4,
    (_pb.ModelOutput, "name"): 1,
    (_pb.ModelOutput, "data_type"): 2,
    (_pb.ModelOutput, "dims"): 3,
    (_pb.ModelDynamicBatching, "preferred_batch_size"): 1,
    (_pb.ModelDynamicBatching, "max_queue_delay_microseconds"): 2,
    (_pb.ModelParameter, "string_value"): 1,
    (_pb.ModelStatisticsRequest, "name"): 1,
    (_pb.ModelStatisticsRequest, "version"): 2,
    (_pb.ModelStatisticsResponse, "model_stats"): 1,
    (_pb.ModelStatistics, "name"): 1,
    (_pb.ModelStatistics, "version"): 2,
    (_pb.ModelStatistics, "last_inference"): 3,
    (_pb.ModelStatistics, "inference_count"): 4,
    (_pb.ModelStatistics, "execution_count"): 5,
    (_pb.ModelStatistics, "inference_stats"): 6,
    (_pb.ModelStatistics, "batch_stats"): 7,
    (_pb.ModelStatistics, "memory_usage"): 8,
    (_pb.ModelStatistics, "response_stats"): 9,
    (_pb.InferStatistics, "success"): 1,
    (_pb.InferStatistics, "fail"): 2,
    (_pb.InferStatistics, "queue"): 3,
    (_pb.InferStatistics, "compute_input"): 4,
    (_pb.InferStatistics, "compute_infer"): 5,
    (_pb.InferStatistics, "compute_output"): 6,
    (_pb.InferStatistics, "cache_hit"): 7,
    (_pb.InferStatistics, "cache_miss"): 8,
    (_pb.InferBatchStatistics, "batch_size"): 1,
    (_pb.InferBatchStatistics, "compute_input"): 2,
    (_pb.InferBatchStatistics, "compute_infer"): 3,
    (_pb.InferBatchStatistics, "compute_output"): 4,
    (_pb.StatisticDuration, "count"): 1,
    (_pb.StatisticDuration, "ns"): 2,
    (_pb.MemoryUsage, "type"): 1,
    (_pb.MemoryUsage, "id"): 2,
    (_pb.MemoryUsage, "byte_size"): 3,
    (_pb.InferResponseStatistics, "compute_infer"): 1,
    (_pb.InferResponseStatistics, "compute_output"): 2,
    (_pb.InferResponseStatistics, "success"): 3,
    (_pb.InferResponseStatistics, "fail"): 4,
    (_pb.InferResponseStatistics, "empty_response"): 5,
    (_pb.InferResponseStatistics, "cancel"): 6,
}


def test_inference_proto_matches_the_open_inference_protocol() -> None:
    assert inference_pb2_grpc.GRPCInferenceServiceStub and inference_pb2_grpc.GRPCInferenceServiceServicer
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    }
    for method, request_type, response_type in (
        ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse"),
        ("ModelStatistics", "ModelStatisticsRequest", "ModelStatisticsResponse"),
    ):
        rpc = service.methods_by_name[method]
        assert (rpc.input_type.name, rpc.output_type.name) == (request_type, response_type)
    request, response = inference_pb2.ModelInferRequest, inference_pb2.ModelInferResponse
    expected = {
        (request, "model_name"): 1,
        (request, "model_version"): 2,
        (request, "id"): 3,
        (request, "parameters"): 4,
        (request, "inputs"): 5,
        (request, "outputs"): 6,
        (request, "raw_input_contents"): 7,
        (request.InferInputTensor, "contents"): 5,
        (request.InferInputTensor, "shape"): 3,
        (response, "outputs"): 5,
        (response, "raw_output_contents"): 6,
        (inference_pb2.InferParameter, "uint64_param"): 5,
        (inference_pb2.InferTensorContents, "fp32_contents"): 6,
        (inference_pb2.InferTensorContents, "bytes_contents"): 8,
        (inference_pb2.ModelMetadataResponse, "outputs"): 5,
        (inference_pb2.ModelMetadataResponse.TensorMetadata, "datatype"): 2,
        (inference_pb2.ServerMetadataResponse, "extensions"): 3,
        (inference_pb2.ModelReadyRequest, "version"): 2,
    }
    for (message, field), num in {**expected, **TRITON_EXTENSION_FIELDS}.items():
        assert number(message, field) == num, f"{message.DESCRIPTOR.full_name}.{field}"
    data_types = {v.name: v.number for v in inference_pb2.DataType.DESCRIPTOR.values}
    assert data_types == {f"TYPE_{name}": value for value, name in enumerate(TRITON_DATA_TYPES)}
    assert inference_pb2.ModelConfig.DESCRIPTOR.fields_by_name["dynamic_batching"].containing_oneof.name == (
        "scheduling_choice"
    )


def test_stage_and_health_services() -> None:
    worker = stage_pb2.DESCRIPTOR.services_by_name["StageWorker"]
    assert worker.full_name == "nndeploy.stage.StageWorker"
    process = worker.methods_by_name["Process"]
    assert (process.client_streaming, process.server_streaming) == (True, True)
    deliver = stage_pb2.DESCRIPTOR.services_by_name["ResultSink"].methods_by_name["Deliver"]
    assert (deliver.client_streaming, deliver.server_streaming) == (True, True)
    assert deliver.input_type.full_name == "nndeploy.stage.StageReply"
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert health.full_name == "grpc.health.v1.Health"
    assert [m.name for m in health.methods] == ["Check", "Watch"]
    status = health_pb2.HealthCheckResponse.ServingStatus
    assert [status.Value(n) for n in ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")] == [0, 1, 2, 3]


# An in-process server: a trivial StageWorker (outputs = inputs * 2), a ResultSink and the health service.


class DoublingWorker(stage_pb2_grpc.StageWorkerServicer):
    def __init__(self) -> None:
        self.requests = 0

    def Process(self, request_iterator, context):
        for request in request_iterator:
            self.requests += 1
            arrays = proto_to_tensors(request.tensors)
            yield stage_pb2.StageReply(
                request_id=request.request_id,
                ok=True,
                tensors=tensors_to_proto({name: array * 2 for name, array in arrays.items()}),
            )

    def Stats(self, request, context):
        return stage_pb2.StageStats(stage=0, device="cpu0", requests=self.requests)


class Sink(stage_pb2_grpc.ResultSinkServicer):
    def Deliver(self, request_iterator, context):
        for reply in request_iterator:
            yield stage_pb2.Ack(request_id=reply.request_id, accepted=reply.request_id.startswith("known"))


class Health(health_pb2_grpc.HealthServicer):
    SERVING = dict.fromkeys(("", "nndeploy.stage.StageWorker"), health_pb2.HealthCheckResponse.SERVING)

    def Check(self, request, context):
        if request.service not in self.SERVING:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self.SERVING[request.service])

    def Watch(self, request, context):
        yield health_pb2.HealthCheckResponse(
            status=self.SERVING.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        )


@pytest.fixture
def stage_server() -> Iterator[str]:
    """address of a gRPC server on 127.0.0.1 with raised message limits; stopped at the end of the test."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    stage_pb2_grpc.add_StageWorkerServicer_to_server(DoublingWorker(), server)
    stage_pb2_grpc.add_ResultSinkServicer_to_server(Sink(), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=10)


@pytest.fixture
def channel(stage_server: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stage_server, options=OPTIONS) as chan:
        grpc.channel_ready_future(chan).result(timeout=TIMEOUT_S)
        yield chan


def test_tensor_over_4_mib_round_trips_through_grpc(channel: grpc.Channel) -> None:
    big = np.random.default_rng(0).standard_normal((3, 1024, 1024)).astype(np.float32)  # 12 MiB
    small = np.arange(5, dtype=np.int64)
    assert big.nbytes > 4 * 1024 * 1024
    requests = [
        stage_pb2.StageRequest(
            request_id=f"r{i}", tensors=[tensor_to_proto("big", big + i), tensor_to_proto("s", small)]
        )
        for i in range(2)
    ]
    assert requests[0].ByteSize() > 4 * 1024 * 1024
    stub = stage_pb2_grpc.StageWorkerStub(channel)
    replies = list(stub.Process(iter(requests), timeout=TIMEOUT_S))
    assert [r.request_id for r in replies] == ["r0", "r1"]
    for i, reply in enumerate(replies):
        assert reply.ok
        arrays = proto_to_tensors(reply.tensors)
        np.testing.assert_array_equal(arrays["big"], (big + i) * 2)
        np.testing.assert_array_equal(arrays["s"], small * 2)
    assert stub.Stats(stage_pb2.StatsRequest(), timeout=TIMEOUT_S).requests == 2


def test_default_receive_limit_refuses_over_4_mib(stage_server: str) -> None:
    """The fact the raised limits are for: a channel with gRPC's defaults cannot receive a 12 MiB reply."""
    big = np.zeros((3, 1024, 1024), np.float32)
    with grpc.insecure_channel(stage_server) as chan:
        stub = stage_pb2_grpc.StageWorkerStub(chan)
        request = stage_pb2.StageRequest(request_id="r", tensors=[tensor_to_proto("big", big)])
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Process(iter([request]), timeout=TIMEOUT_S))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_result_sink_acks_each_reply_in_order(channel: grpc.Channel) -> None:
    stub = stage_pb2_grpc.ResultSinkStub(channel)
    replies = [
        stage_pb2.StageReply(request_id="known-1", ok=True, tensors=[tensor_to_proto("y", np.ones(3))]),
        stage_pb2.StageReply(
            request_id="late", ok=False, error_code="DEADLINE_EXCEEDED", error="stage 1: late"
        ),
    ]
    acks = list(stub.Deliver(iter(replies), timeout=TIMEOUT_S))
    assert [(a.request_id, a.accepted) for a in acks] == [("known-1", True), ("late", False)]


def test_health_check_and_watch(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S).status == serving
    check = health_pb2.HealthCheckRequest(service="nndeploy.stage.StageWorker")
    assert stub.Check(check, timeout=TIMEOUT_S).status == serving
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    first = next(iter(stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT_S)))
    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


# A real KServe v2 client against a server built from our inference.proto. tritonclient's generated modules
# and ours define the same `inference.*` names, which one protobuf descriptor pool refuses, so the server and
# the client each run in a subprocess of their own.

KSERVE_SERVER = """
import os, sys
from concurrent import futures
import grpc
from nndeploy.proto import inference_pb2 as pb, inference_pb2_grpc
from nndeploy.runtime.tensors import numpy_to_infer_response_outputs, request_inputs_to_numpy
from nndeploy.runtime.triton_model import Statistics, model_config
from nndeploy.types import TensorSpec

SPEC = TensorSpec("INPUT0", (8, 3, 224, 224), "float32")

Meta = pb.ModelMetadataResponse.TensorMetadata

class Echo(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)
    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)
    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == "echo")
    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="nndeploy-test", version="0.1.0")
    def ModelMetadata(self, request, context):
        if request.name != "echo":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")
        return pb.ModelMetadataResponse(
            name="echo", versions=["1"], platform="nndeploy",
            inputs=[Meta(name="INPUT0", datatype="FP32", shape=[-1, 3, 224, 224])],
            outputs=[Meta(name="OUTPUT0", datatype="FP32", shape=[-1, 3, 224, 224])])
    def ModelInfer(self, request, context):
        if request.model_name != "echo":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        try:
            inputs = request_inputs_to_numpy(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = pb.ModelInferResponse(model_name="echo", model_version="1", id=request.id)
        numpy_to_infer_response_outputs({"OUTPUT0": inputs["INPUT0"] * 2}, response)
        return response
    def ModelConfig(self, request, context):
        config = model_config("echo", [SPEC], [SPEC], [("cpu0", "127.0.0.1:1")], max_batch_size=8,
                              batch_delay_ms=1.5)
        return pb.ModelConfigResponse(config=config)
    def ModelStatistics(self, request, context):
        stats = Statistics()
        stats.executed(2, 10, 20, 30)
        stats.succeeded(100, 5, 10, 20, 30, batch_size=2)
        return pb.ModelStatisticsResponse(model_stats=[stats.proto("echo", "1")])

limit = 64 * 1024 * 1024
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
    ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(port))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
server.wait_for_termination()
"""

KSERVE_CLIENT = """
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
assert client.is_server_live(client_timeout=10)
assert client.is_server_ready(client_timeout=10)
assert client.is_model_ready("echo", client_timeout=10)
assert not client.is_model_ready("other", client_timeout=10)
assert client.get_server_metadata(client_timeout=10).name == "nndeploy-test"
meta = client.get_model_metadata("echo", client_timeout=10)
assert meta.name == "echo" and list(meta.versions) == ["1"], meta
assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 3, 224, 224])]

config = client.get_model_config("echo", client_timeout=10).config
assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("echo", 8, [3, 224, 224]), config
assert config.dynamic_batching.max_queue_delay_microseconds == 1500, config
stats = client.get_inference_statistics("echo", client_timeout=10).model_stats[0]
assert (stats.inference_count, stats.execution_count, stats.inference_stats.success.ns) == (2, 1, 100), stats
assert client.get_inference_statistics("echo", as_json=True)["model_stats"][0]["name"] == "echo"

x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer("echo", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
                      request_id="req-1", client_timeout=60)
out = result.as_numpy("OUTPUT0")
assert out.dtype == np.float32 and out.shape == (1, 3, 224, 224), (out.dtype, out.shape)
np.testing.assert_array_equal(out, x * 2)
assert result.get_response().id == "req-1"

try:
    client.infer("missing", [inp], client_timeout=10)
    raise AssertionError("infer on a missing model succeeded")
except InferenceServerException as exc:
    assert "NOT_FOUND" in str(exc.status()), exc.status()
client.close()
print("KSERVE CLIENT OK")
"""


@pytest.fixture
def kserve_server(tmp_path: Path) -> Iterator[int]:
    """port of the echo KServe server subprocess; the process is stopped at the end of the test."""
    script = tmp_path / "kserve_server.py"
    script.write_text(KSERVE_SERVER)
    port_file = tmp_path / "port"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port_file)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"KServe test server did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.05)
        yield int(port_file.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")
def test_tritonclient_talks_to_our_inference_proto(kserve_server: int, tmp_path: Path) -> None:
    script = tmp_path / "kserve_client.py"
    script.write_text(KSERVE_CLIENT)
    done = subprocess.run(
        [sys.executable, str(script), str(kserve_server)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "KSERVE CLIENT OK" in done.stdout
