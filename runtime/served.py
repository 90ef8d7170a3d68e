"""The served model as clients see it (ModelSpec), one request decoded from either protocol (Request),
why a request is refused (Refused, with the gRPC status code name runtime.http maps to HTTP), and the
checks of a request against the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nndeploy.runtime.tensors import dtype_to_kserve
from nndeploy.types import TensorSpec


class Refused(Exception):
    """A request the endpoint answers with an error: a gRPC status code name and a one-line message
    (runtime.http maps the code to an HTTP status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def timeout_parameter(parameters: Any) -> float | None:
    """Triton's per-request `timeout` parameter (microseconds; an InferParameter map or JSON parameters)
    in seconds, if the request sets a positive one."""
    if not parameters or "timeout" not in parameters:
        return None
    value = parameters["timeout"]
    if hasattr(value, "int64_param"):
        value = value.int64_param or value.uint64_param
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value / 1e6


@dataclass(frozen=True)
class Request:
    """One inference request, decoded from either protocol."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] = ()  # the outputs wanted; () = all
    timeout_s: float | None = None  # the client's own limit (its deadline, Triton's `timeout` parameter)


@dataclass(frozen=True)
class ModelSpec:
    """The served model as clients see it, and where its chain starts."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stages: tuple[tuple[str, str], ...]  # (device, worker address) per stage, in order
    timeout_s: float = 60.0
    # Requests waiting for the chain at once; more are refused with RESOURCE_EXHAUSTED straight away
    # instead of queueing without bound.
    max_in_flight: int = 256
    # Free-form metadata properties: which executor runs each stage, which nodes run on onnxruntime.
    properties: tuple[tuple[str, str], ...] = ()
    # Dynamic batching (0: off): requests of 1..max_batch samples (first dimension) arriving within
    # batch_delay_ms run as one batch, padded to the smallest of the build's batch_sizes that holds it.
    max_batch: int = 0
    batch_delay_ms: float = 0.0
    batch_sizes: tuple[int, ...] = ()


def input_problem(model: ModelSpec, arrays: dict[str, np.ndarray]) -> str:
    """A precise description of what is wrong with a request's inputs for `model`, or ''."""
    expected = {t.name: t for t in model.inputs}
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if unknown or missing:
        return f"inputs must be {sorted(expected)}; got unknown {unknown} and missing {missing}"
    for name, array in arrays.items():
        spec = expected[name]
        if array.dtype.name != spec.dtype:
            got, needed = dtype_to_kserve(array.dtype), dtype_to_kserve(spec.dtype)
            return f"input '{name}': datatype {got}, the model needs {needed}"
        if model.max_batch > 0:
            if (
                array.ndim == 0
                or array.shape[1:] != spec.shape[1:]
                or not 1 <= array.shape[0] <= model.max_batch
            ):
                needed = ", ".join([f"1..{model.max_batch}", *map(str, spec.shape[1:])])
                return f"input '{name}': shape {list(array.shape)}, the model needs [{needed}]"
        elif tuple(array.shape) != spec.shape:
            return f"input '{name}': shape {list(array.shape)}, the model needs {list(spec.shape)}"
    if model.max_batch > 0 and len({array.shape[0] for array in arrays.values()}) > 1:
        sizes = {name: int(array.shape[0]) for name, array in arrays.items()}
        return f"every input needs the same batch (first dimension); got {sizes}"
    return ""
