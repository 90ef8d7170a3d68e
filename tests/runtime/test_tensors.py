"""numpy <-> proto conversions (runtime/tensors.py): every dtype, 0-d and empty tensors, byte order, raw vs
typed KServe inputs, and the precise errors for bad sizes and unsupported dtypes. No gRPC server here."""

from __future__ import annotations

import numpy as np
import pytest

from nndeploy.proto import inference_pb2, stage_pb2
from nndeploy.runtime.tensors import (
    KSERVE_TO_NUMPY,
    SUPPORTED_DTYPES,
    TYPED_FIELD,
    dtype_to_kserve,
    kserve_to_dtype,
    numpy_to_infer_request_inputs,
    numpy_to_infer_response_outputs,
    proto_to_tensor,
    proto_to_tensors,
    request_inputs_to_numpy,
    response_outputs_to_numpy,
    tensor_to_proto,
    tensors_to_proto,
)

SHAPES = [(2, 3, 4), (), (0,), (3, 0, 2), (1,), (5, 1)]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values that use the dtype's range (extremes included where there is room)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        if values.size >= 2:
            values.flat[0], values.flat[1] = info.min, info.max
        return values
    return (rng.standard_normal(size=shape) * 100).astype(dt)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype.newbyteorder("=")
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def test_dtype_tables_are_complete_and_inverse() -> None:
    assert set(KSERVE_TO_NUMPY) == {
        "BOOL",
        *(f"UINT{b}" for b in (8, 16, 32, 64)),
        *(f"INT{b}" for b in (8, 16, 32, 64)),
        "FP16",
        "FP32",
        "FP64",
    }
    for name, dtype in KSERVE_TO_NUMPY.items():
        assert kserve_to_dtype(name) == dtype
        assert dtype_to_kserve(dtype) == name
        assert dtype_to_kserve(dtype.newbyteorder(">")) == name
        assert dtype_to_kserve(dtype.name) == name
    assert set(SUPPORTED_DTYPES) == {d.name for d in KSERVE_TO_NUMPY.values()}
    assert set(TYPED_FIELD) == set(KSERVE_TO_NUMPY) - {"FP16"}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_stage_tensor_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    array = sample(dtype, shape)
    msg = tensor_to_proto("t", array)
    assert (msg.name, msg.dtype, tuple(msg.shape)) == ("t", dtype, shape)
    assert msg.data == array.astype(array.dtype.newbyteorder("<")).tobytes()
    wire = stage_pb2.Tensor.FromString(msg.SerializeToString())
    assert_same(proto_to_tensor(wire), array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int16", "int32", "int64", "uint64"])
def test_big_endian_arrays_go_on_the_wire_little_endian(dtype: str) -> None:
    array = sample(dtype, (3, 4))
    big = array.astype(array.dtype.newbyteorder(">"))
    msg = tensor_to_proto("b", big)
    assert msg.dtype == dtype
    assert msg.data == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = proto_to_tensor(msg)
    assert back.dtype.isnative
    assert_same(back, array)


def test_non_contiguous_arrays_are_sent_in_row_major_order() -> None:
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = array.T[::2]
    assert not view.flags.c_contiguous
    assert_same(proto_to_tensor(tensor_to_proto("v", view)), np.ascontiguousarray(view))


def test_decoding_is_zero_copy_and_read_only() -> None:
    msg = tensor_to_proto("x", np.arange(12, dtype=np.float32).reshape(3, 4))
    array = proto_to_tensor(msg)
    assert array.base is not None
    assert not array.flags.writeable


def test_scalars_python_values_and_many_tensors() -> None:
    arrays = {"a": np.float32(1.5), "b": 7, "c": [True, False]}
    back = proto_to_tensors(tensors_to_proto(arrays))
    assert list(back) == ["a", "b", "c"]
    assert back["a"].shape == () and back["a"].dtype == np.float32 and back["a"] == 1.5
    assert back["b"] == 7 and back["b"].dtype == np.asarray(7).dtype
    assert_same(back["c"], np.array([True, False]))


def test_stage_tensor_wrong_byte_count_is_precise() -> None:
    msg = tensor_to_proto("x", np.zeros((2, 3), np.float32))
    msg.data = msg.data[:-4]
    with pytest.raises(
        ValueError,
        match=(
            r"^tensor 'x' \(float32, shape \[2, 3\]\): data has 20 bytes, expected 24 "
            r"\(6 elements x 4 bytes\)$"
        ),
    ):
        proto_to_tensor(msg)


@pytest.mark.parametrize("dtype", ["<U3", "S2", "object", "complex64", "datetime64[s]"])
def test_unsupported_numpy_dtypes_are_refused(dtype: str) -> None:
    array = np.zeros(2, dtype=dtype)
    with pytest.raises(ValueError, match=r"^tensor 'x': unsupported numpy dtype .*; supported: bool, uint8"):
        tensor_to_proto("x", array)
    with pytest.raises(ValueError, match="unsupported numpy dtype"):
        numpy_to_infer_response_outputs({"x": array}, inference_pb2.ModelInferResponse())


def test_strings_say_so() -> None:
    with pytest.raises(ValueError, match=r"strings are not supported yet"):
        tensor_to_proto("s", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"'BYTES' \(strings are not supported yet\)"):
        kserve_to_dtype("BYTES")


def test_proto_with_unknown_dtype_or_negative_dim_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^tensor 'x' \(complex64, shape \[1\]\): unsupported dtype"):
        proto_to_tensor(stage_pb2.Tensor(name="x", dtype="complex64", shape=[1], data=b"\0" * 8))
    with pytest.raises(ValueError, match=r"shape \[-1, 2\] has a negative dimension"):
        proto_to_tensor(stage_pb2.Tensor(name="x", dtype="float32", shape=[-1, 2], data=b""))
    with pytest.raises(ValueError, match=r"^tensor 'x': duplicate name$"):
        proto_to_tensors([tensor_to_proto("x", np.zeros(1)), tensor_to_proto("x", np.zeros(1))])


# KServe v2


def typed_request(arrays: dict[str, np.ndarray]) -> inference_pb2.ModelInferRequest:
    """A request carrying each array in its typed contents field (as some clients send)."""
    request = inference_pb2.ModelInferRequest(model_name="m")
    for name, array in arrays.items():
        datatype = dtype_to_kserve(array.dtype)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(array.ravel().tolist())
    return request


def raw_request(arrays: dict[str, np.ndarray]) -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name="m")
    numpy_to_infer_request_inputs(arrays, request)
    return inference_pb2.ModelInferRequest.FromString(request.SerializeToString())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", list(KSERVE_TO_NUMPY))
def test_kserve_raw_inputs_decode(datatype: str, shape: tuple[int, ...]) -> None:
    array = sample(KSERVE_TO_NUMPY[datatype].name, shape)
    request = raw_request({"x": array, "y": array[..., :1] if array.ndim else array})
    assert [t.datatype for t in request.inputs] == [datatype, datatype]
    decoded = request_inputs_to_numpy(request)
    assert list(decoded) == ["x", "y"]
    assert_same(decoded["x"], array)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", list(TYPED_FIELD))
def test_kserve_raw_and_typed_inputs_decode_equal(datatype: str, shape: tuple[int, ...]) -> None:
    arrays = {"a": sample(KSERVE_TO_NUMPY[datatype].name, shape), "b": np.arange(3, dtype=np.int64)}
    from_raw = request_inputs_to_numpy(raw_request(arrays))
    from_typed = request_inputs_to_numpy(typed_request(arrays))
    for name, array in arrays.items():
        assert_same(from_raw[name], array)
        assert_same(from_typed[name], array)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("datatype", list(KSERVE_TO_NUMPY))
def test_kserve_response_outputs_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    arrays = {"out": sample(KSERVE_TO_NUMPY[datatype].name, shape, seed=1), "n": np.int32(4)}
    response = inference_pb2.ModelInferResponse(model_name="m", id="r1")
    numpy_to_infer_response_outputs(arrays, response)
    wire = inference_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert [(o.name, o.datatype, tuple(o.shape)) for o in wire.outputs] == [
        ("out", datatype, shape),
        ("n", "INT32", ()),
    ]
    assert len(wire.raw_output_contents) == 2
    assert (
        wire.raw_output_contents[0] == arrays["out"].astype(arrays["out"].dtype.newbyteorder("<")).tobytes()
    )
    back = response_outputs_to_numpy(wire)
    assert_same(back["out"], arrays["out"])
    assert_same(back["n"], np.asarray(arrays["n"]))


def test_kserve_wrong_raw_byte_count_is_precise() -> None:
    request = raw_request({"x": np.zeros((1, 3, 2, 2), np.float32)})
    request.raw_input_contents[0] = b"\0" * 47
    with pytest.raises(
        ValueError,
        match=(
            r"^input 'x' \(FP32, shape \[1, 3, 2, 2\]\): raw_input_contents\[0\] has 47 bytes, expected 48 "
            r"\(12 elements x 4 bytes\)$"
        ),
    ):
        request_inputs_to_numpy(request)


def test_kserve_wrong_typed_count_is_precise() -> None:
    request = typed_request({"ids": np.arange(6, dtype=np.int64).reshape(2, 3)})
    request.inputs[0].contents.int64_contents.append(9)
    with pytest.raises(
        ValueError,
        match=r"^input 'ids' \(INT64, shape \[2, 3\]\): contents.int64_contents has 7 elements, expected 6$",
    ):
        request_inputs_to_numpy(request)


def test_kserve_request_errors() -> None:
    two = raw_request({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    del two.raw_input_contents[1]
    with pytest.raises(ValueError, match=r"^raw_input_contents has 1 entries but the request has 2 inputs"):
        request_inputs_to_numpy(two)

    mixed = raw_request({"a": np.zeros(2, np.float32)})
    mixed.inputs[0].contents.fp32_contents.extend([0.0, 0.0])
    with pytest.raises(ValueError, match=r"has contents.fp32_contents as well as raw_input_contents\[0\]"):
        request_inputs_to_numpy(mixed)

    wrong_field = typed_request({"a": np.zeros(2, np.int32)})
    wrong_field.inputs[0].datatype = "FP32"
    with pytest.raises(
        ValueError, match=r"data is in contents.int_contents, expected contents.fp32_contents"
    ):
        request_inputs_to_numpy(wrong_field)

    fp16 = inference_pb2.ModelInferRequest()
    fp16.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(ValueError, match=r"FP16 has no typed contents; send it in raw_input_contents"):
        request_inputs_to_numpy(fp16)

    overflow = typed_request({"i": np.zeros(2, np.int8)})
    overflow.inputs[0].contents.int_contents[1] = 300
    with pytest.raises(ValueError, match=r"contents.int_contents has values out of range for INT8"):
        request_inputs_to_numpy(overflow)

    dup = raw_request({"a": np.zeros(1, np.float32)})
    dup.inputs.add().CopyFrom(dup.inputs[0])
    dup.raw_input_contents.append(dup.raw_input_contents[0])
    with pytest.raises(ValueError, match=r"^input 'a' \(FP32, shape \[1\]\): duplicate input name$"):
        request_inputs_to_numpy(dup)

    strings = inference_pb2.ModelInferRequest()
    strings.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
    with pytest.raises(ValueError, match=r"unsupported KServe datatype 'BYTES'"):
        request_inputs_to_numpy(strings)

    bad_response = inference_pb2.ModelInferResponse()
    bad_response.outputs.add(name="o", datatype="FP32", shape=[1])
    with pytest.raises(ValueError, match=r"raw_output_contents has 0 entries but the response has 1 outputs"):
        response_outputs_to_numpy(bad_response)
