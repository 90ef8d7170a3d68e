"""Large data-plane messages over a plain TCP connection beside their gRPC stream (Process or Deliver).

Why: grpcio moves a multi-MiB message at a third to a fifth of what the same loopback socket moves raw
(HTTP/2 framing and flow-control windows, grpcio's own threads): a gRPC stream carrying runtime.wire's
spliced messages measured 0.74 / 2.99 / 15.2 ms per 1 / 4 / 16 MiB hop here, a raw socket 0.25 / 0.91 /
3.76. Even a gRPC message that carries only a tensor's header costs about 0.35 ms a hop, so a large message
leaves the stream altogether: its bytes go on the side connection with one scatter-gather send straight
from the sender's arrays, and are read into one buffer that the receiver decodes in place.

How a stream gets one: the client (runtime.links) names a random token in its request metadata
(`TOKEN_KEY`); a server with a `Listener` answers with the listener's port in its initial metadata
(`PORT_KEY`). The client connects to that port on the server's host and presents the token; the server
matches the connection to the stream. Until then, and whenever the connection cannot be made (a firewall,
a NetworkPolicy that opens only the gRPC port), messages travel on the stream: the side connection is an
optimisation, never a requirement. With TLS between stages there is no listener: everything stays on the
authenticated stream. NNDEPLOY_BULK=0 turns side connections off.

On the connection, in each direction: records of an 8-byte length (little-endian u64) and that many bytes
of one StageRequest or StageReply exactly as the stream would carry it (runtime.wire's encoding), for
messages whose tensors hold at least MIN_BYTES; smaller ones stay on the stream. The stream and its side
connection are two lanes of one stream: a message goes on one of them, never both, and messages on
different lanes are not ordered with respect to each other (nothing in the data plane needs it: requests
are independent, and a cancellation that overtakes its request is remembered until the request comes). A
writer and a reader thread per connection move the bytes (the GIL is released in send and recv).

Bad input: a record over the receiver's limit (the stream's own message limit) or bytes that do not
decode break the connection (a byte stream cannot be resynchronised), as a bad message breaks a gRPC
stream; the sender's next message opens a new stream and connection. A record whose tensor header
disagrees with its bytes decodes, and fails its request at the stage that reads it (INVALID_ARGUMENT), as
on the stream.

Backpressure: a receiver holds at most SLOTS messages it has read and not handed on (its reader then
waits, and TCP pushes back on the sender); a sender queues at most QUEUED_BYTES for its writer before
`room` makes it wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import secrets
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from nndeploy.errors import NNDeployError
from nndeploy.runtime.wire import Frame, decoder, encode_parts

TOKEN_KEY = "nndeploy-bulk-token"
PORT_KEY = "nndeploy-bulk-port"
SWITCH_ENV = "NNDEPLOY_BULK"
MIN_BYTES = 64 << 10  # smaller messages stay on the stream: a side record costs more than their copy
MAX_BYTES = 1 << 30  # as the gRPC message limit of the data plane
SLOTS = 4
QUEUED_BYTES = 256 << 20
CONNECT_TIMEOUT_S = 2.0
_LENGTH = struct.Struct("<Q")
_TOKEN_CHARS = 32
_MAX_PIECES = 512  # sendmsg takes at most IOV_MAX (1024) buffers
INLINE_BYTES = 2 << 20  # up to this much is sent by the caller, as far as the socket takes it at once


def enabled() -> bool:
    """Whether side connections are on (NNDEPLOY_BULK is not 0)."""
    return os.environ.get(SWITCH_ENV, "1") != "0"


def new_token() -> str:
    """A fresh token for one stream's side connection."""
    return secrets.token_hex(_TOKEN_CHARS // 2)


def metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    """The value of `key` in gRPC metadata (pairs, or a grpc.aio.Metadata), or None."""
    for found, value in metadata or ():
        if found == key:
            return str(value)
    return None


class Channel:
    """One side connection, both directions (see the module docstring): sends Frames, receives Frames of
    `receives` (StageRequest or StageReply; None: the peer sends nothing back, as on Deliver)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        receives: type | None,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.loop = loop
        self.max_bytes = max_bytes
        self.failure = ""
        self.sent = self.received = 0  # messages
        self._decode = decoder(receives) if receives is not None else None
        self._out: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._inbox: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._slots = threading.Semaphore(SLOTS)
        self._threads_left = 2
        self._closing = threading.Lock()
        for work in (self._write, self._read):
            threading.Thread(target=work, name=f"bulk{work.__name__}", daemon=True).start()

    # --- sending ------------------------------------------------------------------------------------------
    def takes(self, item: Any) -> bool:
        """Whether `item` goes on this connection, while it lives: a Frame with at least MIN_BYTES of
        tensors, or one whose tensors wait in shared memory (runtime.shm: then only where they are travels
        here, cheaper than a gRPC message)."""
        if self.failure or not isinstance(item, Frame):
            return False
        return item.nbytes >= MIN_BYTES or any(header.HasField("shared") for header, _ in item.tensors)

    async def room(self) -> None:
        """Wait while the writer has more than QUEUED_BYTES to send."""
        while self._queued > QUEUED_BYTES and not self.failure:
            await asyncio.sleep(0.001)

    def send(self, item: Frame) -> bool:
        """Send `item` (a small one at once when the writer is idle, else through the writer); False when
        the connection has failed (send it on the stream)."""
        if self.failure:
            return False
        parts = encode_parts(item)
        total = sum(memoryview(p).nbytes for p in parts)
        record: list[Any] = [_LENGTH.pack(total), *parts]
        if total <= INLINE_BYTES:
            record = self._send_now(record)
        if record:
            with self._queued_lock:
                self._queued += sum(memoryview(p).nbytes for p in record[1:])
            self._out.put(record)
        self.sent += 1
        return True

    def _send_now(self, record: list[Any]) -> list[Any]:
        """Send as much of a record as the socket takes at once, from the calling thread, if nothing is
        queued before it (saves waking the writer thread); returns what is left for the writer (a record
        whose first piece, the length, is then empty)."""
        with self._queued_lock:
            idle = self._queued == 0  # nothing queued or being sent: the socket is free, order is kept
        if not idle:
            return record
        views = [memoryview(p).cast("B") for p in record]
        try:
            sent = self.sock.sendmsg(views[:_MAX_PIECES], [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            return record
        except OSError:
            return record  # the writer meets the same error and breaks the connection
        views = _unsent(views, sent)
        return [b"", *views] if views else []

    def _write(self) -> None:
        try:
            while (parts := self._out.get()) is not None:
                _send_all(self.sock, parts)
                with self._queued_lock:
                    self._queued -= sum(memoryview(p).nbytes for p in parts[1:])
        except OSError as exc:
            self._break(f"side connection lost while sending: {exc.strerror or exc}")
        finally:
            self._done()

    # --- receiving ----------------------------------------------------------------------------------------
    async def receive(self) -> Frame | None:
        """The next message that arrived on the connection; None once it has ended."""
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later call ends too
        else:
            self._slots.release()
            self.received += 1
        return item

    def _read(self) -> None:
        head = memoryview(bytearray(_LENGTH.size))
        try:
            while True:
                while not self._slots.acquire(timeout=1.0):  # the receiver is behind: TCP pushes back
                    if self.failure:
                        return
                if not self._receive(head):
                    self._break("side connection closed by the peer")
                    return
                (nbytes,) = _LENGTH.unpack(head)
                if self._decode is None:
                    self._break("side connection: a message from a peer that sends none on this stream")
                    return
                if nbytes > self.max_bytes:
                    self._break(
                        f"side connection: a message of {nbytes} bytes, over the limit of {self.max_bytes}"
                    )
                    return
                buffer = np.empty(nbytes, np.uint8)
                if not self._receive(memoryview(buffer)):
                    self._break("side connection closed by the peer within a message")
                    return
                try:
                    item = self._decode(memoryview(buffer))
                except ValueError as exc:
                    self._break(f"side connection: {exc}")
                    return
                self._call(self._inbox.put_nowait, item)
        except OSError as exc:
            self._break(f"side connection lost while receiving: {exc.strerror or exc}")
        finally:
            self._done()

    def _receive(self, view: memoryview) -> bool:
        """Fill `view` from the socket; False when the peer closed first."""
        while view.nbytes:
            got = self.sock.recv_into(view)
            if not got:
                return False
            view = view[got:]
        return True

    # --- the end ------------------------------------------------------------------------------------------
    def _break(self, reason: str) -> None:
        """Mark the connection failed (from any thread): both threads stop, `receive` returns None."""
        with self._closing:
            if self.failure:
                return
            self.failure = reason
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._out.put(None)
        self._call(self._inbox.put_nowait, None)

    def _call(self, callback: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(callback, *args)

    def _done(self) -> None:
        with self._closing:
            self._threads_left -= 1
            if self._threads_left == 0:
                self.sock.close()

    def close(self) -> None:
        """End the connection (both threads stop, the socket closes)."""
        self._break("side connection closed")


def _send_all(sock: socket.socket, parts: list[Any]) -> None:
    """Send every byte of `parts` (scatter-gather: one system call while the socket takes it all)."""
    views = [memoryview(p).cast("B") for p in parts]
    while views:
        views = _unsent(views, sock.sendmsg(views[:_MAX_PIECES]))


def _unsent(views: list[memoryview], sent: int) -> list[memoryview]:
    """What of `views` is left after the first `sent` bytes went out."""
    while views and sent >= views[0].nbytes:
        sent -= views[0].nbytes
        views = views[1:]
    if views and sent:
        views = [views[0][sent:], *views[1:]]
    return views


class Listener:
    """Accepts the side connections of one server's streams (see the module docstring)."""

    def __init__(self, host: str, max_bytes: int = MAX_BYTES, port: int = 0) -> None:
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.max_bytes = max_bytes
        # By token: the future of the stream's side connection, and what its client sends.
        self._expected: dict[str, tuple[asyncio.Future[Channel], type]] = {}
        self._accepting: asyncio.Task[None] | None = None
        self._greeting: set[asyncio.Task[None]] = set()

    def expect(
        self, metadata: Iterable[Any] | None, receives: type
    ) -> tuple[asyncio.Future[Channel] | None, tuple]:
        """For a stream whose client sent `metadata` and sends messages of `receives`: the future of its
        side connection and the initial metadata that tells the client where to connect ((None, ()) when
        the client asked for none)."""
        token = metadata_value(metadata, TOKEN_KEY)
        if token is None or len(token) != _TOKEN_CHARS or token in self._expected:
            return None, ()
        if self._accepting is None:
            self._accepting = asyncio.create_task(self._accept())
        future: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._expected[token] = (future, receives)
        return future, ((PORT_KEY, str(self.port)),)

    def channels(self) -> list[Channel]:
        """The side connections of the streams still open that made one."""
        return [f.result() for f, _ in self._expected.values() if f.done() and not f.cancelled()]

    def forget(self, future: asyncio.Future[Channel] | None) -> None:
        """The stream of `future` ended: close its side connection."""
        if future is None:
            return
        for token, (expected, _) in list(self._expected.items()):
            if expected is future:
                del self._expected[token]
        if future.done() and not future.cancelled():
            future.result().close()
        else:
            future.cancel()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError:
                return
            greeting = asyncio.create_task(self._greet(conn))
            self._greeting.add(greeting)
            greeting.add_done_callback(self._greeting.discard)

    async def _greet(self, conn: socket.socket) -> None:
        """Match a new connection to its stream by the token it presents (anything else is closed)."""
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        token = b""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
                while len(token) < _TOKEN_CHARS:
                    got = await loop.sock_recv(conn, _TOKEN_CHARS - len(token))
                    if not got:
                        break
                    token += got
        except (TimeoutError, OSError):
            pass
        future, receives = self._expected.get(token.decode("ascii", "replace"), (None, None))
        if future is None or future.done():
            conn.close()
            return
        future.set_result(Channel(conn, loop, receives, self.max_bytes))

    def close(self) -> None:
        """Stop accepting and close every side connection."""
        if self._accepting is not None:
            self._accepting.cancel()
        for future, _ in list(self._expected.values()):
            self.forget(future)
        self.sock.close()


def listen(host: str, max_bytes: int = MAX_BYTES, port: int = 0) -> Listener | None:
    """A Listener on host:port (0: any free port) for a server's plain (not TLS) streams; None when side
    connections are off or no free port can be had (the streams then carry every message themselves);
    NNDeployError when a given port cannot be had."""
    if not enabled():
        return None
    try:
        return Listener(host, max_bytes, port)
    except OSError as exc:
        if port:
            raise NNDeployError(
                f"cannot listen on {host}:{port} for side connections ({exc.strerror or exc}); "
                "pass another --side-port"
            ) from None
        return None


async def connect(
    address: str, initial_metadata: Iterable[Any] | None, token: str, receives: type | None
) -> Channel | None:
    """The side connection of a stream to `address` whose server answered with `initial_metadata`, on
    which the server sends messages of `receives`; None when the server offers none or it cannot be
    reached within CONNECT_TIMEOUT_S (the stream then carries every message itself)."""
    port = metadata_value(initial_metadata, PORT_KEY)
    if port is None or not port.isdigit():
        return None
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        sock = await asyncio.to_thread(socket.create_connection, (host, int(port)), CONNECT_TIMEOUT_S)
        sock.sendall(token.encode("ascii"))
    except OSError:
        return None
    return Channel(sock, asyncio.get_running_loop(), receives)
