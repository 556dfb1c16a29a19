"""Prometheus metrics, in a registry of the app's own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    """The counters and histograms tokend exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "tokend_http_request_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.logins = Counter(
            "tokend_logins_total", "Login attempts by result", ["result"], registry=self.registry
        )
        self.refreshes = Counter(
            "tokend_refreshes_total",
            "Refresh attempts by result",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "tokend_events_published_total",
            "Revocation events published by the API, by type",
            ["type"],
            registry=self.registry,
        )
        self.revocations = Counter(
            "tokend_revocations_total", "Revocations by reason", ["reason"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
