"""Side connections (runtime.bulk): large messages leave the gRPC stream for a plain TCP connection beside
it, both ways; a chain uses them without being told; bad records break only the side connection; nothing
is left behind."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from nndeploy.errors import NNDeployError
from nndeploy.proto import stage_pb2
from nndeploy.runtime import bulk, shm
from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.served import ModelSpec, Request
from nndeploy.runtime.wire import Frame, encode, encode_parts, frame, process_stream
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec

BIG = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)  # 1 MiB: over bulk.MIN_BYTES
SPEC = TensorSpec("x", (512, 512), "float32")


def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * 2}


def with_worker(body: Callable[[str], Awaitable[Any]]) -> Any:
    """Run `body(address)` against a real StageWorker computing y = 2x, then stop it."""

    async def scenario() -> Any:
        (port,) = free_ports(1)
        stop = asyncio.Event()
        spec = StageSpec(0, "cpu", ("x",), ("y",), None)
        worker = asyncio.create_task(serve_stage(spec, double, port, stop=stop))
        try:
            await asyncio.sleep(0.3)
            return await body(f"127.0.0.1:{port}")
        finally:
            stop.set()
            await worker

    return asyncio.run(asyncio.wait_for(scenario(), 60))


async def open_stream(address: str) -> tuple[grpc.aio.Channel, Any, str, int]:
    """A Process stream that asked for a side connection: (channel, call, token, the offered port)."""
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    token = bulk.new_token()
    call = process_stream(channel)(metadata=((bulk.TOKEN_KEY, token),))
    offered = await asyncio.wait_for(call.initial_metadata(), 10)
    port = bulk.metadata_value(offered, bulk.PORT_KEY)
    assert port is not None, "the worker offers no side connection"
    return channel, call, token, int(port)


def bulk_threads() -> int:
    return sum(t.name.startswith("bulk_") for t in threading.enumerate())


def test_large_messages_go_on_the_side_connection_both_ways() -> None:
    async def body(address: str) -> Any:
        channel, call, token, port = await open_stream(address)
        side = await bulk.connect(address, ((bulk.PORT_KEY, str(port)),), token, stage_pb2.StageReply)
        assert side is not None
        try:
            big = frame(stage_pb2.StageRequest(request_id="big"), {"x": BIG})
            small = frame(stage_pb2.StageRequest(request_id="small"), {"x": np.ones(4, np.float32)})
            assert side.takes(big) and not side.takes(small)
            assert side.send(big)
            big_reply = await asyncio.wait_for(side.receive(), 10)  # a large reply comes back beside it
            await call.write(small)
            small_reply = await asyncio.wait_for(call.read(), 10)  # a small one on the stream
            return big_reply, small_reply, side.sent, side.received
        finally:
            side.close()
            call.cancel()
            await channel.close()

    threads = bulk_threads()
    big_reply, small_reply, sent, received = with_worker(body)
    assert big_reply.message.request_id == "big" and big_reply.message.ok
    np.testing.assert_array_equal(big_reply.arrays()["y"], BIG * 2)
    assert small_reply.message.request_id == "small" and small_reply.message.ok
    np.testing.assert_array_equal(small_reply.arrays()["y"], np.full(4, 2, np.float32))
    assert (sent, received) == (1, 1)
    deadline = time.monotonic() + 5
    while bulk_threads() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bulk_threads() == threads  # every connection's threads ended with it


def chain_run(body: Callable[[Any, list], Awaitable[Any]]) -> Any:
    """Run `body(endpoint, workers_sides)` against an endpoint and two workers (y = 2x, then z = y + 1)
    passing 1 MiB tensors; `workers_sides` holds each worker's bulk Listener (None when off)."""
    stage_ports = free_ports(3)
    client_port = stage_ports.pop()
    model = ModelSpec(
        "m",
        "1",
        (SPEC,),
        (TensorSpec("z", (512, 512), "float32"),),
        (("a", f"127.0.0.1:{stage_ports[0]}"), ("b", f"127.0.0.1:{stage_ports[1]}")),
    )
    specs = (
        StageSpec(0, "a", ("x",), ("y",), f"127.0.0.1:{stage_ports[1]}"),
        StageSpec(1, "b", ("y",), ("z",), None),
    )
    stages = (double, lambda t: {"z": t["y"] + 1})
    listeners: list = []
    original = bulk.listen

    def recording(*args: Any, **kwargs: Any) -> Any:
        listeners.append(original(*args, **kwargs))
        return listeners[-1]

    async def scenario() -> Any:
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(serve_stage(spec, stage, port, stop=stop))
            for spec, stage, port in zip(specs, stages, stage_ports, strict=True)
        ]
        server, endpoint, _ = await start_endpoint(model, client_port)
        try:
            for _ in range(100):
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            return await body(endpoint, listeners)
        finally:
            stop.set()
            await endpoint.close("test over")
            await server.stop(grace=1.0)
            await asyncio.gather(*workers)

    bulk.listen = recording  # type: ignore[assignment]
    try:
        return asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        bulk.listen = original  # type: ignore[assignment]


async def three_requests(endpoint: Any, listeners: list) -> Any:
    outputs = [await endpoint.infer("m", "", lambda i=i: Request({"x": BIG + i})) for i in range(3)]
    channels = [channel for listener in listeners if listener is not None for channel in listener.channels()]
    return outputs, [(c.sent, c.received) for c in channels]


def test_a_chain_sends_its_large_tensors_on_side_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shm.SWITCH_ENV, "0")  # one host: shared memory would be used first
    shm.identity.cache_clear()
    try:
        outputs, counts = chain_run(three_requests)
    finally:
        monkeypatch.undo()
        shm.identity.cache_clear()
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out["z"], (BIG + i) * 2 + 1)
    # Three listeners (two workers, the endpoint's result sink), each receiving the three messages
    # (the first may still have gone on the stream while its side connection was being made).
    assert len(counts) == 3
    assert all(received >= 2 and sent == 0 for sent, received in counts), counts


def test_on_one_host_shared_memory_and_the_side_connection_work_together() -> None:
    placed: list[int] = []
    original = shm.Pool.place

    def counting(self: shm.Pool, tensors: Any) -> Any:
        out = original(self, tensors)
        placed.extend(1 for header, _ in out if header.HasField("shared"))
        return out

    shm.Pool.place = counting  # type: ignore[method-assign]
    try:
        outputs, counts = chain_run(three_requests)
    finally:
        shm.Pool.place = original  # type: ignore[method-assign]
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out["z"], (BIG + i) * 2 + 1)
    # The tensors wait in shared memory; where they are travels on the side connections, not the streams.
    assert len(placed) >= 6
    assert len(counts) == 3 and all(received >= 2 for _, received in counts), counts


def test_segments_read_in_place_go_back_to_their_sender_once_computed_on() -> None:
    pools: set[shm.Pool] = set()
    original = shm.Pool.place

    def recording(self: shm.Pool, tensors: Any) -> Any:
        pools.add(self)
        return original(self, tensors)

    async def ten_requests(endpoint: Any, listeners: list) -> list[int]:
        for i in range(10):
            out = await endpoint.infer("m", "", lambda i=i: Request({"x": BIG + i}))
            np.testing.assert_array_equal(out["z"], (BIG + i) * 2 + 1)
            del out  # the result, read in place, was the last view of its segment
        return [len(pool.segments) for pool in pools]

    shm.Pool.place = recording  # type: ignore[method-assign]
    try:
        sizes = chain_run(ten_requests)
    finally:
        shm.Pool.place = original  # type: ignore[method-assign]
    # Three hops placed 1 MiB tensors ten times each; every pool reused its segments (a lent segment never
    # handed back would have cost a new one per request).
    assert len(sizes) == 3 and all(1 <= size <= 2 for size in sizes), sizes


def test_with_side_connections_off_the_chain_sends_on_its_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bulk.SWITCH_ENV, "0")
    monkeypatch.setenv(shm.SWITCH_ENV, "0")
    shm.identity.cache_clear()

    async def body(endpoint: Any, listeners: list) -> Any:
        outputs, _ = await three_requests(endpoint, listeners)
        return outputs, listeners, [link._side for link in endpoint.links._links.values()]

    try:
        outputs, listeners, sides = chain_run(body)
    finally:
        monkeypatch.undo()
        shm.identity.cache_clear()
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out["z"], (BIG + i) * 2 + 1)
    assert listeners == [None, None, None] and sides == [None]  # no server offered one, none was made


def test_a_server_unreachable_beside_its_stream_means_inline() -> None:
    async def body() -> Any:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        offered = ((bulk.PORT_KEY, str(port)),)
        return (
            await bulk.connect(f"127.0.0.1:{port}", offered, bulk.new_token(), stage_pb2.StageReply),
            await bulk.connect("127.0.0.1:1", (), bulk.new_token(), stage_pb2.StageReply),
        )

    assert asyncio.run(body()) == (None, None)


def raw_side(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(token.encode("ascii"))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bad_records_break_only_the_side_connection() -> None:
    header = stage_pb2.Tensor(name="x", dtype="float32", shape=[512, 512])  # 1 MiB said, 64 KiB sent
    mismatched = Frame(stage_pb2.StageRequest(request_id="short"), ((header, memoryview(bytes(64 << 10))),))

    async def body(address: str) -> Any:
        found: dict[str, Any] = {}
        channel, call, token, port = await open_stream(address)
        try:
            oversized = await asyncio.to_thread(raw_side, port, token)
            oversized.sendall(struct.pack("<Q", 1 << 40))  # over the 1 GiB message limit
            found["oversized closed"] = await asyncio.to_thread(closed_by_peer, oversized)
            oversized.close()
            await call.write(frame(stage_pb2.StageRequest(request_id="after"), {"x": np.ones(2, np.float32)}))
            found["after"] = await asyncio.wait_for(call.read(), 10)  # the stream goes on
        finally:
            call.cancel()
            await channel.close()
        channel, call, token, port = await open_stream(address)
        try:
            stranger = await asyncio.to_thread(raw_side, port, bulk.new_token())  # nobody's token
            found["stranger closed"] = await asyncio.to_thread(closed_by_peer, stranger)
            stranger.close()
            garbage = await asyncio.to_thread(raw_side, port, token)
            garbage.sendall(struct.pack("<Q", 4) + b"\xff\xff\xff\xff")  # does not decode
            found["garbage closed"] = await asyncio.to_thread(closed_by_peer, garbage)
            garbage.close()
        finally:
            call.cancel()
            await channel.close()
        channel, call, token, port = await open_stream(address)
        try:
            side = await bulk.connect(address, ((bulk.PORT_KEY, str(port)),), token, stage_pb2.StageReply)
            assert side is not None
            side.send(mismatched)  # decodes; the stage finds the byte count wrong
            found["short"] = await asyncio.wait_for(call.read(), 10)  # a failure has no tensors: stream
            side.send(frame(stage_pb2.StageRequest(request_id="next"), {"x": BIG}))
            found["next"] = await asyncio.wait_for(side.receive(), 10)
            side.close()
        finally:
            call.cancel()
            await channel.close()
        return found

    found = with_worker(body)
    assert found["oversized closed"] and found["stranger closed"] and found["garbage closed"]
    assert found["after"].message.ok
    short = found["short"].message
    assert short.error_code == "INVALID_ARGUMENT" and "stage 0" in short.error and "'x'" in short.error
    assert found["next"].message.ok and np.array_equal(found["next"].arrays()["y"], BIG * 2)


def test_bad_records_leave_no_memory_behind() -> None:
    async def body(address: str) -> int:
        async def one_bad_stream() -> None:
            channel, call, token, port = await open_stream(address)
            try:
                sock = await asyncio.to_thread(raw_side, port, token)
                sock.sendall(struct.pack("<Q", 1 << 40))
                await asyncio.to_thread(closed_by_peer, sock)
                sock.close()
            finally:
                call.cancel()
                await channel.close()

        for _ in range(10):  # warm up grpc's and the worker's own caches
            await one_bad_stream()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            await one_bad_stream()
        await asyncio.sleep(0.5)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return grown

    threads = bulk_threads()
    assert with_worker(body) < 512 << 10
    assert bulk_threads() == threads


def test_a_receiver_that_falls_behind_holds_back_the_sender() -> None:
    async def body() -> Any:
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        server.close()
        loop = asyncio.get_running_loop()
        sender = bulk.Channel(client, loop, stage_pb2.StageReply)
        receiver = bulk.Channel(accepted, loop, stage_pb2.StageRequest)
        message = frame(stage_pb2.StageRequest(request_id="r"), {"x": np.zeros(4 << 20, np.uint8)})
        for _ in range(80):  # 320 MiB (one buffer, sent 80 times), never read
            sender.send(message)
        await asyncio.sleep(1.0)
        queued = sender._queued
        try:
            await asyncio.wait_for(sender.room(), 0.3)
            waiting = "returned"
        except TimeoutError:
            waiting = "waits"
        first = await asyncio.wait_for(receiver.receive(), 5)
        sender.close()
        receiver.close()
        return queued, receiver._inbox.qsize(), waiting, first

    queued, inbox, waiting, first = asyncio.run(body())
    # The receiver read at most SLOTS messages; the rest waits in the sender's queue (not in the socket,
    # not in the receiver's memory), so the sender's stream would stop taking messages.
    assert inbox <= bulk.SLOTS and queued > bulk.QUEUED_BYTES
    assert waiting == "waits"
    assert first.message.request_id == "r" and first.arrays()["x"].nbytes == 4 << 20


def test_the_wire_bytes_are_the_streams_own() -> None:
    message = frame(stage_pb2.StageRequest(request_id="r", reply_to="h:1"), {"x": BIG, "s": np.ones(3)})
    parts = encode_parts(message)
    assert b"".join(bytes(memoryview(p)) for p in parts) == encode(message)
    assert any(memoryview(p).nbytes == BIG.nbytes for p in parts)  # the elements themselves, not a copy


def test_a_side_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NNDeployError, match=f"127.0.0.1:{port} for side connections.*--side-port"):
            bulk.listen("127.0.0.1", port=port)
    listener = bulk.listen("127.0.0.1")  # any free port: fine
    assert listener is not None and listener.port > 0
    listener.close()
