"""Shared memory between processes of one host: segments placed, read once, reused, and cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nndeploy.proto import stage_pb2
from nndeploy.runtime import shm
from nndeploy.runtime.tensors import tensors_to_proto
from nndeploy.runtime.wire import decoder, encode, frame
from tests.runtime.test_worker import exchange, worker_address  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not shm.identity(), reason="no /dev/shm here")

BIG = np.arange(256 * 1024, dtype=np.float32).reshape(512, 512)  # 1 MiB


def test_placed_tensors_are_read_once_and_their_segment_reused() -> None:
    pool = shm.Pool()
    try:
        sent = frame(stage_pb2.StageRequest(request_id="r"), {"big": BIG, "small": np.ones(3)})
        placed = pool.place(sent.tensors)
        header, data = placed[0]
        assert header.shared.segment and data.nbytes == 0  # the stream carries only where it is
        assert not placed[1][0].HasField("shared") and placed[1][1].nbytes == 24  # small: inline
        raw = encode(type(sent)(sent.message, placed))
        assert len(raw) < 1000
        got = decoder(stage_pb2.StageRequest)(raw)
        big = got.arrays()["big"]
        assert got.problem == "" and np.array_equal(big, BIG)
        assert not big.flags.owndata  # read in place, not copied
        with pytest.raises(shm.SharedMemoryError, match="holds no message"):
            shm.take(header.shared)  # read once
        lent = pool.place(sent.tensors)  # the receiver still holds the first: a second segment
        assert lent[0][0].shared.segment != header.shared.segment and len(pool.segments) == 2
        row = big[3]  # a view of a view keeps the segment lent
        del got, big
        busy = pool.place(sent.tensors)  # the second is still waiting to be read: a third
        assert len(pool.segments) == 3 and float(row[0]) == BIG[3, 0]
        del row  # the last view is gone: the first segment is free again
        again = pool.place(sent.tensors)
        assert again[0][0].shared.segment == header.shared.segment and len(pool.segments) == 3
        assert busy[0][0].shared.segment not in (header.shared.segment, lent[0][0].shared.segment)
    finally:
        names = [name for name, _ in pool.segments]
        pool.close()
    assert not any((shm.ROOT / name).exists() for name in names)


def test_a_full_pool_sends_inline() -> None:
    pool = shm.Pool(limit=1)
    try:
        first = pool.place(frame(None, {"x": BIG}).tensors)
        second = pool.place(frame(None, {"x": BIG}).tensors)
        assert first[0][0].HasField("shared") and not second[0][0].HasField("shared")
        assert second[0][1].nbytes == BIG.nbytes
    finally:
        pool.close()


def test_missing_small_and_foreign_segments_are_clear_errors() -> None:
    pool = shm.Pool()
    header = pool.place(frame(None, {"x": BIG}).tensors)[0][0]
    shared = header.shared
    too_big = stage_pb2.SharedBytes(segment=shared.segment, offset=shared.offset, nbytes=1 << 30)
    with pytest.raises(shm.SharedMemoryError, match="the message needs"):
        shm.take(too_big)
    pool.close()
    shm.forget()
    with pytest.raises(shm.SharedMemoryError, match="vanished"):
        shm.take(shared)
    with pytest.raises(shm.SharedMemoryError, match="not an nndeploy segment"):
        shm.take(stage_pb2.SharedBytes(segment="../../etc/passwd", offset=64, nbytes=4))
    # Decoded, a vanished segment fails that message only.
    got = decoder(stage_pb2.StageRequest)(stage_pb2.StageRequest(tensors=[header]).SerializeToString())
    assert got.tensors == () and "vanished" in got.problem


def test_segments_of_a_dead_process_are_swept() -> None:
    script = (
        "import os, numpy as np\n"
        "from nndeploy.runtime import shm\n"
        "from nndeploy.runtime.wire import frame\n"
        "h = shm.Pool().place(frame(None, {'x': np.ones(1 << 18, np.float32)}).tensors)[0][0]\n"
        "print(h.shared.segment, flush=True)\n"
        "os._exit(0)  # as if killed: no cleanup\n"
    )
    name = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    left = shm.ROOT / name.strip()
    assert left.exists()
    mine = shm.Pool()
    mine.place(frame(None, {"x": BIG}).tensors)
    try:
        assert left.name in shm.sweep() and not left.exists()
        assert all((shm.ROOT / n).exists() for n, _ in mine.segments)  # a live process's stay
    finally:
        mine.close()


def test_shared_memory_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shm.SWITCH_ENV, "0")
    shm.identity.cache_clear()
    try:
        assert shm.identity() == "" and shm.metadata() == ()
        assert not shm.shares_with([(shm.METADATA_KEY, "")])
    finally:
        monkeypatch.undo()
        shm.identity.cache_clear()
    assert shm.shares_with(shm.metadata())


def test_a_vanished_segment_fails_that_request_only(worker_address: str) -> None:  # noqa: F811
    gone = stage_pb2.Tensor(name="x", dtype="float32", shape=[2, 2])
    gone.shared.CopyFrom(stage_pb2.SharedBytes(segment="nndeploy-1-999999999-0", offset=64, nbytes=16))
    x = np.ones((2, 2), np.float32)
    messages = [
        stage_pb2.StageRequest(request_id="gone", tensors=[gone]),
        stage_pb2.StageRequest(request_id="good", tensors=tensors_to_proto({"x": x})),
    ]
    replies = {r.request_id: r for r in exchange(worker_address, messages, expected=2)}
    assert replies["gone"].error_code == "UNAVAILABLE"
    assert "stage 0" in replies["gone"].error and "vanished" in replies["gone"].error
    assert replies["good"].ok
    assert not list(Path("/dev/shm").glob("nndeploy-1-999999999-*"))
