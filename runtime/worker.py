"""StageWorker: a gRPC server that runs one stage's artifact and streams its results onward.

Lifecycle as in Triton's backends: initialize (load and check the artifact), execute (per request),
finalize (stop serving, drain). Requests arrive on a stream from upstream (the endpoint for stage 0, the
previous worker otherwise) into a bounded queue — a full queue stops reading the stream, so backpressure
travels upstream through gRPC flow control instead of memory growing. Outputs go straight to the next
worker; the last stage (or any stage that fails a request) sends its reply to the endpoint's result sink.
Several requests are in flight at once across the chain, so stages overlap (pipelining).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from nndeploy.proto import health_pb2, health_pb2_grpc, stage_pb2
from nndeploy.runtime import bulk, shm
from nndeploy.runtime.links import CHANNEL_OPTIONS, Links, PeerUnavailable, bind_port
from nndeploy.runtime.malloc import keep_large_buffers
from nndeploy.runtime.tls import ENDPOINT_IDENTITY, TlsFiles, stage_identity
from nndeploy.runtime.wire import Frame, frame, worker_handler

MAX_CANCELLED = 10_000
Execute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class StageSpec:
    """What a worker needs to know about its place in the chain."""

    index: int
    device: str
    inputs: tuple[str, ...]  # tensors the stage receives (model inputs of this stage + forwarded ones)
    outputs: tuple[str, ...]  # tensors it sends on (its own outputs + forwarded ones)
    downstream: str | None  # next worker's address; None for the last stage
    queue_size: int = 16


@dataclass
class Counters:
    """Per-stage metrics, exported through Stats and by the endpoint in Prometheus format."""

    requests: int = 0
    errors: int = 0
    compute_ms_total: float = 0.0
    transfer_ms_total: float = 0.0
    bytes_received: int = 0
    bytes_sent: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class StageWorker(health_pb2_grpc.HealthServicer):
    """The servicer: a bounded queue, one executor thread, and the outgoing links. Process streams Frames
    (runtime.wire): tensors stay views over the received bytes."""

    def __init__(
        self,
        spec: StageSpec,
        execute: Execute,
        tls: TlsFiles | None = None,
        side: bulk.Listener | None = None,
    ) -> None:
        self.spec = spec
        self.side = side  # side connections for the tensors of incoming streams (runtime.bulk)
        self.execute = execute
        self.counters = Counters()
        # (request, where its reply goes, perf_counter at arrival, ms from its sending to its arrival)
        self.queue: asyncio.Queue[tuple[Frame, asyncio.Queue | None, float, float]] = asyncio.Queue(
            spec.queue_size
        )
        self.tls = tls
        self.links = Links(tls)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage{spec.index}")
        self.loop_task: asyncio.Task[None] | None = None
        # Ids of cancelled requests, oldest first, bounded: a cancellation for a request that already left
        # this stage is never matched, and must not be kept forever.
        self.cancelled: OrderedDict[str, None] = OrderedDict()

    def start(self) -> None:
        """Start the execution loop (call from the server's event loop)."""
        self.loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop executing and close outgoing streams."""
        if self.loop_task is not None:
            self.loop_task.cancel()
        await self.links.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def Process(self, request_iterator: AsyncIterator[Frame], context: Any) -> AsyncIterator[Frame]:
        """Receive requests from upstream; replies for requests without reply_to come back on this stream."""
        upstream = ENDPOINT_IDENTITY if self.spec.index == 0 else stage_identity(self.spec.index - 1)
        refused = self.tls.peer_refused(context, upstream) if self.tls is not None else None
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        local: asyncio.Queue[Frame | None] = asyncio.Queue()
        side, offer = (
            self.side.expect(context.invocation_metadata(), stage_pb2.StageRequest)
            if self.side
            else (None, ())
        )
        await context.send_initial_metadata(shm.metadata() + offer)
        # Replies on this stream go through shared memory when the caller shares this host's.
        pool = shm.Pool() if shm.shares_with(context.invocation_metadata()) else None

        async def take(request: Frame) -> None:
            if request.message.cancel:
                await self._cancel(request)
                return
            back = None if request.message.reply_to else local
            if request.problem:  # its elements could not be read: it fails, the stream goes on
                self.counters.requests += 1
                await self._fail(
                    request.message, back, "UNAVAILABLE", f"stage {self.spec.index}: {request.problem}"
                )
                return
            self.counters.bytes_received += request.nbytes
            sent = request.message.sent_unix_ns
            transfer_ms = max(0.0, (time.time_ns() - sent) / 1e6) if sent else 0.0
            await self.queue.put((request, back, time.perf_counter(), transfer_ms))

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    await take(request)
            finally:
                await local.put(None)

        async def pump_side() -> None:  # large requests arrive on the stream's side connection
            assert side is not None
            channel = await side
            while (request := await channel.receive()) is not None:
                await take(request)

        readers = [asyncio.create_task(pump())]
        if side is not None:
            readers.append(asyncio.create_task(pump_side()))
        try:
            while (reply := await local.get()) is not None:
                if pool is not None:
                    reply = Frame(reply.message, pool.place(reply.tensors))
                if side is not None and side.done() and side.result().takes(reply):
                    await side.result().room()
                    if side.result().send(reply):
                        continue
                yield reply
        finally:
            for reader in readers:
                reader.cancel()
            if pool is not None:
                pool.close()
            if self.side is not None:
                self.side.forget(side)
            # The upstream may have died holding segments: remove those of dead processes, and let go of
            # every mapping (a live sender's is mapped again on its next message).
            shm.sweep()
            shm.forget()

    async def Stats(self, request: stage_pb2.StatsRequest, context: Any) -> stage_pb2.StageStats:
        """This stage's counters."""
        refused = self.tls.peer_refused(context, ENDPOINT_IDENTITY) if self.tls is not None else None
        if refused:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        c = self.counters
        return stage_pb2.StageStats(
            stage=self.spec.index,
            device=self.spec.device,
            requests=c.requests,
            errors=c.errors,
            queue_depth=self.queue.qsize(),
            compute_ms_total=c.compute_ms_total,
            transfer_ms_total=c.transfer_ms_total,
            bytes_received=c.bytes_received,
            bytes_sent=c.bytes_sent,
        )

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1: serving while the execution loop is alive."""
        alive = self.loop_task is not None and not self.loop_task.done()
        status = (
            health_pb2.HealthCheckResponse.SERVING if alive else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=status)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            received, local, arrived, transfer_ms = await self.queue.get()
            request = received.message
            if self._was_cancelled(request.request_id):
                continue  # cancelled while queued: no work, no reply (the endpoint has answered its client)
            self.counters.requests += 1
            if request.deadline_unix_ns and time.time_ns() > request.deadline_unix_ns:
                await self._fail(
                    request, local, "DEADLINE_EXCEEDED", f"deadline passed before stage {self.spec.index}"
                )
                continue
            try:
                inputs = received.arrays()
            except ValueError as exc:  # a header that disagrees with its bytes, a dtype not supported
                await self._fail(request, local, "INVALID_ARGUMENT", f"stage {self.spec.index}: {exc}")
                continue
            try:
                started = time.perf_counter()
                outputs = await loop.run_in_executor(self.pool, self.execute, inputs)
                compute_ms = (time.perf_counter() - started) * 1e3
                sent = {
                    name: outputs[name] if name in outputs else inputs[name] for name in self.spec.outputs
                }
            except KeyError as exc:
                await self._fail(
                    request, local, "INVALID_ARGUMENT", f"stage {self.spec.index}: missing tensor {exc}"
                )
                continue
            except Exception as exc:  # the artifact failed on this request; the worker keeps serving
                await self._fail(
                    request, local, "INTERNAL", f"stage {self.spec.index}: {type(exc).__name__}: {exc}"
                )
                continue
            self.counters.compute_ms_total += compute_ms
            if self._was_cancelled(request.request_id):
                continue  # cancelled while it ran here: do not pass it on
            queue_ms = (started - arrived) * 1e3
            timing = stage_pb2.StageTiming(
                stage=self.spec.index, queue_ms=queue_ms, compute_ms=compute_ms, transfer_ms=transfer_ms
            )
            started = time.perf_counter()
            try:
                if self.spec.downstream is not None:
                    forward = stage_pb2.StageRequest(
                        request_id=request.request_id,
                        deadline_unix_ns=request.deadline_unix_ns,
                        reply_to=request.reply_to,
                        sent_unix_ns=time.time_ns(),
                        timings=[*request.timings, timing],
                    )
                    outgoing = frame(forward, sent)
                    self.counters.bytes_sent += outgoing.nbytes
                    await self.links.get(self.spec.downstream, "process").send(outgoing)
                else:
                    reply = stage_pb2.StageReply(
                        request_id=request.request_id,
                        ok=True,
                        stage=self.spec.index,
                        timings=[*request.timings, timing],
                    )
                    outgoing = frame(reply, sent)
                    self.counters.bytes_sent += outgoing.nbytes
                    await self._reply(request, local, outgoing)
            except PeerUnavailable as exc:
                await self._fail(
                    request, local, "UNAVAILABLE", f"stage {self.spec.index} cannot reach the next hop: {exc}"
                )
            self.counters.transfer_ms_total += (time.perf_counter() - started) * 1e3

    def _was_cancelled(self, request_id: str) -> bool:
        """Whether `request_id` was cancelled (forgetting the cancellation, which is now used up)."""
        if request_id in self.cancelled:
            del self.cancelled[request_id]
            return True
        return False

    async def _cancel(self, request: Frame) -> None:
        """Remember a cancellation and pass it on at once (ahead of queued work)."""
        self.cancelled[request.message.request_id] = None
        while len(self.cancelled) > MAX_CANCELLED:
            self.cancelled.popitem(last=False)
        if self.spec.downstream is not None:
            with contextlib.suppress(PeerUnavailable):
                await self.links.get(self.spec.downstream, "process").send(request)

    async def _reply(
        self, request: stage_pb2.StageRequest, local: asyncio.Queue | None, reply: Frame
    ) -> None:
        if local is not None:
            await local.put(reply)
        else:
            await self.links.get(request.reply_to, "deliver").send(reply)

    async def _fail(
        self, request: stage_pb2.StageRequest, local: asyncio.Queue | None, code: str, message: str
    ) -> None:
        self.counters.errors += 1
        reply = stage_pb2.StageReply(
            request_id=request.request_id, ok=False, error_code=code, error=message, stage=self.spec.index
        )
        with contextlib.suppress(PeerUnavailable):  # the endpoint is gone; it fails its own pending requests
            await self._reply(request, local, Frame(reply))


async def serve_stage(
    spec: StageSpec,
    execute: Execute,
    port: int,
    host: str = "127.0.0.1",
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    tls: TlsFiles | None = None,
    side_port: int = 0,
) -> None:
    """Run a StageWorker on host:port until `stop` is set (port 0 picks a free port, passed to `ready`);
    with `tls`, it accepts and makes only mutually authenticated TLS connections; without, it offers side
    connections (runtime.bulk) on `side_port` (0: any free port)."""
    keep_large_buffers()
    shm.sweep()
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    side = bulk.listen(host, port=side_port) if tls is None else None
    worker = StageWorker(spec, execute, tls, side)
    server.add_generic_rpc_handlers((worker_handler(worker.Process, worker.Stats),))
    health_pb2_grpc.add_HealthServicer_to_server(worker, server)
    bound = bind_port(server, host, port, tls)
    await server.start()
    worker.start()
    if ready is not None:
        ready(bound)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await worker.stop()
        await server.stop(grace=1.0)
        if side is not None:
            side.close()
