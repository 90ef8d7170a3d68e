"""A stage worker on its own (no Ray): streams, bounded queue, errors, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from nndeploy.proto import stage_pb2, stage_pb2_grpc
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.tensors import proto_to_tensors, tensors_to_proto
from nndeploy.runtime.worker import StageSpec, serve_stage


def slow_double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not np.isfinite(inputs["x"]).all():
        raise ValueError("non-finite input")
    time.sleep(0.2)
    return {"y": inputs["x"] * 2}


@pytest.fixture
def worker_address():
    """A real StageWorker on 127.0.0.1 in a background event loop; stopped afterwards."""
    loop = asyncio.new_event_loop()
    stops: list[asyncio.Event] = []  # created inside the worker's loop, which it belongs to
    ready = threading.Event()
    port: list[int] = []
    spec = StageSpec(index=0, device="cpu", inputs=("x",), outputs=("y",), downstream=None, queue_size=4)

    def run() -> None:
        asyncio.set_event_loop(loop)
        stops.append(asyncio.Event())
        loop.run_until_complete(
            serve_stage(spec, slow_double, 0, ready=lambda p: (port.append(p), ready.set()), stop=stops[0])
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"127.0.0.1:{port[0]}"
    started = time.monotonic()
    loop.call_soon_threadsafe(stops[0].set)
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - started < 10


def request(request_id: str, x: np.ndarray | None = None, deadline_ns: int = 0, cancel: bool = False):
    tensors = tensors_to_proto({"x": x}) if x is not None else []
    return stage_pb2.StageRequest(
        request_id=request_id, tensors=tensors, deadline_unix_ns=deadline_ns, cancel=cancel
    )


def exchange(address: str, messages: list, expected: int) -> list:
    """Send `messages` on one Process stream; collect `expected` replies (bounded in time)."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = stage_pb2_grpc.StageWorkerStub(channel)
        done = threading.Event()

        def feed():
            yield from messages
            done.wait(20)

        replies = []
        for reply in stub.Process(feed(), timeout=20):
            replies.append(reply)
            if len(replies) == expected:
                done.set()
                break
        return replies


def test_results_errors_and_expired_deadlines(worker_address: str) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    replies = exchange(
        worker_address,
        [request("ok", x), request("bad", np.array([np.nan], np.float32)), request("late", x, deadline_ns=1)],
        expected=3,
    )
    by_id = {r.request_id: r for r in replies}
    assert by_id["ok"].ok and np.array_equal(proto_to_tensors(by_id["ok"].tensors)["y"], x * 2)
    assert (
        not by_id["bad"].ok and by_id["bad"].error_code == "INTERNAL" and "non-finite" in by_id["bad"].error
    )
    assert not by_id["late"].ok and by_id["late"].error_code == "DEADLINE_EXCEEDED"


def test_cancelled_request_is_dropped_while_queued(worker_address: str) -> None:
    x = np.ones((1, 4), np.float32)
    messages = [
        request("first", x),
        request("second", x),
        request("second", cancel=True),
        request("third", x),
    ]
    replies = exchange(worker_address, messages, expected=2)
    assert [r.request_id for r in replies] == ["first", "third"]
    with grpc.insecure_channel(worker_address) as channel:
        stats = stage_pb2_grpc.StageWorkerStub(channel).Stats(stage_pb2.StatsRequest(), timeout=10)
    assert stats.requests == 2 and stats.errors == 0


def test_a_taken_port_is_one_clear_error() -> None:
    import socket

    from nndeploy.runtime.links import PortInUse, bind_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def attempt() -> None:
            server = grpc.aio.server()
            with pytest.raises(PortInUse, match=f"cannot listen on 127.0.0.1:{port}"):
                bind_port(server, "127.0.0.1", port)

        asyncio.run(attempt())
