"""Long-lived outgoing gRPC streams: to the next stage's worker (StageWorker.Process) and to the endpoint's
result sink (ResultSink.Deliver), carrying Frames (runtime.wire). Messages are queued into one open
stream per peer; a broken stream is reported to the caller and reopened on the next send, so a
restarted peer on the same address is picked up again (the chain is rewired without any coordinator).
Large tensors leave through shared memory when the peer shares this host's (runtime.shm); messages with
large tensors, or with tensors waiting in shared memory, go on the stream's side connection when the peer
offers one (runtime.bulk); everything else, and everything when neither is there, on the stream itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from nndeploy.errors import NNDeployError
from nndeploy.proto import stage_pb2
from nndeploy.runtime import bulk, shm
from nndeploy.runtime.tls import TlsFiles
from nndeploy.runtime.wire import Frame, deliver_stream, process_stream

MAX_MESSAGE_BYTES = 1 << 30
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 0),
]


class PeerUnavailable(Exception):
    """The peer's stream is down; the message was not sent."""


class StreamLink:
    """One open client stream to `address` for `kind` ('process' to a worker, 'deliver' to a sink)."""

    def __init__(self, address: str, kind: str, queue_size: int = 64, tls: TlsFiles | None = None) -> None:
        self.address = address
        self.kind = kind
        self.tls = tls
        self.queue_size = queue_size
        self._channel: grpc.aio.Channel | None = None
        self._outbox: asyncio.Queue[Any] | None = None
        self._call: Any = None
        self._drain: asyncio.Task[None] | None = None
        self.broken = asyncio.Event()
        self._opening = asyncio.Lock()
        # Segments for large tensors, once the peer has said it shares this host's shared memory.
        self._pool: shm.Pool | None = None
        self._shared: asyncio.Task[None] | None = None
        # Else the stream's side connection for large messages, once the peer offered one and it connected.
        self._side: bulk.Channel | None = None
        self._side_drain: asyncio.Task[None] | None = None

    async def send(self, message: Any, timeout: float = 10.0) -> None:
        """Queue `message` on the stream (waiting while the peer applies backpressure)."""
        async with self._opening:  # concurrent senders must not open (and so close) each other's stream
            if self._call is None or self.broken.is_set():
                await self._open(timeout)
        assert self._outbox is not None
        if self._pool is not None and isinstance(message, Frame) and message.tensors:
            message = Frame(message.message, self._pool.place(message.tensors))
        if self._side is not None and self._side.takes(message):
            try:
                await asyncio.wait_for(self._side.room(), timeout)
            except TimeoutError:
                raise PeerUnavailable(f"{self.address}: side connection full for {timeout:.0f} s") from None
            if self._side.send(message):
                return
        try:
            await asyncio.wait_for(self._outbox.put(message), timeout)
        except TimeoutError:
            raise PeerUnavailable(f"{self.address}: stream full for {timeout:.0f} s") from None
        if self.broken.is_set():
            raise PeerUnavailable(f"{self.address}: stream closed")

    async def _open(self, timeout: float) -> None:
        await self.close()
        self.broken = asyncio.Event()
        self._channel = open_channel(self.address, self.tls)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            await self.close()
            raise PeerUnavailable(f"{self.address}: not reachable within {timeout:.0f} s") from None
        self._outbox = asyncio.Queue(self.queue_size)
        method = process_stream if self.kind == "process" else deliver_stream
        token = bulk.new_token() if self.tls is None and bulk.enabled() else ""
        metadata = shm.metadata() + (((bulk.TOKEN_KEY, token),) if token else ())
        self._call = method(self._channel)(self._messages(self._outbox), metadata=metadata)
        self._shared = asyncio.create_task(self._share_memory(self._call, token))
        self._drain = asyncio.create_task(self._read_replies(self._call))

    @staticmethod
    async def _messages(outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while True:
            message = await outbox.get()
            if message is None:
                return
            yield message

    async def _share_memory(self, call: Any, token: str) -> None:
        """Use shared memory on this stream once the peer's metadata says it sees this host's, else the
        side connection the peer offers."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            metadata = await call.initial_metadata()
            if shm.shares_with(metadata):
                self._pool = shm.Pool()
            if token:
                receives = stage_pb2.StageReply if self.kind == "process" else None  # a sink sends acks
                self._side = await bulk.connect(self.address, metadata, token, receives)
                if self._side is not None:
                    self._side_drain = asyncio.create_task(self._read_side(self._side))

    async def _read_replies(self, call: Any) -> None:
        """Read (and drop) what the peer streams back, to notice when the stream ends or breaks."""
        try:
            async for _ in call:
                pass
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.broken.set()

    async def _read_side(self, side: bulk.Channel) -> None:
        """Read (and drop) what the peer sends back on the side connection; when the connection breaks,
        the stream is reopened with the next message (what was in the connection is lost, as in a broken
        stream: the endpoint fails those requests by their deadline or when a stage is seen down)."""
        while await side.receive() is not None:
            pass
        self.broken.set()

    async def close(self) -> None:
        """End the stream and the channel."""
        if self._outbox is not None and not self._outbox.full():
            self._outbox.put_nowait(None)
        if self._drain is not None:
            self._drain.cancel()
        if self._shared is not None:
            self._shared.cancel()
        if self._pool is not None:
            self._pool.close()
        if self._side is not None:
            self._side.close()
        if self._side_drain is not None:
            self._side_drain.cancel()
        if self._channel is not None:
            await self._channel.close(grace=None)
        self._channel = self._call = self._drain = self._outbox = self._pool = self._shared = None
        self._side = self._side_drain = None


class Links:
    """Outgoing links by (address, kind), opened on first use."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self._links: dict[tuple[str, str], StreamLink] = {}
        self.tls = tls

    def get(self, address: str, kind: str) -> StreamLink:
        """The link to `address` for `kind`."""
        key = (address, kind)
        if key not in self._links:
            self._links[key] = StreamLink(address, kind, tls=self.tls)
        return self._links[key]

    async def close(self) -> None:
        """Close every link."""
        for link in self._links.values():
            await link.close()
        self._links.clear()


class PortInUse(NNDeployError):
    """A server could not listen where it was asked to."""


def open_channel(address: str, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """A channel to a peer of the data plane (mutual TLS when `tls` is given)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = [*CHANNEL_OPTIONS, *tls.channel_options()]
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


def bind_port(
    server: grpc.aio.Server,
    host: str,
    port: int,
    tls: TlsFiles | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Listen on host:port (0: any free port), with mutual TLS when `tls` is given (or with
    `credentials`); a one-line error if the address is taken or invalid."""
    if tls is not None:
        credentials = tls.server_credentials()
    try:
        if credentials is not None:
            return server.add_secure_port(f"{host}:{port}", credentials)
        return server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        raise PortInUse(
            f"cannot listen on {host}:{port} (in use, or not an address of this machine); "
            "pass another --port/--host"
        ) from None
