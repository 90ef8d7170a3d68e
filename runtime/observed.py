"""What the endpoint observes per request, as Prometheus metrics a user can alert on: requests answered by
gRPC status code, their latency, and each stage's queue and compute time (from the timings every stage
adds to a request on its way). Names follow Prometheus' conventions (base unit seconds, `_total` counters);
the README lists them. The per-stage counters the workers keep themselves are in runtime.metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

# From 0.5 ms to 60 s: a small CPU stage up to an emulated edge stage or a request's whole deadline.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Observed:
    """The endpoint's own metrics, in a registry of their own."""

    def __init__(self, model: str, stages: Sequence[str]) -> None:
        self.model = model
        self.stages = list(stages)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nndeploy_requests",
            "Inference requests the endpoint answered, by gRPC status code",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nndeploy_request_duration_seconds",
            "Time from a request's arrival at the endpoint to its answer (successful requests)",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nndeploy_batch_size",
            "Samples (the requests' first dimensions, without padding) run through the chain as one batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        stage_labels = ["stage", "device"]
        self.queue = Histogram(
            "nndeploy_stage_queue_duration_seconds",
            "Time a request waited in a stage's queue before its compute started",
            stage_labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "nndeploy_stage_compute_duration_seconds",
            "Time a stage spent computing one request",
            stage_labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.transfer = Histogram(
            "nndeploy_stage_transfer_duration_seconds",
            "Time from the upstream (endpoint or previous stage) sending a request to its arrival at a "
            "stage: the hop into it (wall clocks of two hosts)",
            stage_labels,
            buckets=BUCKETS,
            registry=self.registry,
        )

    def batch(self, samples: int) -> None:
        """One run of the chain, holding `samples` samples (without padding)."""
        self.batch_size.labels(self.model).observe(samples)

    def answered(self, code: str, seconds: float | None = None) -> None:
        """One request answered with gRPC status `code` ("OK", "DEADLINE_EXCEEDED", ...), and its
        latency if it succeeded."""
        self.requests.labels(self.model, code).inc()
        if seconds is not None:
            self.latency.labels(self.model).observe(seconds)

    def stage_times(self, timings: Sequence[object]) -> None:
        """The StageTimings a successful request carries back (ms), one per stage it passed."""
        for timing in timings:
            stage = int(timing.stage)  # type: ignore[attr-defined]
            device = self.stages[stage] if 0 <= stage < len(self.stages) else ""
            self.queue.labels(str(stage), device).observe(timing.queue_ms / 1e3)  # type: ignore[attr-defined]
            self.compute.labels(str(stage), device).observe(timing.compute_ms / 1e3)  # type: ignore[attr-defined]
            self.transfer.labels(str(stage), device).observe(timing.transfer_ms / 1e3)  # type: ignore[attr-defined]
