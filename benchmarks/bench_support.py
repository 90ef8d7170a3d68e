"""Shared pieces of the serving benchmarks: a background event loop for servers, a raw loopback TCP echo
server (the baseline a gRPC hop is compared with), timed round trips through a stage worker's stream and
through the echo server, and small timing and table helpers."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from nndeploy.proto import stage_pb2
from nndeploy.runtime import bulk, shm
from nndeploy.runtime.chain import serve_built_stage
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.links import open_channel
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.tls import TlsFiles
from nndeploy.runtime.wire import Frame, process_stream
from nndeploy.runtime.worker import Execute, StageSpec, serve_stage
from nndeploy.targets.artifacts.manifest import StageBuild

IO_TIMEOUT_S = 30.0  # any single request, reply, socket read or server start
WARMUP = 3  # untimed requests before each measured series


class ServerLoop:
    """An asyncio loop in a background thread hosting gRPC servers; close() stops every one of them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="bench-servers", daemon=True)
        self.workers: list[tuple[asyncio.Event, concurrent.futures.Future[None]]] = []
        self.endpoints: list[tuple[Any, Any]] = []
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = IO_TIMEOUT_S) -> Any:
        """Run `coro` on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_worker(
        self, spec: StageSpec, execute: Execute, port: int = 0, tls: TlsFiles | None = None
    ) -> int:
        """Start a StageWorker (mutual TLS with `tls`); returns its bound port once it serves."""
        return self._start(
            spec, lambda ready, stop: serve_stage(spec, execute, port, ready=ready, stop=stop, tls=tls)
        )

    def start_built(self, build_dir: Path, entry: StageBuild, spec: StageSpec, port: int = 0) -> int:
        """Serve a built stage as `serve` does (runtime.chain.serve_built_stage: an aarch64 stage in the
        emulated python); returns its bound port once it serves (an emulated one takes seconds)."""
        return self._start(
            spec,
            lambda ready, stop: serve_built_stage(build_dir, entry, spec, port, ready=ready, stop=stop),
            timeout_s=300.0,
        )

    def _start(
        self,
        spec: StageSpec,
        serve: Callable[[Callable[[int], None], asyncio.Event], Coroutine[Any, Any, None]],
        timeout_s: float = IO_TIMEOUT_S,
    ) -> int:
        ready = threading.Event()
        bound: list[int] = []

        def on_ready(p: int) -> None:
            bound.append(p)
            ready.set()

        stop = asyncio.Event()  # bound to the server loop on its first wait; set from there only
        future = asyncio.run_coroutine_threadsafe(serve(on_ready, stop), self.loop)
        self.workers.append((stop, future))
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if future.done():
                future.result()  # raises what stopped it
                raise RuntimeError(f"stage {spec.index} worker ended before serving")
            if time.monotonic() > deadline:
                raise RuntimeError(f"stage {spec.index} worker did not start in {timeout_s:.0f} s")
        return bound[0]

    def start_endpoint(self, model: ModelSpec) -> int:
        """Start the KServe v2 endpoint on a free port; returns the port."""
        server, endpoint, port = self.call(start_endpoint(model, 0))
        self.endpoints.append((server, endpoint))
        return port

    def close(self) -> None:
        """Stop the endpoints, then the workers, then the loop (each step bounded in time)."""

        async def stop_endpoint(server: Any, endpoint: Any) -> None:
            if endpoint.watcher is not None:
                endpoint.watcher.cancel()
            await endpoint.links.close()
            await server.stop(grace=1.0)

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            for server, endpoint in reversed(self.endpoints):
                with contextlib.suppress(Exception):
                    self.call(stop_endpoint(server, endpoint), 15)
            for stop, _ in self.workers:
                self.loop.call_soon_threadsafe(stop.set)
            for _, future in self.workers:
                with contextlib.suppress(Exception):
                    future.result(15)
            with contextlib.suppress(Exception):
                self.call(cancel_the_rest(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(15)
            if not self.thread.is_alive():
                self.loop.close()

    def __enter__(self) -> ServerLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill `view` from `sock`; False if the peer closed first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


class EchoServer:
    """A raw TCP echo on 127.0.0.1: reads an 8-byte length and that many bytes, sends the bytes back.

    One connection at a time, any number in turn."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)  # accept() wakes up to notice close()
        self.closing = threading.Event()
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, name="bench-echo", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """Serve one connection at a time until the listening socket is closed."""
        buffer = bytearray()
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conn = conn
            with conn, contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(IO_TIMEOUT_S)
                header = bytearray(8)
                while recv_exact(conn, memoryview(header)):
                    (size,) = struct.unpack("<Q", header)
                    if len(buffer) < size:
                        buffer = bytearray(size)
                    view = memoryview(buffer)[:size]
                    if not recv_exact(conn, view):
                        break
                    conn.sendall(view)
            self.conn = None

    def close(self) -> None:
        """Stop accepting and end the connection; waits for the thread."""
        self.closing.set()
        for sock in (self.sock, self.conn):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.thread.join(IO_TIMEOUT_S)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ----------------------------------------------------------------------------------------------


async def grpc_round_trips(
    address: str,
    request: Frame,
    nbytes: int,
    count: int,
    tls: TlsFiles | None = None,
    shared: bool = False,
    side: bool = False,
) -> list[float]:
    """`count` timed round trips (after WARMUP) of `request` over one Process stream, sent and read with
    the data plane's own codec (runtime.wire), as a worker's links do: over mutual TLS with `tls`; with
    `shared`, the stream announces this host's shared memory, so both directions hand the tensor over in
    a segment (runtime.shm; refused if the worker does not share it); with `side`, both directions send
    the message on the stream's side connection (runtime.bulk; refused if the worker offers none; the
    request must be large enough to go there). Otherwise the tensor travels inline in the gRPC messages.
    ms each."""
    channel = open_channel(address, tls)
    try:
        await asyncio.wait_for(channel.channel_ready(), IO_TIMEOUT_S)
        token = bulk.new_token()
        metadata = (shm.metadata() if shared else ()) + (((bulk.TOKEN_KEY, token),) if side else ())
        call = process_stream(channel)(metadata=metadata)
        pool = connection = None
        if shared:
            if not shm.shares_with(await asyncio.wait_for(call.initial_metadata(), IO_TIMEOUT_S)):
                raise RuntimeError("the worker does not share this process's shared memory")
            pool = shm.Pool()
        if side:
            offered = await asyncio.wait_for(call.initial_metadata(), IO_TIMEOUT_S)
            connection = await bulk.connect(address, offered, token, stage_pb2.StageReply)
            if connection is None or not connection.takes(request):
                raise RuntimeError("the worker offers no side connection, or the request is too small for it")
        times: list[float] = []
        try:
            for i in range(WARMUP + count):
                started = time.perf_counter()
                sent = request if pool is None else Frame(request.message, pool.place(request.tensors))
                if connection is not None:
                    connection.send(sent)
                    reply = await asyncio.wait_for(connection.receive(), IO_TIMEOUT_S)
                else:
                    await asyncio.wait_for(call.write(sent), IO_TIMEOUT_S)
                    reply = await asyncio.wait_for(call.read(), IO_TIMEOUT_S)
                elapsed = (time.perf_counter() - started) * 1e3
                if reply is None or reply is grpc.aio.EOF or not reply.message.ok:
                    raise RuntimeError(f"worker replied {reply}")
                if reply.nbytes != nbytes:
                    raise RuntimeError("worker replied with a different number of bytes")
                if i >= WARMUP:
                    times.append(elapsed)
            await call.done_writing()
        finally:
            call.cancel()
            if pool is not None:
                pool.close()
            if connection is not None:
                connection.close()
        return times
    finally:
        await channel.close()


def raw_round_trips(port: int, payload: bytes, count: int) -> list[float]:
    """`count` timed round trips (after WARMUP) of `payload` through the echo server; ms each."""
    header = struct.pack("<Q", len(payload))
    back = memoryview(bytearray(len(payload)))
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(WARMUP + count):
            started = time.perf_counter()
            sock.sendall(header)
            sock.sendall(payload)
            if not recv_exact(sock, back):
                raise RuntimeError("echo server closed the connection")
            elapsed = (time.perf_counter() - started) * 1e3
            if i >= WARMUP:
                times.append(elapsed)
    return times


def median(values: list[float]) -> float:
    """The median, NaN when empty."""
    return statistics.median(values) if values else float("nan")


def timed_ms(fn: Callable[[], Any], count: int) -> list[float]:
    """Run `fn` `count` times; the time of each run in ms."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain right-aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join("    " + line for line in lines)


def int_list(text: str) -> list[int]:
    """'1,4,8' -> [1, 4, 8] (positive integers)."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """'20,30' -> [20.0, 30.0] (non-negative numbers)."""
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0 separated by commas, got {text!r}")
    return values


# --- 1. per-hop overhead ----------------------------------------------------------------------------------
