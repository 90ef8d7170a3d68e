"""Triton's model configuration and statistics extensions for the served model: the ModelConfig the
endpoint describes it with, what the endpoint observes of it (Statistics), and both in the JSON forms
Triton's HTTP endpoint answers (GET /v2/models/{name}/config and /stats).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from nndeploy.proto import inference_pb2
from nndeploy.runtime.tensors import dtype_to_kserve
from nndeploy.types import TensorSpec

PLATFORM = "nndeploy"
BACKEND = "nndeploy"

# InferStatistics' durations, in Triton's order (its HTTP answer lists every one, zero or not).
INFER_DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")
RESPONSE_DURATIONS = ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel")

_INT64_TYPES = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def data_type(dtype: str) -> int:
    """Triton's DataType of a numpy dtype name ("float32" -> TYPE_FP32): "TYPE_" + the KServe datatype
    name; ValueError for a dtype KServe has no fixed-size name for."""
    return inference_pb2.DataType.Value("TYPE_" + dtype_to_kserve(dtype))


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    """The dims Triton lists for a tensor: without the leading batch dimension when the model batches."""
    if not batched:
        return list(spec.shape)
    if not spec.shape:
        raise ValueError(f"tensor {spec.name!r} is a scalar, so a batched model cannot batch it")
    return list(spec.shape[1:])


def model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    stages: Sequence[tuple[str, str]],
    max_batch_size: int = 0,
    batch_delay_ms: float = 0.0,
    batch_sizes: Sequence[int] = (),
) -> inference_pb2.ModelConfig:
    """The served model's configuration in Triton's terms. `stages` is (device, worker address) per stage,
    in order; the parameters name each stage's device (`stage_<i>_device`) and their count (`stages`).
    With max_batch_size > 0 the dims leave out the batch dimension (Triton's convention) and dynamic
    batching is on (batch_delay_ms as max_queue_delay_microseconds, batch_sizes as the preferred sizes);
    with 0 the dims are the full shapes and there is no dynamic batching."""
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size must be 0 (no batching) or positive, not {max_batch_size}")
    batched = max_batch_size > 0
    config = inference_pb2.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=max_batch_size,
        input=[
            inference_pb2.ModelInput(name=s.name, data_type=data_type(s.dtype), dims=_dims(s, batched))
            for s in inputs
        ],
        output=[
            inference_pb2.ModelOutput(name=s.name, data_type=data_type(s.dtype), dims=_dims(s, batched))
            for s in outputs
        ],
    )
    if batched:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = round(batch_delay_ms * 1000)
    for index, (device, _address) in enumerate(stages):
        config.parameters[f"stage_{index}_device"].string_value = device
    config.parameters["stages"].string_value = str(len(stages))
    return config


def _numbers(descriptor: Descriptor, value: dict[str, Any]) -> dict[str, Any]:
    """A message's JSON dict in the .proto's field order, with the strings json_format writes for 64-bit
    integers turned back into JSON numbers."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            inner = message.fields_by_name["value"]
            out[field.name] = {key: _field_value(inner, v) for key, v in item.items()}
        elif field.is_repeated:
            out[field.name] = [_field_value(field, v) for v in item]
        else:
            out[field.name] = _field_value(field, item)
    return out


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    """One value of a field, with its 64-bit integers as numbers."""
    if field.message_type is not None:
        return _numbers(field.message_type, value)
    if field.cpp_type in _INT64_TYPES:
        return int(value)
    return value


def message_json(message: Message) -> dict[str, Any]:
    """A message as Triton prints its protobufs: field names as in the .proto, enums by name, fields
    without presence printed even when zero, 64-bit integers as numbers."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(message.DESCRIPTOR, value)


def model_config_json(config: inference_pb2.ModelConfig) -> dict[str, Any]:
    """The JSON Triton's HTTP endpoint answers GET /v2/models/{name}/config with: the ModelConfig's JSON
    form as Triton's server prints it (proto field names, every plain field even at zero, enums by name
    such as "TYPE_FP32", and int64/uint64 as numbers rather than protobuf's strings)."""
    return message_json(config)


@dataclass
class _Durations:
    """Count and total nanoseconds of one statistic."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        """One more occurrence, lasting ns."""
        self.count += 1
        self.ns += ns

    def proto(self) -> inference_pb2.StatisticDuration:
        """As a StatisticDuration."""
        return inference_pb2.StatisticDuration(count=self.count, ns=self.ns)


class Statistics:
    """What the endpoint observes of the served model since it started, with Triton's definitions
    (its statistics extension): `inference_count` counts inferences (a successful request of batch size 4
    counts 4) and `execution_count` model executions (one run of a batch, however many requests it holds);
    inference_stats are per request: success and fail are whole-request durations, queue and compute_* the
    successful requests' shares; batch_stats are per execution, by batch size; last_inference is
    milliseconds since the epoch of the latest execution or success. There is no response cache, so
    cache_hit and cache_miss stay zero. Plain ints, updated by one asyncio loop: no locks."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """`clock` gives the wall time in seconds (time.time; tests pass their own)."""
        self._clock = clock
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.infer = {name: _Durations() for name in INFER_DURATIONS}
        self.batches: dict[int, dict[str, _Durations]] = {}

    def _stamp(self) -> None:
        """Moves last_inference to now (never backwards)."""
        self.last_inference_ms = max(self.last_inference_ms, int(self._clock() * 1000))

    def succeeded(
        self,
        total_ns: int,
        queue_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
        batch_size: int = 1,
    ) -> None:
        """One request answered successfully: total_ns from its arrival to its answer, and where it spent
        its time; it counts batch_size inferences."""
        self.inference_count += batch_size
        self.infer["success"].add(total_ns)
        self.infer["queue"].add(queue_ns)
        self.infer["compute_input"].add(compute_input_ns)
        self.infer["compute_infer"].add(compute_infer_ns)
        self.infer["compute_output"].add(compute_output_ns)
        self._stamp()

    def failed(self, total_ns: int) -> None:
        """One request that failed, total_ns from its arrival to its error."""
        self.infer["fail"].add(total_ns)

    def executed(
        self, batch_size: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int
    ) -> None:
        """One model execution of a batch of batch_size: one more execution, and the batch size's times."""
        self.execution_count += 1
        batch = self.batches.setdefault(batch_size, {name: _Durations() for name in BATCH_DURATIONS})
        batch["compute_input"].add(compute_input_ns)
        batch["compute_infer"].add(compute_infer_ns)
        batch["compute_output"].add(compute_output_ns)
        self._stamp()

    def proto(self, name: str, version: str) -> inference_pb2.ModelStatistics:
        """The statistics so far as Triton's ModelStatistics of model `name`, version `version`; every
        duration is set, zero or not, and batch_stats are ordered by batch size."""
        stats = inference_pb2.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        for field in INFER_DURATIONS:
            getattr(stats.inference_stats, field).CopyFrom(self.infer[field].proto())
        for size in sorted(self.batches):
            batch = stats.batch_stats.add(batch_size=size)
            for field in BATCH_DURATIONS:
                getattr(batch, field).CopyFrom(self.batches[size][field].proto())
        return stats


def _duration_json(duration: inference_pb2.StatisticDuration) -> dict[str, int]:
    """A StatisticDuration as Triton's $duration_stat."""
    return {"count": duration.count, "ns": duration.ns}


def _durations_json(message: Message, fields: Sequence[str]) -> dict[str, dict[str, int]]:
    """Each named duration of a message, zero or not."""
    return {field: _duration_json(getattr(message, field)) for field in fields}


def _model_stat_json(stats: inference_pb2.ModelStatistics) -> dict[str, Any]:
    """One ModelStatistics as Triton's $model_stat."""
    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": stats.last_inference,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": _durations_json(stats.inference_stats, INFER_DURATIONS),
        "response_stats": {
            key: _durations_json(value, RESPONSE_DURATIONS) for key, value in stats.response_stats.items()
        },
        "batch_stats": [
            {"batch_size": batch.batch_size, **_durations_json(batch, BATCH_DURATIONS)}
            for batch in stats.batch_stats
        ],
        "memory_usage": [
            {"type": usage.type, "id": usage.id, "byte_size": usage.byte_size} for usage in stats.memory_usage
        ],
    }


def statistics_json(response: inference_pb2.ModelStatisticsResponse) -> dict[str, Any]:
    """The JSON Triton's HTTP endpoint answers GET /v2/models/{name}/stats with ({"model_stats": [...]}):
    every field of each $model_stat and every duration present, zero or not, numbers as JSON numbers."""
    return {"model_stats": [_model_stat_json(stats) for stats in response.model_stats]}
