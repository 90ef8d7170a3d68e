"""The data plane's wire codec: plain stage.proto bytes on the wire, tensors spliced in and read in place."""

from __future__ import annotations

import numpy as np
import pytest

from nndeploy.proto import stage_pb2
from nndeploy.runtime.tensors import proto_to_tensors, tensors_to_proto
from nndeploy.runtime.wire import Frame, decoder, encode, frame
from tests.runtime.test_worker import exchange, worker_address  # noqa: F401  (the fixture)

ARRAYS = {
    "x": np.arange(12, dtype=np.float32).reshape(3, 4),
    "ids": np.array([[1, -2]], dtype=np.int64),
    "scalar": np.array(2.5, dtype=np.float64),
    "empty": np.zeros((0, 3), dtype=np.uint8),
    "swapped": np.arange(4, dtype=">i4"),  # big-endian: sent little-endian
    "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],  # not contiguous
}


def test_encoded_frames_are_plain_protobuf() -> None:
    message = stage_pb2.StageRequest(request_id="r", reply_to="h:1", timings=[stage_pb2.StageTiming(stage=0)])
    wire = stage_pb2.StageRequest.FromString(encode(frame(message, ARRAYS)))
    assert wire.request_id == "r" and wire.reply_to == "h:1" and wire.timings[0].stage == 0
    decoded = proto_to_tensors(wire.tensors)
    assert list(decoded) == list(ARRAYS)
    for name, array in ARRAYS.items():
        assert decoded[name].shape == array.shape and np.array_equal(decoded[name], array)


def test_plain_protobuf_decodes_into_views() -> None:
    reply = stage_pb2.StageReply(request_id="r", ok=True, stage=2, tensors=tensors_to_proto(ARRAYS))
    raw = reply.SerializeToString()
    got = decoder(stage_pb2.StageReply)(raw)
    assert got.message.request_id == "r" and got.message.ok and got.message.stage == 2
    assert len(got.message.tensors) == 0 and got.nbytes == sum(np.asarray(a).nbytes for a in ARRAYS.values())
    arrays = got.arrays()
    for name, array in ARRAYS.items():
        assert np.array_equal(arrays[name], array) and arrays[name].dtype == array.dtype.newbyteorder("=")
    # Read in place: the array's memory is the received message's.
    x = arrays["x"]
    assert not x.flags.writeable and np.shares_memory(x, np.frombuffer(raw, np.uint8))


def test_frames_round_trip() -> None:
    message = stage_pb2.StageReply(request_id="q", ok=True)
    back = decoder(stage_pb2.StageReply)(encode(frame(message, ARRAYS)))
    assert back.message == message
    assert {n: a.tolist() for n, a in back.arrays().items()} == {n: a.tolist() for n, a in ARRAYS.items()}


def test_malformed_bytes_and_headers_are_value_errors() -> None:
    raw = encode(frame(stage_pb2.StageRequest(request_id="r"), {"x": np.ones(1000, np.float32)}))
    with pytest.raises(ValueError, match="runs past its end"):
        decoder(stage_pb2.StageRequest)(raw[:-10])
    with pytest.raises(ValueError, match="wire type"):
        decoder(stage_pb2.StageRequest)(b"\x0f")
    wrong = stage_pb2.Tensor(name="x", dtype="float32", shape=[3], data=b"\0" * 8)
    bad = decoder(stage_pb2.StageRequest)(stage_pb2.StageRequest(tensors=[wrong]).SerializeToString())
    with pytest.raises(ValueError, match=r"tensor 'x' .* has 8 bytes, expected 12"):
        bad.arrays()
    twice = Frame(stage_pb2.StageRequest(), (*frame(None, {"x": np.ones(1)}).tensors,) * 2)
    with pytest.raises(ValueError, match="duplicate"):
        twice.arrays()
    with pytest.raises(ValueError, match="beside it"):
        encode(Frame(stage_pb2.StageRequest(tensors=[wrong])))


def test_a_header_that_disagrees_with_its_bytes_fails_that_request_only(worker_address: str) -> None:  # noqa: F811
    x = np.ones((2, 2), np.float32)
    wrong = stage_pb2.Tensor(name="x", dtype="float32", shape=[2, 3], data=x.tobytes())
    messages = [
        stage_pb2.StageRequest(request_id="bad", tensors=[wrong]),
        stage_pb2.StageRequest(request_id="good", tensors=tensors_to_proto({"x": x})),
    ]
    replies = {r.request_id: r for r in exchange(worker_address, messages, expected=2)}
    assert replies["bad"].error_code == "INVALID_ARGUMENT"
    assert "stage 0" in replies["bad"].error and "16 bytes, expected 24" in replies["bad"].error
    assert replies["good"].ok and np.array_equal(proto_to_tensors(replies["good"].tensors)["y"], x * 2)


def test_bad_requests_leave_no_memory_behind(worker_address: str) -> None:  # noqa: F811
    import gc
    import tracemalloc

    wrong = stage_pb2.Tensor(name="x", dtype="float32", shape=[512, 512], data=b"\0" * 1000)
    gone = stage_pb2.Tensor(name="x", dtype="float32", shape=[4])
    gone.shared.CopyFrom(stage_pb2.SharedBytes(segment="nndeploy-1-999999999-0", offset=64, nbytes=16))

    def batch() -> None:
        messages = [
            stage_pb2.StageRequest(request_id=f"r{i}", tensors=[wrong if i % 2 else gone]) for i in range(100)
        ]
        replies = exchange(worker_address, messages, expected=100)
        assert {r.error_code for r in replies} == {"INVALID_ARGUMENT", "UNAVAILABLE"}

    batch()  # warm: connections, caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        batch()
        batch()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 << 10, f"{grown} bytes kept after 200 bad requests"
