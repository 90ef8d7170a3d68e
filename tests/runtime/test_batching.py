"""Dynamic batching at the endpoint: requests arriving together run as one padded batch through a real
worker and are split back; deadlines, cancellation and bad requests stay per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from nndeploy.runtime.chain import free_ports
from nndeploy.runtime.endpoint import start_endpoint
from nndeploy.runtime.served import ModelSpec, Refused, Request
from nndeploy.runtime.worker import StageSpec, serve_stage
from nndeploy.types import TensorSpec


def chain_run(
    body: Callable[[Any, list[int]], Awaitable[Any]],
    max_batch: int = 4,
    sizes: tuple[int, ...] = (1, 4),
    delay_ms: float = 50.0,
    stage_s: float = 0.0,
) -> Any:
    """Run `body(endpoint, seen)` against an endpoint batching up to `max_batch` in front of one worker
    computing y = 2x (taking `stage_s`) that refuses shapes outside `sizes`; `seen` lists the batch size
    of every run."""
    stage_port, client_port = free_ports(2)
    seen: list[int] = []

    def stage(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = tensors["x"]
        if x.shape[0] not in sizes:
            raise ValueError(f"no build for batch {x.shape[0]}")
        seen.append(int(x.shape[0]))
        time.sleep(stage_s)
        return {"y": x * 2}

    model = ModelSpec(
        "m",
        "1",
        (TensorSpec("x", (1, 3), "float32"),),
        (TensorSpec("y", (1, 3), "float32"),),
        (("cpu", f"127.0.0.1:{stage_port}"),),
        max_batch=max_batch,
        batch_delay_ms=delay_ms,
        batch_sizes=sizes,
    )

    async def scenario() -> Any:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            serve_stage(StageSpec(0, "cpu", ("x",), ("y",), None), stage, stage_port, stop=stop)
        )
        server, endpoint, _ = await start_endpoint(model, client_port)
        try:
            for _ in range(100):
                if all(endpoint.stage_up) and all(endpoint.stats):
                    break
                await asyncio.sleep(0.1)
            return await body(endpoint, seen)
        finally:
            stop.set()
            await server.stop(grace=1.0)
            await worker

    return asyncio.run(asyncio.wait_for(scenario(), 120))


async def infer(endpoint: Any, x: np.ndarray, timeout_s: float | None = None) -> Any:
    """The request's y, or the Refused it got."""
    try:
        outputs = await endpoint.infer("m", "", lambda: Request({"x": x}, (), timeout_s))
    except Refused as refused:
        return refused
    return outputs["y"]


def rows(count: int, start: int = 0) -> list[np.ndarray]:
    return [np.full((1, 3), start + i, np.float32) for i in range(count)]


def test_concurrent_requests_run_as_full_batches_and_split_back() -> None:
    async def body(endpoint: Any, seen: list[int]) -> Any:
        xs = rows(8)
        ys = await asyncio.gather(*(infer(endpoint, x) for x in xs))
        stats = endpoint.model_statistics().model_stats[0]
        return xs, ys, list(seen), stats

    xs, ys, seen, stats = chain_run(body)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(y, x * 2)  # each request got its own rows back
    assert seen == [4, 4]
    assert stats.inference_count == 8 and stats.execution_count == 2
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_stats] == [(4, 2)]


def test_a_partial_batch_waits_the_delay_then_is_padded_to_a_built_size() -> None:
    async def body(endpoint: Any, seen: list[int]) -> Any:
        started = time.perf_counter()
        xs = [np.full((2, 3), 7, np.float32), *rows(1, 10)]  # 3 samples: padded to 4
        ys = await asyncio.gather(*(infer(endpoint, x) for x in xs))
        return xs, ys, list(seen), time.perf_counter() - started

    xs, ys, seen, seconds = chain_run(body, delay_ms=200.0)
    assert seen == [4]
    assert ys[0].shape == (2, 3) and ys[1].shape == (1, 3)
    np.testing.assert_array_equal(ys[0], xs[0] * 2)
    np.testing.assert_array_equal(ys[1], xs[1] * 2)
    assert seconds >= 0.2  # it waited for batch-mates that never came


def test_deadlines_and_bad_requests_stay_per_request() -> None:
    async def body(endpoint: Any, seen: list[int]) -> Any:
        good = rows(3)
        tasks = [infer(endpoint, x, 30.0) for x in good]
        tasks.append(infer(endpoint, np.zeros((1, 4), np.float32)))  # wrong shape: refused alone
        tasks.append(infer(endpoint, np.zeros((5, 3), np.float32)))  # over max batch: refused alone
        tasks.append(infer(endpoint, rows(1, 9)[0], 0.1))  # its deadline passes while its batch runs
        answers = await asyncio.gather(*tasks)
        return good, answers, list(seen)

    good, answers, seen = chain_run(body, stage_s=0.5)
    for x, y in zip(good, answers[:3], strict=True):
        np.testing.assert_array_equal(y, x * 2)
    wrong, over, late = answers[3:]
    assert wrong.code == "INVALID_ARGUMENT" and "[1..4, 3]" in wrong.message
    assert over.code == "INVALID_ARGUMENT" and "shape [5, 3]" in over.message
    assert late.code == "DEADLINE_EXCEEDED"
    assert seen == [4]  # the three good ones and the late one ran together


def test_a_cancelled_request_leaves_its_batch_mates_alone() -> None:
    async def body(endpoint: Any, seen: list[int]) -> Any:
        xs = rows(4)
        tasks = [asyncio.create_task(infer(endpoint, x)) for x in xs]
        await asyncio.sleep(0.1)  # the batch is running (the stage takes 0.5 s)
        tasks[0].cancel()
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        return xs, answers, endpoint.batcher.in_flight

    xs, answers, left = chain_run(body, stage_s=0.5)
    assert isinstance(answers[0], asyncio.CancelledError)
    for x, y in zip(xs[1:], answers[1:], strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert left == 0


def test_the_batch_size_histogram_and_the_config_say_batching() -> None:
    from prometheus_client import generate_latest

    async def body(endpoint: Any, seen: list[int]) -> Any:
        await asyncio.gather(*(infer(endpoint, x) for x in rows(4)))
        return generate_latest(endpoint.observed.registry).decode(), endpoint.config(), endpoint.metadata()

    text, config, metadata = chain_run(body, max_batch=4, sizes=(1, 2, 4), delay_ms=20.0)
    assert 'nndeploy_batch_size_bucket{le="4.0",model="m"} 1.0' in text
    assert 'nndeploy_batch_size_bucket{le="2.0",model="m"} 0.0' in text
    assert config.max_batch_size == 4 and list(config.input[0].dims) == [3]
    assert config.dynamic_batching.max_queue_delay_microseconds == 20_000
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4]
    assert list(metadata.inputs[0].shape) == [-1, 3]


def test_max_batch_needs_a_built_size_that_holds_it() -> None:
    from nndeploy.runtime.batcher import Batcher

    async def run(arrays: Any, timeout: float) -> Any:
        return arrays, None

    with pytest.raises(ValueError, match="max batch 8"):
        Batcher(run, 8, 0.01, (1, 4), lambda *_: None)


def test_requests_arriving_while_a_batch_runs_form_the_next_full_batch() -> None:
    """With one stage, one batch at a time is in the chain: requests arriving (slower than the delay)
    while it runs wait for it and leave together, instead of one half-empty batch per delay."""

    async def body(endpoint: Any, seen: list[int]) -> Any:
        first = [asyncio.create_task(infer(endpoint, x)) for x in rows(4)]
        later = []
        for x in rows(4, 10):  # one every 50 ms, while the first batch runs for 0.5 s
            await asyncio.sleep(0.05)
            later.append(asyncio.create_task(infer(endpoint, x)))
        await asyncio.gather(*first, *later)
        return list(seen)

    assert chain_run(body, delay_ms=10.0, stage_s=0.5) == [4, 4]
