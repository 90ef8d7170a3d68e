"""The `serve` verb: start the stage workers under Ray and the KServe v2 endpoint in front of them, run
until asked to stop (SIGINT/SIGTERM), then stop everything so no process is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nndeploy.runtime.access import ServerAccess
from nndeploy.runtime.chain import built_batch_sizes, free_ports, model_spec, stage_specs
from nndeploy.runtime.endpoint import Endpoint, start_endpoint
from nndeploy.runtime.http import HttpLimits, HttpServer, start_http
from nndeploy.runtime.metrics import start_metrics_server
from nndeploy.runtime.ray_cluster import HeadLost, RayStages, ServeError
from nndeploy.runtime.served import ModelSpec
from nndeploy.runtime.tls import TlsFiles, load_process_tls, shared_server_name
from nndeploy.targets.artifacts.loader import why_not_runnable
from nndeploy.targets.artifacts.manifest import Manifest
from nndeploy.types import Plan, device_resource


@dataclass(frozen=True)
class Serving:
    """What `serve` started, for the caller to print."""

    model: ModelSpec
    endpoint: str
    metrics: str | None
    pids: list[int]
    http: str | None = None


async def serve_build(
    build_dir: Path,
    plan: Plan,
    manifest: Manifest,
    port: int = 8001,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    ray_address: str | None = None,
    on_ready: Callable[[Serving], None] | None = None,
    stop: asyncio.Event | None = None,
    worker_port: int = 50100,
    access: ServerAccess | None = None,
    max_in_flight: int = 256,
    max_request_bytes: int | None = None,
    on_event: Callable[[str], None] | None = None,
    http_port: int | None = None,
    max_batch: int = 0,
    batch_delay_ms: float = 5.0,
    tls_dir: Path | None = None,
    tls_server_name: str = "",
) -> None:
    """Serve `build_dir` until `stop` is set or the process gets SIGINT/SIGTERM; `on_event` hears of
    stages that went down for good. `http_port` (None: no HTTP) also serves the KServe v2 REST API.
    `tls_dir` (the same path on every node) turns on mutual TLS between the endpoint and the stages; peers
    are verified against `tls_server_name` (default: the first DNS name of the endpoint's certificate)."""
    # On a joined cluster each stage runs on its device's node, which checks it there (StageActorImpl).
    problems = [f"stage {e.stage} ({e.device}): {r}" for e in manifest.stages if (r := why_not_runnable(e))]
    if problems and not ray_address:
        raise ServeError("cannot serve this build here: " + "; ".join(problems))
    sizes = built_batch_sizes(build_dir, plan, manifest, max_batch) if max_batch > 0 else ()
    tls = _stage_tls(tls_dir, tls_server_name) if tls_dir is not None else None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    ray_stages = RayStages(address=ray_address)
    # The watchers' Ray calls, apart: with the head gone they block until Ray gives up (a minute), and
    # nothing must wait for them (asyncio.run waits for its default executor's threads).
    watch_calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ray-watch")
    server = None
    metrics = None
    http = None
    try:
        ray_stages.start(sorted({s.device for s in plan.stages}))
        by_device = ray_stages.device_hosts([s.device for s in plan.stages])
        hosts = [by_device[s.device] for s in plan.stages]
        # Local: free ports now. On a joined cluster the nodes are elsewhere: a fixed range from worker_port.
        ports = (
            free_ports(len(plan.stages)) if not ray_address else [worker_port + i for i in range(len(hosts))]
        )
        addresses = [f"{h}:{p}" for h, p in zip(hosts, ports, strict=True)]
        pids = await loop.run_in_executor(
            None,
            functools.partial(
                ray_stages.launch,
                build_dir.resolve(),
                stage_specs(plan, addresses),
                ports,
                hosts,
                tls_dir=str(tls_dir.resolve()) if tls_dir is not None else None,
                server_name=tls.server_name if tls is not None else "",
            ),
        )
        # After Ray has started: ray.init installs its own SIGTERM handler, which would skip the clean stop.
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        model = model_spec(
            plan,
            addresses,
            max_in_flight=max_in_flight,
            manifest=manifest,
            max_batch=max_batch,
            batch_delay_ms=batch_delay_ms,
            batch_sizes=sizes,
        )
        server, endpoint, bound = await start_endpoint(
            model,
            port,
            host,
            tls=tls,
            access=access,
            max_request_bytes=max_request_bytes,
            # Stages on other nodes deliver results here: not to 127.0.0.1 when listening on every address.
            advertise_host=ray_stages.node_address() if ray_address else None,
        )
        if http_port is not None:
            http = await start_http(endpoint, http_port, host, access, _limits(max_request_bytes))
        if metrics_port is not None:
            metrics = start_metrics_server(endpoint, metrics_port, host)
        if on_ready is not None:
            on_ready(
                Serving(
                    model,
                    f"{host}:{bound}",
                    f"http://{host}:{metrics.server_port}/metrics" if metrics else None,
                    pids,
                    _http_url(host, http, access),
                )
            )
        watchers = [
            asyncio.create_task(_watch_ray_head(ray_stages, stop)),
            asyncio.create_task(_watch_stages(ray_stages, watch_calls, stop, on_event)),
        ]
        devices = [s.device for s in plan.stages]
        watchers.append(asyncio.create_task(_watch_answers(endpoint, devices, stop, on_event)))
        if ray_address:
            watchers.append(
                asyncio.create_task(_watch_devices(ray_stages, watch_calls, devices, stop, on_event))
            )
        await stop.wait()
        for watcher in watchers:
            watcher.cancel()
    finally:
        if server is not None:
            await endpoint.close("the server is shutting down")  # answered UNAVAILABLE, not cut off
            await server.stop(grace=2.0)
        if http is not None:
            await http.stop()
        if metrics is not None:
            metrics.shutdown()
        watch_calls.shutdown(wait=False, cancel_futures=True)
        if ray_stages.head_lost:
            await loop.run_in_executor(None, ray_stages.abandon)
        else:
            await loop.run_in_executor(None, ray_stages.stop)
    if ray_stages.head_lost:
        raise HeadLost(
            f"Ray's head ({ray_stages.head_lost}) stopped answering; the endpoint and every stage worker "
            "this machine ran were stopped (restart serve once Ray is back)"
        )


async def _watch_stages(
    ray_stages: RayStages,
    calls: Executor,
    stop: asyncio.Event,
    on_event: Callable[[str], None] | None,
    period_s: float = 2.0,
) -> None:
    """Report, once each, stages Ray cannot bring back (their requests get UNAVAILABLE meanwhile); Ray is
    asked on `calls` (a call can block for a minute when the head is gone)."""
    loop = asyncio.get_running_loop()
    reported: set[int] = set()
    while not stop.is_set():
        await asyncio.sleep(period_s)
        broken = await loop.run_in_executor(calls, ray_stages.broken_stages)
        for index, reason in broken.items():
            if index not in reported and on_event is not None:
                on_event(f"stage {index} is down and cannot restart: {reason}")
        reported = set(broken)


async def _watch_answers(
    endpoint: Endpoint,
    devices: list[str],
    stop: asyncio.Event,
    on_event: Callable[[str], None] | None,
    period_s: float = 0.5,
) -> None:
    """Report each stage whose worker stops answering the endpoint (a dead worker, a lost node) and its
    return, as the endpoint's health watcher sees them."""
    up = list(endpoint.stage_up)
    while not stop.is_set():
        await asyncio.sleep(period_s)
        for index, (was, now) in enumerate(zip(up, endpoint.stage_up, strict=True)):
            if was and not now and on_event is not None:
                on_event(
                    f"stage {index} on device {devices[index]} stopped answering (its worker or its node is "
                    "gone); its requests fail with UNAVAILABLE until it is back"
                )
            elif now and not was and on_event is not None:
                on_event(f"stage {index} on device {devices[index]} answers again")
        up = list(endpoint.stage_up)


async def _watch_devices(
    ray_stages: RayStages,
    calls: Executor,
    devices: list[str],
    stop: asyncio.Event,
    on_event: Callable[[str], None] | None,
    period_s: float = 2.0,
) -> None:
    """On a joined cluster: report, once each, a device whose node left the cluster (its stage waits for a
    node with the device to join again, and restarts there), and its return."""
    loop = asyncio.get_running_loop()
    gone: set[str] = set()
    while not stop.is_set():
        await asyncio.sleep(period_s)
        hosts = await loop.run_in_executor(calls, ray_stages.live_device_hosts, devices)
        for index, device in enumerate(devices):
            if device not in hosts and device not in gone:
                gone.add(device)
                if on_event is not None:
                    on_event(
                        f"device {device} is gone: no live node of the Ray cluster declares it; stage "
                        f"{index}'s requests fail with UNAVAILABLE until a node with it joins "
                        f"(ray start --address {ray_stages.address} --resources "
                        f"'{{\"{device_resource(device)}\": 1}}')"
                    )
            elif device in hosts and device in gone:
                gone.discard(device)
                if on_event is not None:
                    on_event(f"device {device} is back (node {hosts[device]}); stage {index} restarts there")


async def _watch_ray_head(ray_stages: RayStages, stop: asyncio.Event, period_s: float = 1.0) -> None:
    """Set `stop` once Ray's head (its GCS) has refused connections for three checks in a row: the
    stages can be neither supervised nor restarted without it."""
    loop = asyncio.get_running_loop()
    misses = 0
    while not stop.is_set():
        await asyncio.sleep(period_s)
        reachable = await loop.run_in_executor(None, ray_stages.head_reachable)
        misses = 0 if reachable else misses + 1
        if misses >= 3:
            ray_stages.head_lost = ray_stages.gcs_address or "unknown address"
            stop.set()


def _stage_tls(tls_dir: Path, server_name: str) -> TlsFiles:
    """The endpoint's TLS files for mutual TLS with stages on Ray, which are dialled by address: every peer
    is verified against one name (`server_name`, default the endpoint certificate's first DNS name)."""
    tls = load_process_tls(tls_dir, "endpoint")
    return dataclasses.replace(tls, server_name=server_name or shared_server_name(tls, tls_dir))


async def serve_one_stage(
    build_dir: Path,
    plan: Plan,
    manifest: Manifest,
    stage: int,
    port: int,
    host: str,
    downstream: str | None,
    stop: asyncio.Event | None = None,
    tls: TlsFiles | None = None,
    side_port: int = 0,
) -> None:
    """One stage worker in this process, without Ray (a Kubernetes pod), until SIGINT/SIGTERM; side
    connections (runtime.bulk) on `side_port` (0: any free port)."""
    from nndeploy.runtime.chain import serve_built_stage
    from nndeploy.runtime.worker import StageSpec

    entries = {e.stage: e for e in manifest.stages}
    if stage not in entries:
        raise ServeError(f"there is no stage {stage} in this build (stages: {', '.join(map(str, entries))})")
    reason = why_not_runnable(entries[stage])
    if reason:
        raise ServeError(f"stage {stage} cannot run here: {reason}")
    plan_stage = plan.stages[stage]
    spec = StageSpec(
        index=stage,
        device=plan_stage.device,
        inputs=tuple(t.name for t in plan_stage.inputs),
        outputs=tuple(t.name for t in plan_stage.outputs),
        downstream=downstream,
    )
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    await serve_built_stage(
        build_dir, entries[stage], spec, port, host=host, stop=stop, tls=tls, side_port=side_port
    )


async def serve_endpoint(
    plan: Plan,
    stage_addresses: list[str],
    port: int,
    host: str,
    advertise: str | None,
    metrics_port: int | None,
    stop: asyncio.Event | None = None,
    tls: TlsFiles | None = None,
    sink_port: int | None = None,
    access: ServerAccess | None = None,
    max_in_flight: int = 256,
    max_request_bytes: int | None = None,
    http_port: int | None = None,
    build: tuple[Path, Manifest] | None = None,
    max_batch: int = 0,
    batch_delay_ms: float = 5.0,
    side_port: int = 0,
) -> None:
    """The endpoint alone, in front of workers started elsewhere, until SIGINT/SIGTERM; `http_port`
    (None: no HTTP) also serves the KServe v2 REST API; results arrive on side connections on
    `side_port` (runtime.bulk; 0: any free port)."""
    if len(stage_addresses) != len(plan.stages):
        raise ServeError(
            f"the plan has {len(plan.stages)} stages; got {len(stage_addresses)} --stage addresses"
        )
    sizes: tuple[int, ...] = ()
    if max_batch > 0:
        if build is None:
            raise ServeError("--max-batch needs the build folder (its batch sizes)")
        sizes = built_batch_sizes(build[0], plan, build[1], max_batch)
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    server, endpoint, _ = await start_endpoint(
        model_spec(
            plan,
            stage_addresses,
            max_in_flight=max_in_flight,
            max_batch=max_batch,
            batch_delay_ms=batch_delay_ms,
            batch_sizes=sizes,
        ),
        port,
        host,
        advertise,
        tls=tls,
        sink_port=sink_port,
        access=access,
        max_request_bytes=max_request_bytes,
        side_port=side_port,
    )
    http = None
    metrics = None
    try:
        if http_port is not None:
            http = await start_http(endpoint, http_port, host, access, _limits(max_request_bytes))
        metrics = start_metrics_server(endpoint, metrics_port, host) if metrics_port is not None else None
        await stop.wait()
    finally:
        await endpoint.close("the server is shutting down")
        await server.stop(grace=2.0)
        if http is not None:
            await http.stop()
        if metrics is not None:
            metrics.shutdown()


def _limits(max_request_bytes: int | None) -> HttpLimits:
    return HttpLimits(max_request_bytes) if max_request_bytes is not None else HttpLimits()


def _http_url(host: str, http: HttpServer | None, access: ServerAccess | None) -> str | None:
    """Where the REST API listens, as a URL (None: no HTTP)."""
    if http is None:
        return None
    scheme = "https" if access is not None and access.tls else "http"
    return f"{scheme}://{host}:{http.port}"


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)


__all__ = ["Endpoint", "Serving", "serve_build", "serve_endpoint", "serve_one_stage"]
