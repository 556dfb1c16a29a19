"""Prometheus metrics of a worker process, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class WorkerMetrics:
    """What `tokend work` exports at /metrics when TOKEND_WORKER_METRICS_PORT is set."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.items = Counter(
            "tokend_worker_items_total",
            "Items handled by each worker (sessions expired, keys rotated or purged)",
            ["worker"],
            registry=self.registry,
        )
        self.errors = Counter(
            "tokend_worker_errors_total",
            "Failed worker steps (retried with backoff)",
            ["worker"],
            registry=self.registry,
        )
        self.heartbeat = Gauge(
            "tokend_worker_heartbeat_timestamp_seconds",
            "When this process last wrote its heartbeat",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
