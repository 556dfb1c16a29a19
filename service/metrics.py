"""Prometheus metrics, in a registry of the app's own (no process-global state).

The label values below are public (dashboards and alerts select on them): each use case
records its outcome once, as one of these values, whatever exception class carried it.

``tokend_logins_total{result}``: ``ok`` (password login, ``/auth/login`` or the OAuth
password grant), ``bad_credentials`` (also a login that lost the race to a revocation of
its user), ``rate_limited``, ``unavailable`` (Redis or the database down), ``invalid`` (a
malformed attempt), ``oidc`` (a session started by social login) and ``oidc_failed`` (a
social-login callback that started none).

``tokend_refreshes_total{result}``: ``rotated``, ``grace`` (the previous token replayed
within the grace: the same successor), ``reuse_concurrent`` and ``reuse_replay`` (the
session is revoked), ``expired``, ``fenced`` (ended by a Redis fence), ``unknown`` (no
such session, or ended by its user's revocation mark), ``invalid`` (bad token, another
client's token, another user's session, a widened scope) and ``unavailable``.

``tokend_revocations_total{reason}`` and ``tokend_events_published_total{type}``: one of
each per revocation the API performed, with the reason and the event type it published.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LoginOutcome = Literal[
    "ok", "bad_credentials", "rate_limited", "unavailable", "invalid", "oidc", "oidc_failed"
]
RefreshOutcome = Literal[
    "rotated",
    "grace",
    "rolled_forward",
    "reuse_concurrent",
    "reuse_replay",
    "expired",
    "fenced",
    "unknown",
    "invalid",
    "unavailable",
]
RevocationReason = Literal[
    "logout",
    "logout_all",
    "logout_others",
    "session_deleted",
    "session_limit",
    "password_changed",
    "admin_revoke",
    "refresh_token_reuse",
    "oauth_revoke",
]
EventType = Literal["session.revoked", "user.revoked", "token.revoked"]

LOGIN_OUTCOMES: tuple[LoginOutcome, ...] = get_args(LoginOutcome)
REFRESH_OUTCOMES: tuple[RefreshOutcome, ...] = get_args(RefreshOutcome)
REVOCATION_REASONS: tuple[RevocationReason, ...] = get_args(RevocationReason)


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

    def login(self, outcome: LoginOutcome) -> None:
        """Count one login attempt (or social-login session) by its outcome."""
        self.logins.labels(outcome).inc()

    def refresh(self, outcome: RefreshOutcome) -> None:
        """Count one refresh attempt by its outcome."""
        self.refreshes.labels(outcome).inc()

    def revoked(self, reason: RevocationReason, event: EventType) -> None:
        """Count one revocation and the one event it published."""
        self.revocations.labels(reason).inc()
        self.events.labels(event).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
