"""What one hop of the data plane costs on this host, for the planner: a fixed time per message and a
time per MiB on top of the link's own latency and bandwidth.

Measured as serving does it: an identity stage worker (runtime.worker) on loopback, driven over its
Process stream with the data plane's codec (runtime.wire), plain TCP (no shared memory: the hop a
stage boundary between two machines costs in CPU). Per hop = round trip / 2; the fixed cost is a 1 KiB
message's, the per-MiB cost the slope up to a `LARGE_MIB` message.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import numpy as np

from nndeploy.proto import stage_pb2
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.wire import Frame, frame, process_stream
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import HopCost

SMALL_BYTES = 1 << 10
LARGE_MIB = 4
TIMEOUT_S = 30.0


def measure_hop(rounds: int = 20) -> HopCost:
    """The fixed ms per message and ms per MiB of one data-plane hop on this host, medians of `rounds`
    round trips of each size (worker and client share one event loop, as one host's processes share its
    CPUs)."""
    small, large = asyncio.run(_measure(rounds))
    fixed = statistics.median(small) / 2
    per_mib = max(0.0, (statistics.median(large) / 2 - fixed) / (LARGE_MIB - SMALL_BYTES / (1 << 20)))
    return HopCost(fixed, per_mib)


async def _measure(rounds: int) -> tuple[list[float], list[float]]:
    spec = StageSpec(index=0, device="hop", inputs=("x",), outputs=("x",), downstream=None)
    stop, ready, port = asyncio.Event(), asyncio.Event(), []
    server = asyncio.create_task(
        serve_stage(spec, dict, 0, ready=lambda p: (port.append(p), ready.set()), stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        address = f"127.0.0.1:{port[0]}"
        return await _round_trips(address, SMALL_BYTES, rounds), await _round_trips(
            address, LARGE_MIB << 20, rounds
        )
    finally:
        stop.set()
        await asyncio.wait_for(server, TIMEOUT_S)


async def _round_trips(address: str, nbytes: int, rounds: int) -> list[float]:
    """ms of `rounds` round trips (after 3 untimed) of one float32 tensor of `nbytes` through the worker."""
    request = frame(stage_pb2.StageRequest(request_id="hop"), {"x": np.ones(nbytes // 4, np.float32)})
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        call = process_stream(channel)()
        times = []
        for index in range(3 + rounds):
            began = time.perf_counter()
            await asyncio.wait_for(call.write(request), TIMEOUT_S)
            reply: Frame = await asyncio.wait_for(call.read(), TIMEOUT_S)
            if reply is grpc.aio.EOF or not reply.message.ok:
                raise RuntimeError(f"the measuring stage worker failed: {reply}")
            if index >= 3:
                times.append((time.perf_counter() - began) * 1e3)
        call.cancel()
        return times
