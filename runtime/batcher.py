"""Dynamic batching at the endpoint (Triton's dynamic batcher): requests that arrive within `delay_s` of
the first one waiting are run through the chain as one batch of at most `max_batch` samples (their first
dimensions summed), padded with zeros to the smallest batch size the build has, and the outputs are split
back per request. At most `max_running` batches are in the chain at once (one per stage keeps every stage
busy): while they run, new requests gather into the next batch, which starts as soon as one finishes, so
under load batches fill up instead of leaving at every delay half empty.

Each request keeps its own deadline and its own cancellation: a request whose deadline passes, or whose
client goes away, is answered (or dropped) alone while its batch-mates go on; a batch is cancelled down the
chain only when every request in it is gone. A request is checked before it joins a batch, so a bad one is
refused alone; an error of the chain itself (a stage down) fails every request of the batch it hit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
# Runs one batch through the chain within a timeout (s): its outputs, and what else the run reports.
Run = Callable[[Arrays, float], Awaitable[tuple[Arrays, Any]]]
# Told of every batch run: its samples (without padding), the run's report, seconds spent assembling it.
OnBatch = Callable[[int, Any, float], None]


@dataclass(eq=False)
class _Member:
    arrays: Arrays
    size: int
    deadline: float  # loop time
    enqueued: float  # loop time
    future: asyncio.Future[tuple[Arrays, Any, float]]
    gone: bool = False


@dataclass(eq=False)
class _Batch:
    members: list[_Member]
    task: asyncio.Task[None] | None = None


class Batcher:
    """Queues requests and runs them in batches; see the module docstring."""

    def __init__(
        self,
        run: Run,
        max_batch: int,
        delay_s: float,
        sizes: Sequence[int],
        on_batch: OnBatch,
        max_running: int = 1,
    ) -> None:
        if max_batch < 1 or not sizes or max_batch > max(sizes):
            raise ValueError(
                f"max batch {max_batch} needs a built batch size at least as large (have {sizes})"
            )
        self.run = run
        self.max_batch = max_batch
        self.delay_s = delay_s
        self.sizes = sorted(sizes)
        self.on_batch = on_batch
        self.max_running = max(1, max_running)
        self.running = 0
        self.waiting: list[_Member] = []
        self.batches: dict[_Member, _Batch] = {}
        self.timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        """Requests queued or running, not yet answered."""
        return len(self.waiting) + sum(1 for m in self.batches if not m.future.done())

    def padded(self, samples: int) -> int:
        """The smallest built batch size that holds `samples`."""
        return next(size for size in self.sizes if size >= samples)

    async def submit(self, arrays: Arrays, timeout_s: float) -> tuple[Arrays, Any, float]:
        """Run one request (`arrays`, first dimension 1..max_batch) in a batch: its outputs, the batch
        run's report and the seconds it waited for its batch. TimeoutError when `timeout_s` passes first;
        the chain's error when its batch failed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        size = int(next(iter(arrays.values())).shape[0])
        member = _Member(arrays, size, now + timeout_s, now, loop.create_future())
        self.waiting.append(member)
        self._schedule()
        try:
            return await asyncio.wait_for(asyncio.shield(member.future), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            self._leave(member)
            raise

    def fail_waiting(self, error: BaseException) -> None:
        """Fail every request still waiting for a batch (the server is closing)."""
        waiting, self.waiting = self.waiting, []
        for member in waiting:
            if not member.future.done():
                member.future.set_exception(error)

    def _leave(self, member: _Member) -> None:
        """A request's client or deadline is gone: drop it, and cancel its batch if nobody is left."""
        member.gone = True
        if member in self.waiting:
            self.waiting.remove(member)
            return
        batch = self.batches.get(member)
        if batch is not None and batch.task is not None and all(m.gone for m in batch.members):
            batch.task.cancel()

    def _schedule(self) -> None:
        """Start a batch now if one is full or the oldest request has waited its delay, and the chain has
        room; else wake up when the delay is over (a batch that finishes also calls this)."""
        if not self.waiting or self.running >= self.max_running:
            return  # a finishing batch calls this again
        loop = asyncio.get_running_loop()
        due = self.waiting[0].enqueued + self.delay_s
        if sum(m.size for m in self.waiting) >= self.max_batch or loop.time() >= due:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        """Start batches from the waiting requests, in arrival order, while the chain has room: full
        batches, then what is left (its delay has passed, or the timer would not have fired)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiting and self.running < self.max_running:
            taken: list[_Member] = []
            total = 0
            for member in self.waiting:
                if total + member.size > self.max_batch:
                    break
                taken.append(member)
                total += member.size
            del self.waiting[: len(taken)]
            batch = _Batch(taken)
            for member in taken:
                self.batches[member] = batch
            self.running += 1
            batch.task = asyncio.ensure_future(self._run(batch))
            if sum(m.size for m in self.waiting) < self.max_batch:
                break
        self._schedule()

    async def _run(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        members = batch.members
        try:
            assembling = time.perf_counter()
            samples = sum(m.size for m in members)
            size = self.padded(samples)
            arrays = {}
            for name, first in members[0].arrays.items():
                parts = [m.arrays[name] for m in members]
                if size > samples:
                    parts.append(np.zeros((size - samples, *first.shape[1:]), first.dtype))
                arrays[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            assembled_s = time.perf_counter() - assembling
            started = loop.time()
            timeout = max(m.deadline for m in members) - started
            outputs, report = await self.run(arrays, max(timeout, 0.0))
            self.on_batch(samples, report, assembled_s)
            offset = 0
            for member in members:
                part = {name: array[offset : offset + member.size] for name, array in outputs.items()}
                offset += member.size
                if not member.future.done() and not member.gone:
                    member.future.set_result((part, report, started - member.enqueued))
        except asyncio.CancelledError:
            for member in members:
                if not member.future.done():
                    member.future.cancel()
        except Exception as exc:  # the chain's own error: every request of this batch gets it
            for member in members:
                if not member.future.done() and not member.gone:
                    member.future.set_exception(exc)
        finally:
            for member in members:
                self.batches.pop(member, None)
            self.running -= 1
            self._schedule()
