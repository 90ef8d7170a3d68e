"""numpy <-> proto tensor conversions: KServe v2 (inference.proto) requests and responses, and the
stage-to-stage Tensor (stage.proto).

Both use the project's one wire format: a header (name, dtype, shape) and the raw elements, little-endian,
row-major. Decoding is zero-copy where it can be (np.frombuffer over the message's bytes, so the arrays are
read-only); strings (KServe BYTES, numpy object/str dtypes) are not supported yet and raise ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nndeploy.proto import inference_pb2, stage_pb2

# KServe v2 datatype <-> numpy dtype (BYTES has no fixed-size numpy dtype and is not supported).
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_KSERVE: dict[np.dtype, str] = {dtype: name for name, dtype in KSERVE_TO_NUMPY.items()}
# The numpy names used in stage.proto's Tensor.dtype.
SUPPORTED_DTYPES: tuple[str, ...] = tuple(dtype.name for dtype in KSERVE_TO_NUMPY.values())

# The InferTensorContents field that holds each datatype when sent typed (FP16 has none: raw only).
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
# The element type of each typed field, as decoded before narrowing to the tensor's dtype.
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}
_CONTENT_FIELDS = (*_FIELD_DTYPE, "bytes_contents")


def kserve_to_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a KServe v2 datatype name ("FP32" -> float32); ValueError for BYTES or unknown."""
    try:
        return KSERVE_TO_NUMPY[datatype]
    except KeyError:
        note = " (strings are not supported yet)" if datatype == "BYTES" else ""
        raise ValueError(
            f"unsupported KServe datatype {datatype!r}{note}; supported: {', '.join(KSERVE_TO_NUMPY)}"
        ) from None


def dtype_to_kserve(dtype: np.dtype | type | str) -> str:
    """The KServe v2 datatype name of a numpy dtype, either byte order (float32 -> "FP32")."""
    dt = np.dtype(dtype)
    name = NUMPY_TO_KSERVE.get(dt.newbyteorder("=")) if dt.kind in "biuf" else None
    if name is None:
        note = " (strings are not supported yet)" if dt.kind in "OSU" else ""
        raise ValueError(f"unsupported numpy dtype {dt}{note}; supported: {', '.join(SUPPORTED_DTYPES)}")
    return name


def _le(dtype: np.dtype) -> np.dtype:
    """The little-endian form of a fixed-size dtype (no-op for 1-byte types)."""
    return dtype.newbyteorder("<")


def _shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"{what}: shape {list(dims)} has a negative dimension")
    return dims


def _from_raw(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], what: str, where: str) -> np.ndarray:
    """Little-endian raw bytes -> array of `shape`, zero-copy (read-only) on little-endian hosts."""
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{what}: {where} has {len(raw)} bytes, expected {expected} "
            f"({count} elements x {dtype.itemsize} bytes)"
        )
    array = np.frombuffer(raw, dtype=_le(dtype)).reshape(shape)
    return array if array.dtype.isnative else array.astype(dtype)


def _to_raw(array: np.ndarray) -> bytes:
    """An array's elements as little-endian row-major bytes."""
    return np.ascontiguousarray(array, dtype=_le(array.dtype)).tobytes()


def _check_array(name: str, array: Any) -> tuple[np.ndarray, str]:
    """The array and its KServe datatype; ValueError naming the tensor for an unsupported dtype."""
    array = np.asarray(array)
    try:
        return array, dtype_to_kserve(array.dtype)
    except ValueError as exc:
        raise ValueError(f"tensor {name!r}: {exc}") from None


# KServe v2 (inference.proto)


def _input_what(tensor: Any) -> str:
    return f"input {tensor.name!r} ({tensor.datatype}, shape {list(tensor.shape)})"


def _has_typed(contents: inference_pb2.InferTensorContents) -> str | None:
    """The name of the first non-empty typed contents field, or None."""
    for field in _CONTENT_FIELDS:
        if len(getattr(contents, field)):
            return field
    return None


def _from_typed(tensor: Any, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    field = TYPED_FIELD.get(tensor.datatype)
    if field is None:
        raise ValueError(f"{what}: {tensor.datatype} has no typed contents; send it in raw_input_contents")
    used = _has_typed(tensor.contents)
    if used not in (None, field):
        raise ValueError(f"{what}: data is in contents.{used}, expected contents.{field}")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ValueError(f"{what}: contents.{field} has {len(values)} elements, expected {count}")
    wide = np.array(values, dtype=_FIELD_DTYPE[field])
    array = wide.astype(dtype)
    if not np.array_equal(array, wide):
        raise ValueError(f"{what}: contents.{field} has values out of range for {tensor.datatype}")
    return array.reshape(shape)


def request_inputs_to_numpy(request: inference_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """The inputs of a KServe v2 request as arrays, by name, in request order.

    Reads raw_input_contents (one entry per input, in the order of the inputs) when present, else each input's
    typed contents. Raises ValueError naming the input for a byte or element count that does not match its
    shape and datatype, a duplicate name, mixed raw and typed data, or an unsupported datatype.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ValueError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs; "
            "when raw_input_contents is used it must hold every input, in order"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        what = _input_what(tensor)
        if tensor.name in arrays:
            raise ValueError(f"{what}: duplicate input name")
        dtype = kserve_to_dtype(tensor.datatype)
        shape = _shape(tensor.shape, what)
        if raw:
            used = _has_typed(tensor.contents)
            if used is not None:
                raise ValueError(f"{what}: has contents.{used} as well as raw_input_contents[{i}]")
            arrays[tensor.name] = _from_raw(raw[i], dtype, shape, what, f"raw_input_contents[{i}]")
        else:
            arrays[tensor.name] = _from_typed(tensor, dtype, shape, what)
    return arrays


def numpy_to_infer_response_outputs(
    arrays: Mapping[str, np.ndarray], response: inference_pb2.ModelInferResponse
) -> None:
    """Appends the arrays to a KServe v2 response as outputs (name, datatype, shape) + raw_output_contents
    (little-endian, C order), in the mapping's order."""
    for name, array in arrays.items():
        array, datatype = _check_array(name, array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(_to_raw(array))


def numpy_to_infer_request_inputs(
    arrays: Mapping[str, np.ndarray], request: inference_pb2.ModelInferRequest
) -> None:
    """Appends the arrays to a KServe v2 request as inputs + raw_input_contents (the client side)."""
    for name, array in arrays.items():
        array, datatype = _check_array(name, array)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(_to_raw(array))


def response_outputs_to_numpy(response: inference_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    """The outputs of a KServe v2 response as arrays, by name (raw_output_contents, one per output)."""
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):
        raise ValueError(
            f"raw_output_contents has {len(raw)} entries but the response has {len(response.outputs)} outputs"
        )
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(response.outputs):
        what = f"output {tensor.name!r} ({tensor.datatype}, shape {list(tensor.shape)})"
        dtype = kserve_to_dtype(tensor.datatype)
        shape = _shape(tensor.shape, what)
        arrays[tensor.name] = _from_raw(raw[i], dtype, shape, what, f"raw_output_contents[{i}]")
    return arrays


# Stage-to-stage (stage.proto)


def tensor_buffer(name: str, array: Any) -> tuple[stage_pb2.Tensor, memoryview]:
    """A stage Tensor's header (name, numpy dtype name, shape; no data) and its elements as a byte view,
    little-endian row-major (big-endian or non-contiguous arrays are converted; others are not copied)."""
    array, datatype = _check_array(name, array)
    header = stage_pb2.Tensor(name=name, dtype=KSERVE_TO_NUMPY[datatype].name, shape=array.shape)
    flat = np.ascontiguousarray(array, dtype=_le(array.dtype)).reshape(-1)  # 0-d arrays come back 1-d
    return header, memoryview(flat).cast("B")


def tensor_array(header: stage_pb2.Tensor, data: Any) -> np.ndarray:
    """The array of a stage Tensor's header and its elements (bytes or a byte view), zero-copy and
    read-only on little-endian hosts. ValueError naming the tensor for an unsupported dtype or a byte
    count that does not match its shape."""
    what = f"tensor {header.name!r} ({header.dtype}, shape {list(header.shape)})"
    if header.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{what}: unsupported dtype {header.dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    return _from_raw(data, np.dtype(header.dtype), _shape(header.shape, what), what, "data")


def tensor_to_proto(name: str, array: Any) -> stage_pb2.Tensor:
    """A stage Tensor of an array, elements included (see `tensor_buffer`)."""
    header, data = tensor_buffer(name, array)
    header.data = data.tobytes()
    return header


def proto_to_tensor(msg: stage_pb2.Tensor) -> np.ndarray:
    """The array of a stage Tensor, zero-copy and read-only over its bytes on little-endian hosts
    (see `tensor_array`)."""
    return tensor_array(msg, msg.data)


def tensors_to_proto(arrays: Mapping[str, Any]) -> list[stage_pb2.Tensor]:
    """Stage Tensors of named arrays, in the mapping's order."""
    return [tensor_to_proto(name, array) for name, array in arrays.items()]


def proto_to_tensors(msgs: Sequence[stage_pb2.Tensor]) -> dict[str, np.ndarray]:
    """Named arrays of stage Tensors; ValueError on a duplicate name."""
    arrays: dict[str, np.ndarray] = {}
    for msg in msgs:
        if msg.name in arrays:
            raise ValueError(f"tensor {msg.name!r}: duplicate name")
        arrays[msg.name] = proto_to_tensor(msg)
    return arrays
