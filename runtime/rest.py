"""KServe v2 REST bodies <-> numpy: JSON tensors (`data` in row-major order, flat or nested) and Triton's
binary tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes, then the raw
little-endian elements of each binary tensor, in the order the header lists them).

Every malformed body raises ValueError with a one-line message naming the tensor and what is wrong; the
HTTP endpoint answers it with 400 and KServe's error JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nndeploy.runtime.tensors import dtype_to_kserve, kserve_to_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class RestRequest:
    """A decoded inference request body."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # the outputs wanted, in order; () = all
    binary: frozenset[str]  # the wanted outputs to answer in binary
    binary_default: bool  # answer outputs not named in `outputs` in binary (`binary_data_output`)
    parameters: dict[str, Any]


def parse_request(body: bytes, header_length: str | None) -> RestRequest:
    """Decode an inference request body; `header_length` is the Inference-Header-Content-Length header
    (None: the whole body is JSON)."""
    header, binary = _split(body, header_length)
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ValueError("the request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(raw_inputs):
        name, array, used = _input(tensor, index, binary, offset)
        if name in inputs:
            raise ValueError(f"input '{name}' is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise ValueError(
            f"the body carries {len(binary)} bytes of binary tensor data but the inputs declare {offset} "
            f"(binary_data_size)"
        )
    outputs, binary_outputs = _outputs(document.get("outputs", []))
    parameters = _parameters(document.get("parameters"), "the request")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise ValueError("'id' must be a string")
    return RestRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary=binary_outputs,
        binary_default=parameters.get("binary_data_output") is True,
        parameters=parameters,
    )


def encode_response(
    model: str, version: str, request: RestRequest, outputs: Mapping[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and its JSON header's length when binary tensors follow it (None: all JSON)."""
    described: list[dict[str, Any]] = []
    sections: list[bytes] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {
            "name": name,
            "datatype": dtype_to_kserve(array.dtype),
            "shape": list(array.shape),
        }
        as_binary = name in request.binary or (name not in request.outputs and request.binary_default)
        if as_binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            sections.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request.id:
        document["id"] = request.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not sections:
        return header, None
    return b"".join([header, *sections]), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it."""
    view = memoryview(body)
    if header_length is None:
        return body, view[len(body) :]
    try:
        length = int(header_length)
    except ValueError:
        raise ValueError(f"{HEADER_LENGTH} must be a whole number of bytes, got {header_length!r}") from None
    if length < 0 or length > len(body):
        raise ValueError(f"{HEADER_LENGTH} says {length} bytes but the body has {len(body)}")
    return bytes(view[:length]), view[length:]


def _input(tensor: Any, index: int, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor: its name, array and the binary bytes it used."""
    if not isinstance(tensor, dict):
        raise ValueError(f"inputs[{index}] must be a JSON object (name, shape, datatype, data)")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"inputs[{index}] needs a 'name' string")
    what = f"input '{name}'"
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{what}: 'shape' must be a list of non-negative integers")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise ValueError(f"{what}: 'datatype' must be a string such as \"FP32\"")
    try:
        dtype = kserve_to_dtype(datatype)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    count = math.prod(shape)
    parameters = _parameters(tensor.get("parameters"), what)
    size = parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{what}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise ValueError(f"{what}: give either 'data' or binary_data_size, not both")
        needed = count * dtype.itemsize
        if size != needed:
            raise ValueError(
                f"{what}: binary_data_size is {size} bytes but shape {shape} of {datatype} needs {needed}"
            )
        if offset + size > len(binary):
            raise ValueError(f"{what}: the body ends before its {size} bytes of binary data")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
        return name, array, size
    if "data" not in tensor:
        raise ValueError(f"{what}: needs 'data' (or binary data with parameters.binary_data_size)")
    return name, _json_data(tensor["data"], dtype, shape, count, what), 0


def _json_data(data: Any, dtype: np.dtype, shape: list[int], count: int, what: str) -> np.ndarray:
    """The elements of a JSON `data` list (flat or nested), checked against the datatype and shape."""
    if not isinstance(data, list):
        raise ValueError(f"{what}: 'data' must be a list of numbers")
    try:
        values = np.asarray(data)
    except ValueError:
        raise ValueError(f"{what}: 'data' is a ragged nested list") from None
    if values.size != count:
        raise ValueError(f"{what}: 'data' has {values.size} elements but shape {shape} needs {count}")
    if count and values.dtype.kind not in ("b" if dtype.kind == "b" else "biuf"):
        raise ValueError(f"{what}: 'data' must hold {'booleans' if dtype.kind == 'b' else 'numbers'}")
    if dtype.kind in "iu" and values.dtype.kind == "f":
        raise ValueError(f"{what}: 'data' holds fractions but the datatype is {dtype_to_kserve(dtype)}")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise ValueError(f"{what}: 'data' holds values outside {dtype_to_kserve(dtype)}'s range")
    return values.astype(dtype).reshape(shape)


def _outputs(raw: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs the request wants and those it wants in binary."""
    if not isinstance(raw, list):
        raise ValueError("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    binary: set[str] = set()
    for index, output in enumerate(raw):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ValueError(f"outputs[{index}] must be an object with a 'name' string")
        name = output["name"]
        names.append(name)
        if _parameters(output.get("parameters"), f"output '{name}'").get("binary_data") is True:
            binary.add(name)
    return tuple(names), frozenset(binary)


def _parameters(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{what}: 'parameters' must be a JSON object")
    return raw
