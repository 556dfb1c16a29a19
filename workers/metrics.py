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
        # signed webhooks (workers/webhooks.py), per endpoint
        self.webhook_delivered = Counter(
            "tokend_webhook_delivered_total",
            "Events delivered to each webhook endpoint (a 2xx answer)",
            ["endpoint"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "tokend_webhook_failed_attempts_total",
            "Failed webhook delivery attempts (retried, or dead-lettered at the last)",
            ["endpoint"],
            registry=self.registry,
        )
        self.webhook_lag = Gauge(
            "tokend_webhook_lag_seconds",
            "Now minus the time of the oldest event the endpoint has not received",
            ["endpoint"],
            registry=self.registry,
        )
        self.webhook_lost = Gauge(
            "tokend_webhook_lost_partitions",
            "Partitions in which the endpoint lost events (trimmed before delivery)",
            ["endpoint"],
            registry=self.registry,
        )
        self.webhook_lost_events = Counter(
            "tokend_webhook_lost_events_total",
            "Events trimmed from the streams before this process could deliver them",
            ["endpoint"],
            registry=self.registry,
        )
        self.webhook_dead = Gauge(
            "tokend_webhook_dead_letters",
            "Dead letters waiting for `tokend webhooks retry`",
            ["endpoint"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
