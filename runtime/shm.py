"""Shared memory between the processes of one host: the elements of large tensors handed over in segments
under /dev/shm, the stream carrying only where they are (stage.proto's SharedBytes).

Who shares: each end of a data-plane stream says in its gRPC metadata (`METADATA_KEY`) which shared memory it
sees (`identity`: the host's boot id, the /dev/shm file system, the user and the network namespace). When both
say the same, the sender places tensors of at least `MIN_BYTES` in segments (`Pool.place`) and the receiver
reads them in place as it decodes the message (`take`), so the stream carries a few dozen bytes per
tensor.

Segments belong to the sending process: one `Pool` per outgoing stream, segments named
`nndeploy-<pid namespace>-<pid>-<n>`, created on demand (at most `Pool.limit`), reused. A segment's first
byte is its state: the sender sets it to WAITING when it writes a message's elements; the receiver reads
them in place (no copy: the arrays it decodes are views of the segment), sets LENT, and sets FREE when the
last of those views is gone. The sender reuses only FREE segments, so nothing is overwritten while it is
read, and a full pool (a receiver holding many requests) sends inline instead of waiting. Cleanup: a pool
unlinks its segments when its stream closes or breaks, and at exit; segments of a process that died without
either (killed) are removed by `sweep`, which every worker and endpoint runs when it starts and when an
upstream stream ends.
NNDEPLOY_SHM=0 turns shared memory off.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import mmap
import os
import re
import weakref
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from nndeploy.proto import stage_pb2

ROOT = Path("/dev/shm")
METADATA_KEY = "nndeploy-shm"
SWITCH_ENV = "NNDEPLOY_SHM"
MIN_BYTES = 64 << 10  # smaller tensors travel inline: a segment round costs more than their copy
HEADER = 64  # the state byte, padded to a cache line
FREE, WAITING, LENT = 0, 1, 2  # a segment's states (its first byte)
SMALLEST = 1 << 20  # a new segment holds at least this much
MAPPED_BYTES = 512 << 20  # segments a receiver keeps mapped at most, all senders together
_NAME = re.compile(r"^nndeploy-\d+-\d+-\d+$")
_counter = itertools.count()


class SharedMemoryError(ValueError):
    """A shared segment named in a message is missing, too small, or holds no message."""


@lru_cache(maxsize=1)
def identity() -> str:
    """Which shared memory this process sees: host boot id, /dev/shm's file system, user, network
    namespace ('' when shared memory is off or unavailable). The network namespace counts because
    processes in different ones are different hosts to the data plane (pods, or namespaces standing in
    for machines), even where they could share /dev/shm."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        shm = ROOT.stat()
    except OSError:
        return ""
    try:
        network = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        network = 0
    return f"{boot}:{shm.st_dev}:{os.getuid()}:{network}"


def shares_with(metadata: object) -> bool:
    """Whether gRPC `metadata` (pairs, or a grpc.aio.Metadata) says its sender sees this process's shared
    memory."""
    mine = identity()
    if not mine or metadata is None:
        return False
    return any(key == METADATA_KEY and value == mine for key, value in metadata)  # type: ignore[attr-defined]


def metadata() -> tuple[tuple[str, str], ...]:
    """The metadata pair announcing this process's shared memory (empty when off)."""
    mine = identity()
    return ((METADATA_KEY, mine),) if mine else ()


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class Pool:
    """The segments of one outgoing stream (see the module docstring)."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self.segments: list[tuple[str, mmap.mmap]] = []
        _pools.add(self)

    def place(self, tensors: tuple[tuple[stage_pb2.Tensor, memoryview], ...]) -> tuple:
        """The tensors with each one of at least MIN_BYTES copied into a free segment (its header naming
        it, its data empty); tensors that find no free segment stay inline."""
        placed = []
        for header, data in tensors:
            found = self._free(data.nbytes) if data.nbytes >= MIN_BYTES else None
            if found is None:
                placed.append((header, data))
                continue
            name, segment = found
            segment[HEADER : HEADER + data.nbytes] = data
            segment[0] = WAITING
            moved = stage_pb2.Tensor()
            moved.CopyFrom(header)
            moved.shared.CopyFrom(stage_pb2.SharedBytes(segment=name, offset=HEADER, nbytes=data.nbytes))
            placed.append((moved, memoryview(b"")))
        return tuple(placed)

    def _free(self, nbytes: int) -> tuple[str, mmap.mmap] | None:
        fitting = [(len(s), n, s) for n, s in self.segments if s[0] == FREE and len(s) - HEADER >= nbytes]
        if fitting:
            _, name, segment = min(fitting)
            return name, segment
        if len(self.segments) >= self.limit:
            return None
        size = HEADER + max(SMALLEST, 1 << (nbytes - 1).bit_length())
        name = f"nndeploy-{_pid_namespace()}-{os.getpid()}-{next(_counter)}"
        try:
            fd = os.open(ROOT / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            os.ftruncate(fd, size)
            segment = mmap.mmap(fd, size)
        except OSError:
            os.unlink(ROOT / name)
            return None
        finally:
            os.close(fd)
        segment[0] = FREE
        self.segments.append((name, segment))
        return name, segment

    def close(self) -> None:
        """Unlink every segment (a receiver still mapping one keeps its pages until it lets go)."""
        for name, segment in self.segments:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ROOT / name)
            with contextlib.suppress(BufferError):
                segment.close()
        self.segments.clear()


_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_mapped: OrderedDict[str, mmap.mmap] = OrderedDict()


@atexit.register
def _close_pools() -> None:
    for pool in list(_pools):
        pool.close()


def take(shared: stage_pb2.SharedBytes) -> memoryview:
    """A tensor's elements in the sender's segment, lent in place: the segment is free again once the last
    view of them is gone. SharedMemoryError naming the segment when it is missing, too small or holds no
    message."""
    name = shared.segment
    if not _NAME.match(name):
        raise SharedMemoryError(f"shared segment {name!r} is not an nndeploy segment name")
    segment = _mapping(name)
    end = shared.offset + shared.nbytes
    if shared.offset < HEADER or end > len(segment):
        raise SharedMemoryError(
            f"shared segment {name!r} holds {len(segment)} bytes, the message needs {end}"
        )
    if segment[0] != WAITING:
        raise SharedMemoryError(f"shared segment {name!r} holds no message (read twice, or reused)")
    lent = np.frombuffer(segment, np.uint8, shared.nbytes, shared.offset)
    segment[0] = LENT
    weakref.finalize(lent, _free, segment)
    return memoryview(lent)


def _free(segment: mmap.mmap) -> None:
    """Hand a lent segment back to its sender (its last view is gone)."""
    with contextlib.suppress(ValueError):  # already unmapped
        segment[0] = FREE


def _mapping(name: str) -> mmap.mmap:
    """The segment `name`, mapped (kept mapped for the next message, within MAPPED_BYTES)."""
    found = _mapped.get(name)
    if found is not None:
        _mapped.move_to_end(name)
        return found
    try:
        fd = os.open(os.path.join(ROOT, name), os.O_RDWR)  # not ROOT / name: pathlib interns each name
    except FileNotFoundError:
        raise SharedMemoryError(f"shared segment {name!r} has vanished (its sender closed or died)") from None
    except OSError as exc:
        raise SharedMemoryError(f"shared segment {name!r} cannot be opened: {exc.strerror}") from None
    try:
        segment = mmap.mmap(fd, 0)
    except (OSError, ValueError) as exc:  # an empty file cannot be mapped
        raise SharedMemoryError(f"shared segment {name!r} cannot be mapped: {exc}") from None
    finally:
        os.close(fd)
    _mapped[name] = segment
    while sum(len(s) for s in _mapped.values()) > MAPPED_BYTES and len(_mapped) > 1:
        _, oldest = _mapped.popitem(last=False)
        with contextlib.suppress(BufferError):
            oldest.close()
    return segment


def forget() -> None:
    """Unmap every segment this process mapped as a receiver (its senders may have gone)."""
    while _mapped:
        _, segment = _mapped.popitem()
        with contextlib.suppress(BufferError):
            segment.close()


def sweep() -> list[str]:
    """Remove the segments of processes of this pid namespace that no longer run; returns their names."""
    prefix = f"nndeploy-{_pid_namespace()}-"
    removed = []
    try:
        entries = list(os.scandir(ROOT))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not _NAME.match(entry.name):
            continue
        pid = int(entry.name.split("-")[2])
        if not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
