"""The Prometheus metrics of a RevocationListener.

prometheus-client is optional (the ``metrics`` extra; every framework extra has it):
without it the listener counts into no-op metrics and has no registry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._denylist import DenyList

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ListenerMetrics", "make_metrics", "new_registry"]


def new_registry() -> CollectorRegistry | None:
    """A fresh registry, or None when prometheus-client is not installed."""
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


class _NoMetric:
    """Stands for every metric when there is no registry: each call does nothing."""

    def labels(self, *_: object) -> _NoMetric:
        return self

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *_a, **_k: None


@dataclass(frozen=True)
class ListenerMetrics:
    applied: Counter
    skipped: Counter
    invalid: Counter
    replays: Counter
    reconnects: Counter
    deny_list: Gauge
    connected: Gauge
    lag: Gauge
    propagation: Histogram


def make_metrics(
    registry: CollectorRegistry | None, deny: DenyList, lag: Callable[[], float | None]
) -> ListenerMetrics:
    """The listener's metrics in ``registry``; gauges read ``deny`` and ``lag`` when scraped.

    Without a registry every metric is a no-op."""
    if registry is None:
        none: Any = _NoMetric()
        return ListenerMetrics(*([none] * 9))
    from prometheus_client import Counter, Gauge, Histogram

    m = ListenerMetrics(
        applied=Counter(
            "tokend_listener_events_applied_total",
            "Revocation events applied, by type",
            ["type"],
            registry=registry,
        ),
        skipped=Counter(
            "tokend_listener_events_skipped_total",
            "Messages skipped because their stream id was already applied",
            registry=registry,
        ),
        invalid=Counter(
            "tokend_listener_events_invalid_total",
            "Messages that were not valid v1 revocation events",
            registry=registry,
        ),
        replays=Counter(
            "tokend_listener_replays_total", "Stream replays completed", registry=registry
        ),
        reconnects=Counter(
            "tokend_listener_reconnects_total",
            "Reconnects after a Redis error",
            registry=registry,
        ),
        deny_list=Gauge(
            "tokend_listener_deny_list_size",
            "Deny-list entries, by kind",
            ["kind"],
            registry=registry,
        ),
        connected=Gauge(
            "tokend_listener_connected",
            "1 while subscribed and replayed, else 0",
            registry=registry,
        ),
        lag=Gauge(
            "tokend_listener_lag_seconds",
            "Seconds since the 'at' of the last applied event",
            registry=registry,
        ),
        propagation=Histogram(
            "tokend_listener_propagation_seconds",
            "Seconds from an event's 'at' to its application, by how it arrived",
            ["source"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
        ),
    )
    m.deny_list.labels("sid").set_function(lambda: len(deny.sids))
    m.deny_list.labels("sub").set_function(lambda: len(deny.subs))
    m.deny_list.labels("jti").set_function(lambda: len(deny.jtis))
    m.deny_list.labels("all").set_function(lambda: len(deny.fenced))
    m.lag.set_function(lambda: lag() or 0.0)
    return m
