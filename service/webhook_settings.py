"""TOKEND_WEBHOOKS: the endpoints that receive signed revocation webhooks
(workers/webhooks.py, docs/webhooks.md), parsed once for Settings."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .events import EVENTS

__all__ = [
    "WEBHOOK_DEFAULT_EVENTS",
    "WebhookEndpoint",
    "backchannel_endpoint_id",
    "parse_webhooks",
]

# Event types a webhook gets by default: every revocation (key.rotated is not one).
WEBHOOK_DEFAULT_EVENTS = frozenset(t for t in EVENTS if t != "key.rotated")


@dataclass(frozen=True)
class WebhookEndpoint:
    """A receiver of signed revocation webhooks (TOKEND_WEBHOOKS; workers/webhooks.py).

    ``id`` names the endpoint in Redis keys, metrics and the CLI: the entry's ``id``, or
    the first 12 hex digits of the URL's SHA-256. ``secret`` is the raw key decoded from
    ``whsec_<base64>`` (Standard Webhooks)."""

    id: str
    url: str
    secret: bytes = field(repr=False)
    events: frozenset[str] = WEBHOOK_DEFAULT_EVENTS


_ENDPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def backchannel_endpoint_id(client_id: str) -> str:
    """The delivery endpoint id of a client's back-channel logout URI (workers/backchannel.py):
    ``bcl-<client id>``, or ``bcl-`` and 12 hex digits of its SHA-256 when the id is not
    1 to 60 letters, digits, . _ or -."""
    if _ENDPOINT_ID.fullmatch(client_id) and len(client_id) <= 60:
        return f"bcl-{client_id}"
    return "bcl-" + hashlib.sha256(client_id.encode()).hexdigest()[:12]


_WEBHOOK_KEYS = ("id", "url", "secret", "events")


def parse_webhooks(raw: str) -> tuple[WebhookEndpoint, ...]:
    """TOKEND_WEBHOOKS: a JSON list of {"url", "secret", "events"?, "id"?}."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, list):
        raise ValueError("expected a JSON list of endpoints")
    endpoints: list[WebhookEndpoint] = []
    for n, spec in enumerate(value):
        where = f"endpoint {n}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected an object")
        unknown = sorted(k for k in spec if k not in _WEBHOOK_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown key {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(_WEBHOOK_KEYS)})"
            )
        url = spec.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: url must be a non-empty string")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{where}: url must be an http(s) URL, got {url[:200]!r}")
        endpoint_id = spec.get("id", hashlib.sha256(url.encode()).hexdigest()[:12])
        if not isinstance(endpoint_id, str) or not _ENDPOINT_ID.fullmatch(endpoint_id):
            raise ValueError(f"{where}: id must be 1 to 64 letters, digits, . _ or -")
        where = f"endpoint {endpoint_id!r}"
        secret = spec.get("secret")
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise ValueError(f"{where}: secret must be a string whsec_<base64>")
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: secret is not whsec_ followed by base64") from None
        if len(key) < 16:
            raise ValueError(f"{where}: secret must decode to at least 16 bytes")
        events = spec.get("events", sorted(WEBHOOK_DEFAULT_EVENTS))
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) for e in events)
        ):
            raise ValueError(f"{where}: events must be a non-empty list of event types")
        bad = sorted(set(events) - set(EVENTS))
        if bad:
            raise ValueError(
                f"{where}: unknown event type {', '.join(map(repr, bad))} "
                f"(known: {', '.join(EVENTS)})"
            )
        if any(e.id == endpoint_id for e in endpoints):
            raise ValueError(f'{where}: two endpoints have this id (give each an "id")')
        endpoints.append(WebhookEndpoint(endpoint_id, url, key, frozenset(events)))
    return tuple(endpoints)
