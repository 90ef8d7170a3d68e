"""The network between two devices' nodes, measured: `ProbeActor` is one end (runtime.ray_cluster places
one on each device's node, as it places stages, and wires them: `RayStages.measure_links`), the first
listening on its node's address, the second connecting to it over TCP. Latency is half the median round
trip of PINGS one-byte exchanges; bandwidth is a bulk send of `nbytes` (its time less one round trip), the
best of BULK_REPEATS. What `nndeploy profile --links` writes into a calibrated cluster.yaml.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass

from nndeploy.errors import NNDeployError

PINGS = 50
BULK_REPEATS = 3
DEFAULT_BYTES = 8 << 20
IO_TIMEOUT_S = 60.0
_LENGTH = struct.Struct("<Q")


class ProbeError(NNDeployError):
    """A link could not be measured (a device no node declares, a node that cannot be reached)."""


@dataclass(frozen=True)
class MeasuredLink:
    """One pair of devices' link as measured: gigabits per second and one-way latency in ms, between the
    nodes at `hosts`."""

    between: tuple[str, str]
    hosts: tuple[str, str]
    gbps: float
    latency_ms: float


class ProbeActor:
    """One end of a measurement (Ray wraps it as an actor on a device's node)."""

    def ready(self) -> bool:
        """True once placed (the caller waits on it)."""
        return True

    def __init__(self) -> None:
        self.server: socket.socket | None = None

    def listen(self, host: str) -> int:
        """Listen on `host` (this node's address); each connection is answered: a zero length with one byte
        at once, a length N with one byte once N bytes arrived. Returns the port."""
        self.server = socket.create_server((host, 0))
        threading.Thread(target=self._serve, daemon=True).start()
        return int(self.server.getsockname()[1])

    def _serve(self) -> None:
        assert self.server is not None
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=_answer, args=(conn,), daemon=True).start()

    def measure(self, host: str, port: int, nbytes: int) -> tuple[float, float]:
        """(gbps, one-way latency ms) to the listening end at host:port."""
        with socket.create_connection((host, port), timeout=IO_TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            trips = []
            for _ in range(PINGS):
                started = time.perf_counter()
                sock.sendall(_LENGTH.pack(0))
                _read_exactly(sock, 1)
                trips.append(time.perf_counter() - started)
            round_trip = statistics.median(trips)
            payload = memoryview(bytearray(nbytes))
            best = float("inf")
            for _ in range(BULK_REPEATS):
                started = time.perf_counter()
                sock.sendall(_LENGTH.pack(nbytes))
                sock.sendall(payload)
                _read_exactly(sock, 1)
                best = min(best, time.perf_counter() - started)
        seconds = max(best - round_trip, 1e-9)
        return nbytes * 8 / seconds / 1e9, round_trip / 2 * 1e3

    def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()


def _answer(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray(1 << 20)
        try:
            while True:
                (length,) = _LENGTH.unpack(_read_exactly(conn, _LENGTH.size))
                while length:
                    got = conn.recv_into(buffer, min(length, len(buffer)))
                    if not got:
                        return
                    length -= got
                conn.sendall(b"\x01")
        except (OSError, ConnectionError):
            return


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        got = sock.recv(count - len(data))
        if not got:
            raise ConnectionError("the other end closed the connection")
        data += got
    return data
