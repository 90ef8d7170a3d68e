"""Per-stage metrics in Prometheus format (requests, errors, queue depth, compute and transfer time),
read from the stage workers' Stats by the endpoint's health watcher and exported with prometheus_client."""

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
                "nndeploy_stage_compute_milliseconds",
                "Time spent running the stage's artifact",
                labels=labels,
            ),
            "transfer_ms_total": CounterMetricFamily(
                "nndeploy_stage_transfer_milliseconds", "Time spent sending results on", labels=labels
            ),
            "up": GaugeMetricFamily("nndeploy_stage_up", "Whether the stage worker answers", labels=labels),
        }
        for index, (device, _) in enumerate(self.endpoint.model.stages):
            stats = self.endpoint.stats[index]
            values = [str(index), device]
            families["up"].add_metric(values, 1.0 if self.endpoint.stage_up[index] else 0.0)
            if stats is None:
                continue
            for field in ("requests", "errors", "queue_depth", "compute_ms_total", "transfer_ms_total"):
                families[field].add_metric(values, float(getattr(stats, field)))
        yield from families.values()


def start_metrics_server(endpoint: Endpoint, port: int, host: str = "127.0.0.1") -> Any:
    """Serve /metrics on host:port; returns the server (call .shutdown() to stop)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(StageCollector(endpoint))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
