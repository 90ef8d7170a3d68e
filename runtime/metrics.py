"""The endpoint's metrics server: /metrics (and nothing else: 404) in Prometheus' text format, holding the
per-stage counters (requests, errors, queue depth, compute and transfer time), read from the stage workers'
Stats on each scrape, and the endpoint's own request counters and histograms (runtime.observed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from nndeploy.runtime.endpoint import Endpoint


class StageCollector:
    """A prometheus_client collector over the endpoint's latest per-stage Stats."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Any]:
        """Metric families for every stage (labels: stage, device)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.endpoint.loop is not None and self.endpoint.loop.is_running():
            # Fresh figures on every scrape (the watcher's are up to one period old).
            refresh = asyncio.run_coroutine_threadsafe(self.endpoint.refresh_stats(), self.endpoint.loop)
            with contextlib.suppress(Exception):
                refresh.result(timeout=5)
        labels = ["stage", "device"]
        families = {
            "requests": CounterMetricFamily(
                "nndeploy_stage_requests", "Requests a stage processed", labels=labels
            ),
            "errors": CounterMetricFamily("nndeploy_stage_errors", "Requests a stage failed", labels=labels),
            "queue_depth": GaugeMetricFamily(
                "nndeploy_stage_queue_depth", "Requests waiting in a stage", labels=labels
            ),
            "compute_ms_total": CounterMetricFamily(
                "nndeploy_stage_compute_seconds",
                "Time spent running the stage's artifact",
                labels=labels,
            ),
            "transfer_ms_total": CounterMetricFamily(
                "nndeploy_stage_transfer_seconds", "Time spent sending results on", labels=labels
            ),
            "up": GaugeMetricFamily("nndeploy_stage_up", "Whether the stage worker answers", labels=labels),
        }
        for index, (device, _) in enumerate(self.endpoint.model.stages):
            stats = self.endpoint.stats[index]
            values = [str(index), device]
            families["up"].add_metric(values, 1.0 if self.endpoint.stage_up[index] else 0.0)
            if stats is None:
                continue
            for field in ("requests", "errors", "queue_depth"):
                families[field].add_metric(values, float(getattr(stats, field)))
            for field in ("compute_ms_total", "transfer_ms_total"):  # the workers count milliseconds
                families[field].add_metric(values, float(getattr(stats, field)) / 1e3)
        yield from families.values()


def start_metrics_server(endpoint: Endpoint, port: int, host: str = "127.0.0.1") -> Any:
    """Serve /metrics on host:port (port 0: any free port, then `.server_port`) in a thread; any other
    path answers 404. Returns the server (call .shutdown() to stop)."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from nndeploy.runtime.links import PortInUse

    registry = CollectorRegistry()
    registry.register(StageCollector(endpoint))
    registry.register(endpoint.observed.registry)  # type: ignore[arg-type]
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]
        return metrics(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not logged."""

    try:
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
    except OSError as exc:
        raise PortInUse(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); pass another --metrics-port"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
