"""The revocation event schema as the subscriber library reads it.

tokend's own definition is service/events.py; this is the library's copy (the library
does not import the server) and a test checks that both are identical. A field type is
a JSON type (``string``, ``number``, ``integer``, ``null``), alternatives joined by
``|``; a trailing ``?`` marks a field that may be absent. Unknown types and extra fields
are accepted (the schema grows); a known type with a missing or mistyped field is not.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["EVENTS", "VERSION", "problem"]

VERSION = 1

_BASE = {"v": "integer", "type": "string", "reason": "string", "at": "number", "until": "number"}

#: Every event type and its fields.
EVENTS: dict[str, dict[str, str]] = {
    "session.revoked": {
        **_BASE,
        "sub": "string",
        "sid": "string",
        "jti": "null",
        "detail": "string?",
        # the OAuth client the session was issued to; absent when it had none
        "cid": "string?",
    },
    "session.expired": {**_BASE, "sub": "string", "sid": "string", "jti": "null"},
    "token.revoked": {**_BASE, "sub": "string", "sid": "string", "jti": "string"},
    # sid: the session kept (it changed the password), null when none
    "user.revoked": {**_BASE, "sub": "string", "sid": "string|null", "jti": "null"},
    # partition: the one whose data was lost (its users' tokens are denied); absent: all
    "all.revoked": {
        **_BASE,
        "sub": "null",
        "sid": "null",
        "jti": "null",
        "epoch": "integer",
        "partition": "integer?",
    },
    "key.rotated": {
        **_BASE,
        "sub": "null",
        "sid": "null",
        "jti": "null",
        "kid": "string",
        "activates_at": "number",
    },
}


def _is(value: Any, json_type: str) -> bool:
    if json_type == "null":
        return value is None
    if json_type == "string":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if json_type == "integer":
        return float(value).is_integer()
    return json_type == "number" and math.isfinite(value)


def problem(event: Any) -> str | None:
    """Why ``event`` is not a v1 event of the schema, or None when it is."""
    if not isinstance(event, dict) or event.get("v") != VERSION:
        return "not a v1 event"
    kind, at, until = event.get("type"), event.get("at"), event.get("until")
    if not isinstance(kind, str) or not _is(at, "number") or not _is(until, "number"):
        return "missing type, at or until"
    for name, spec in EVENTS.get(kind, {}).items():
        optional = spec.endswith("?")
        if name not in event:
            if optional:
                continue
            return f"{kind} without {name}"
        if not any(_is(event[name], t) for t in spec.rstrip("?").split("|")):
            return f"{kind} with a {name} that is not {spec.rstrip('?')}"
    return None
