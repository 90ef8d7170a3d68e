"""Triton's model configuration and statistics (runtime/triton_model.py): the config of a batched and an
unbatched model, the JSON forms of Triton's HTTP answers, the accumulation of statistics with Triton's
definitions, and tritonclient's own messages reading ours (in a subprocess: its protos and ours cannot share
a process)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nndeploy.proto import inference_pb2
from nndeploy.runtime.triton_model import (
    INFER_DURATIONS,
    Statistics,
    data_type,
    model_config,
    model_config_json,
    statistics_json,
)
from nndeploy.types import TensorSpec

STAGES = (("cpu0", "10.0.0.1:9000"), ("gpu0", "10.0.0.2:9000"))
INPUTS = (TensorSpec("image", (8, 3, 224, 224), "float32"), TensorSpec("mask", (8, 224), "int64"))
OUTPUTS = (TensorSpec("logits", (8, 1000), "float16"),)


def batched() -> inference_pb2.ModelConfig:
    return model_config(
        "resnet", INPUTS, OUTPUTS, STAGES, max_batch_size=8, batch_delay_ms=2.5, batch_sizes=(4, 8)
    )


def test_batched_model_drops_the_batch_dimension_and_batches_dynamically() -> None:
    config = batched()
    assert (config.name, config.platform, config.backend) == ("resnet", "nndeploy", "nndeploy")
    assert config.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("image", inference_pb2.TYPE_FP32, [3, 224, 224]),
        ("mask", inference_pb2.TYPE_INT64, [224]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", inference_pb2.TYPE_FP16, [1000])
    ]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "stage_0_device": "cpu0",
        "stage_1_device": "gpu0",
        "stages": "2",
    }


def test_batched_model_without_delay_or_sizes_still_batches() -> None:
    config = model_config("m", INPUTS, OUTPUTS, STAGES[:1], max_batch_size=4)
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.parameters["stages"].string_value == "1"


def test_unbatched_model_keeps_full_shapes_and_has_no_dynamic_batching() -> None:
    config = model_config(
        "plain",
        [TensorSpec("x", (1, 3), "uint8"), TensorSpec("flag", (), "bool")],
        [TensorSpec("y", (1, 3), "float64")],
        STAGES,
    )
    assert config.max_batch_size == 0
    assert [(i.data_type, list(i.dims)) for i in config.input] == [
        (inference_pb2.TYPE_UINT8, [1, 3]),
        (inference_pb2.TYPE_BOOL, []),
    ]
    assert list(config.output[0].dims) == [1, 3]
    assert config.output[0].data_type == inference_pb2.TYPE_FP64
    assert config.WhichOneof("scheduling_choice") is None
    assert config.parameters["stage_1_device"].string_value == "gpu0"


def test_data_types_follow_tritons_numbering() -> None:
    assert data_type("float32") == inference_pb2.TYPE_FP32 == 11
    assert data_type("int8") == inference_pb2.TYPE_INT8 == 6
    assert data_type("uint64") == inference_pb2.TYPE_UINT64 == 5
    with pytest.raises(ValueError, match="unsupported numpy dtype"):
        data_type("str")


def test_batched_scalar_and_negative_batch_size_are_refused() -> None:
    with pytest.raises(ValueError, match="scalar"):
        model_config("m", [TensorSpec("s", (), "float32")], [], STAGES, max_batch_size=2)
    with pytest.raises(ValueError, match="max_batch_size"):
        model_config("m", INPUTS, OUTPUTS, STAGES, max_batch_size=-1)


def test_config_json_has_numbers_and_enum_names() -> None:
    data = model_config_json(batched())
    assert data["name"] == "resnet" and data["backend"] == "nndeploy"
    assert data["max_batch_size"] == 8
    image = data["input"][0]
    assert image == {
        "name": "image",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [3, 224, 224],
    }
    assert all(type(d) is int for d in image["dims"])
    assert data["output"][0]["data_type"] == "TYPE_FP16"
    delay = data["dynamic_batching"]["max_queue_delay_microseconds"]
    assert delay == 2500 and type(delay) is int
    assert data["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert data["parameters"]["stage_0_device"] == {"string_value": "cpu0"}
    assert json.loads(json.dumps(data)) == data


def test_unbatched_config_json_prints_zero_fields_and_no_scheduler() -> None:
    data = model_config_json(model_config("plain", [TensorSpec("x", (2, 3), "int32")], [], ()))
    assert data["max_batch_size"] == 0
    assert data["output"] == []
    assert data["input"][0]["dims"] == [2, 3]
    assert "dynamic_batching" not in data
    assert data["parameters"] == {"stages": {"string_value": "0"}}


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_statistics_count_inferences_and_executions_separately() -> None:
    clock = Clock(1_700_000_000.25)
    stats = Statistics(clock)
    # Two requests of batch 1 and one of batch 4, run as two executions (a batch of 2, then of 4).
    stats.executed(2, compute_input_ns=10, compute_infer_ns=100, compute_output_ns=20)
    stats.succeeded(1000, queue_ns=5, compute_input_ns=10, compute_infer_ns=100, compute_output_ns=20)
    stats.succeeded(1100, queue_ns=7, compute_input_ns=10, compute_infer_ns=100, compute_output_ns=20)
    clock.now += 2.0
    stats.executed(4, compute_input_ns=30, compute_infer_ns=300, compute_output_ns=40)
    stats.succeeded(
        2000, queue_ns=9, compute_input_ns=30, compute_infer_ns=300, compute_output_ns=40, batch_size=4
    )
    stats.failed(50)
    clock.now -= 10.0  # the wall clock stepping back does not move last_inference back
    stats.failed(60)

    proto = stats.proto("resnet", "1")
    assert (proto.name, proto.version) == ("resnet", "1")
    assert proto.inference_count == 6
    assert proto.execution_count == 2
    assert proto.last_inference == 1_700_000_002_250
    infer = proto.inference_stats
    assert (infer.success.count, infer.success.ns) == (3, 4100)
    assert (infer.fail.count, infer.fail.ns) == (2, 110)
    assert (infer.queue.count, infer.queue.ns) == (3, 21)
    assert (infer.compute_input.count, infer.compute_input.ns) == (3, 50)
    assert (infer.compute_infer.count, infer.compute_infer.ns) == (3, 500)
    assert (infer.compute_output.count, infer.compute_output.ns) == (3, 80)
    assert all(infer.HasField(name) for name in INFER_DURATIONS)
    assert (infer.cache_hit.count, infer.cache_miss.count) == (0, 0)


def test_batch_stats_are_per_execution_by_batch_size() -> None:
    stats = Statistics(Clock(0.0))
    stats.executed(4, 1, 2, 3)
    stats.executed(1, 10, 20, 30)
    stats.executed(4, 100, 200, 300)
    batches = stats.proto("m", "1").batch_stats
    assert [b.batch_size for b in batches] == [1, 4]
    four = batches[1]
    assert (four.compute_input.count, four.compute_input.ns) == (2, 101)
    assert (four.compute_infer.count, four.compute_infer.ns) == (2, 202)
    assert (four.compute_output.count, four.compute_output.ns) == (2, 303)
    assert (batches[0].compute_infer.count, batches[0].compute_infer.ns) == (1, 20)
    assert stats.proto("m", "1").execution_count == 3
    assert stats.proto("m", "1").inference_count == 0  # executions alone are not successful inferences


def test_fresh_statistics_are_all_zero() -> None:
    proto = Statistics().proto("m", "1")
    assert (proto.last_inference, proto.inference_count, proto.execution_count) == (0, 0, 0)
    assert list(proto.batch_stats) == []


def test_statistics_json_is_tritons_http_answer() -> None:
    stats = Statistics(Clock(1_700_000_000.0))
    stats.executed(4, 1, 2, 3)
    stats.succeeded(1000, 5, 1, 2, 3, batch_size=4)
    stats.failed(7)
    response = inference_pb2.ModelStatisticsResponse(model_stats=[stats.proto("resnet", "1")])
    data = statistics_json(response)
    assert list(data) == ["model_stats"] and len(data["model_stats"]) == 1
    model = data["model_stats"][0]
    assert list(model) == [
        "name",
        "version",
        "last_inference",
        "inference_count",
        "execution_count",
        "inference_stats",
        "response_stats",
        "batch_stats",
        "memory_usage",
    ]
    assert model["last_inference"] == 1_700_000_000_000 and type(model["last_inference"]) is int
    assert (model["inference_count"], model["execution_count"]) == (4, 1)
    assert type(model["inference_count"]) is int
    assert list(model["inference_stats"]) == list(INFER_DURATIONS)
    assert model["inference_stats"]["success"] == {"count": 1, "ns": 1000}
    assert model["inference_stats"]["fail"] == {"count": 1, "ns": 7}
    assert model["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert model["batch_stats"] == [
        {
            "batch_size": 4,
            "compute_input": {"count": 1, "ns": 1},
            "compute_infer": {"count": 1, "ns": 2},
            "compute_output": {"count": 1, "ns": 3},
        }
    ]
    assert (model["response_stats"], model["memory_usage"]) == ({}, [])
    assert json.loads(json.dumps(data)) == data


def test_statistics_json_of_an_empty_response() -> None:
    assert statistics_json(inference_pb2.ModelStatisticsResponse()) == {"model_stats": []}


# tritonclient's generated modules define the same `inference.*` names as ours, so they read our bytes in a
# process of their own.

TRITON_READER = """
import sys
from pathlib import Path
from tritonclient.grpc import model_config_pb2, service_pb2

folder = Path(sys.argv[1])
config = service_pb2.ModelConfigResponse.FromString((folder / "config.bin").read_bytes()).config
assert config.name == "resnet", config.name
assert config.max_batch_size == 8, config.max_batch_size
assert config.backend == "nndeploy" and config.platform == "nndeploy", config
dims = [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input]
assert dims == [("image", "TYPE_FP32", [3, 224, 224]), ("mask", "TYPE_INT64", [224])], dims
assert list(config.output[0].dims) == [1000], config.output
assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
assert config.dynamic_batching.max_queue_delay_microseconds == 2500, config.dynamic_batching
assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
assert config.parameters["stage_1_device"].string_value == "gpu0"

stats = service_pb2.ModelStatisticsResponse.FromString((folder / "stats.bin").read_bytes()).model_stats
assert len(stats) == 1
model = stats[0]
assert (model.name, model.version) == ("resnet", "1"), model
assert (model.inference_count, model.execution_count) == (5, 2), model
assert model.last_inference == 1700000000500, model.last_inference
assert (model.inference_stats.success.count, model.inference_stats.success.ns) == (2, 3000)
assert model.inference_stats.fail.count == 1
batches = [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in model.batch_stats]
assert batches == [(1, 1, 20), (4, 1, 40)], batches
print("TRITON READS OURS")
"""


@pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed")
def test_tritonclient_reads_our_config_and_statistics(tmp_path: Path) -> None:
    stats = Statistics(Clock(1_700_000_000.5))
    stats.executed(1, 1, 20, 3)
    stats.succeeded(1000, 1, 1, 20, 3)
    stats.executed(4, 2, 40, 6)
    stats.succeeded(2000, 1, 2, 40, 6, batch_size=4)
    stats.failed(9)
    config = inference_pb2.ModelConfigResponse(config=batched())
    response = inference_pb2.ModelStatisticsResponse(model_stats=[stats.proto("resnet", "1")])
    (tmp_path / "config.bin").write_bytes(config.SerializeToString())
    (tmp_path / "stats.bin").write_bytes(response.SerializeToString())
    script = tmp_path / "read.py"
    script.write_text(TRITON_READER)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "TRITON READS OURS" in done.stdout
