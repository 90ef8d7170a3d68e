"""A small KServe v2 gRPC client for `infer` and `bench` (any KServe v2 or Triton client works too)."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from nndeploy.errors import NNDeployError
from nndeploy.proto import inference_pb2, inference_pb2_grpc
from nndeploy.runtime.access import ClientAccess
from nndeploy.runtime.links import CHANNEL_OPTIONS
from nndeploy.runtime.tensors import (
    kserve_to_dtype,
    numpy_to_infer_request_inputs,
    response_outputs_to_numpy,
)


class ClientError(NNDeployError):
    """A request to a running endpoint failed."""


@dataclass(frozen=True)
class Metadata:
    """A served model's name and input specs (name -> (numpy dtype, shape))."""

    name: str
    inputs: dict[str, tuple[np.dtype, tuple[int, ...]]]


class Client:
    """Blocking client over one channel."""

    def __init__(self, target: str, timeout_s: float = 60.0, access: ClientAccess | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.access = access or ClientAccess()
        self.channel = self.access.channel(target, CHANNEL_OPTIONS)
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def metadata(self, model: str | None) -> Metadata:
        """The model's metadata (the server's only model when `model` is None)."""
        name = model or ""
        try:
            if not name:
                # nndeploy serves one model; an empty name is answered with NOT_FOUND naming it.
                self.stub.ModelMetadata(
                    inference_pb2.ModelMetadataRequest(name=""),
                    timeout=self.timeout_s,
                    metadata=self.access.metadata(),
                )
            meta = self.stub.ModelMetadata(
                inference_pb2.ModelMetadataRequest(name=name),
                timeout=self.timeout_s,
                metadata=self.access.metadata(),
            )
        except grpc.RpcError as exc:
            if not name and exc.code() == grpc.StatusCode.NOT_FOUND and "serves '" in (exc.details() or ""):
                return self.metadata((exc.details() or "").split("serves '")[1].split("'")[0])
            raise ClientError(f"{self.target}: {exc.code().name}: {exc.details()}") from None
        # A variable dimension (-1: the batch of a batching endpoint) gets 1: one sample per request.
        return Metadata(
            meta.name,
            {
                t.name: (kserve_to_dtype(t.datatype), tuple(d if d >= 0 else 1 for d in t.shape))
                for t in meta.inputs
            },
        )

    def inputs_from_files(self, meta: Metadata, items: list[str]) -> dict[str, np.ndarray]:
        """Inputs from NAME=file.npy items; random tensors for inputs not given."""
        given: dict[str, np.ndarray] = {}
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or name not in meta.inputs:
                raise ClientError(
                    f"--input '{item}': expected NAME=file.npy with NAME one of {sorted(meta.inputs)}"
                )
            if not Path(path).is_file():
                raise ClientError(f"--input '{item}': no such file {path}")
            given[name] = np.load(path, allow_pickle=False)
        return {
            name: given.get(name, random_tensor(dtype, shape)) for name, (dtype, shape) in meta.inputs.items()
        }

    def infer(self, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ModelInfer call; outputs by name."""
        request = inference_pb2.ModelInferRequest(model_name=model)
        numpy_to_infer_request_inputs(arrays, request)
        try:
            response = self.stub.ModelInfer(request, timeout=self.timeout_s, metadata=self.access.metadata())
        except grpc.RpcError as exc:
            raise ClientError(f"{self.target}: {exc.code().name}: {exc.details()}") from None
        return response_outputs_to_numpy(response)


def random_tensor(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A seeded random tensor of `dtype` and `shape`."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.integers(0, 100, size=shape).astype(dtype)


@dataclass(frozen=True)
class BenchReport:
    """Client-side figures of a load run."""

    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    error_codes: dict[str, int]

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        """Median latency."""
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        """99th percentile latency."""
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")


Progress = Callable[[int, int, float], None]  # (ok, failed, seconds so far)


def run_bench(
    target: str,
    meta: Metadata,
    concurrency: int,
    requests: int,
    timeout_s: float = 60.0,
    access: ClientAccess | None = None,
    duration_s: float | None = None,
    progress: Progress | None = None,
    every_s: float = 2.0,
) -> BenchReport:
    """Send `requests` requests with `concurrency` in flight, stopping early once `duration_s` has
    passed; bounded in count and time. `progress` is called every `every_s` seconds while it runs."""
    access = access or ClientAccess()
    arrays = {name: random_tensor(dtype, shape) for name, (dtype, shape) in meta.inputs.items()}
    request = inference_pb2.ModelInferRequest(model_name=meta.name)
    numpy_to_infer_request_inputs(arrays, request)

    async def drive() -> BenchReport:
        latencies: list[float] = []
        errors = 0
        codes: dict[str, int] = {}
        remaining = requests
        async with access.channel(target, CHANNEL_OPTIONS, aio=True) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            until = None if duration_s is None else time.perf_counter() + duration_s

            async def worker() -> None:
                nonlocal remaining, errors
                while remaining > 0 and (until is None or time.perf_counter() < until):
                    remaining -= 1
                    started = time.perf_counter()
                    try:
                        await stub.ModelInfer(request, timeout=timeout_s, metadata=access.metadata())
                        latencies.append((time.perf_counter() - started) * 1e3)
                    except grpc.aio.AioRpcError as exc:
                        errors += 1
                        codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

            async def report() -> None:
                while True:
                    await asyncio.sleep(every_s)
                    if progress is not None:
                        progress(len(latencies), errors, time.perf_counter() - started)

            started = time.perf_counter()
            reporter = asyncio.create_task(report())
            try:
                await asyncio.gather(*(worker() for _ in range(concurrency)))
            finally:
                reporter.cancel()
            return BenchReport(len(latencies), errors, time.perf_counter() - started, latencies, codes)

    return asyncio.run(drive())


StageCounters = dict[tuple[str, str], dict[str, float]]


def scrape_stages(url: str) -> StageCounters:
    """The per-stage counters of the endpoint's /metrics at `url`, by (stage, device)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:
        raise ClientError(f"{url}: {exc}") from None
    values: StageCounters = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if stage:
                key = (stage, sample.labels.get("device", ""))
                values.setdefault(key, {})[sample.name] = sample.value
    return values


def stage_figures(before: StageCounters, after: StageCounters) -> list[dict[str, Any]]:
    """Per-stage figures of what happened between two scrapes: requests, errors, compute and transfer
    ms per request (None without requests)."""
    rows = []
    for (stage, device), now in sorted(after.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        then = before.get((stage, device), {})
        delta = {name: value - then.get(name, 0.0) for name, value in now.items()}
        count = delta.get("nndeploy_stage_requests_total", 0.0)
        compute = delta.get("nndeploy_stage_compute_seconds_total", 0.0) * 1e3
        transfer = delta.get("nndeploy_stage_transfer_seconds_total", 0.0) * 1e3
        rows.append(
            {
                "stage": int(stage),
                "device": device,
                "requests": int(count),
                "errors": int(delta.get("nndeploy_stage_errors_total", 0.0)),
                "compute_ms_per_request": compute / count if count else None,
                "transfer_ms_per_request": transfer / count if count else None,
            }
        )
    return rows
