"""The revocation event schema: every event tokend writes to ``P:events`` and publishes
on ``P:revocations``, the one definition the emitters follow (the Lua scripts' ``emit``
calls, ``key_rotated`` below) and the subscriber library's parser checks against.

An event is a JSON object with ``v`` (the schema version) and the fields of its type;
a field type is a JSON type (``string``, ``number``, ``integer``, ``null``), alternatives
joined by ``|``, and a trailing ``?`` marks a field that may be absent. ``at`` and
``until`` are Unix times in seconds: what the event took effect at, and the last moment
an access token it affects can still be unexpired. Subscribers ignore fields and types
they do not know and accept reasons not listed here (the list grows).

tokend_client/_events.py holds the client's copy (it does not import the server); a
test checks that both are identical.
"""

from __future__ import annotations

from typing import Any

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

#: The reasons tokend gives, by event type.
REASONS: dict[str, tuple[str, ...]] = {
    "session.revoked": (
        "logout",
        "logout_others",
        "session_deleted",
        "oauth_revoke",
        "refresh_token_reuse",
        "session_limit",
    ),
    "session.expired": ("idle_timeout", "absolute_timeout"),
    "token.revoked": ("oauth_revoke",),
    "user.revoked": ("logout_all", "password_changed", "admin_revoke", "user_deleted"),
    "all.revoked": ("redis_data_loss", "redis_rollback"),
    "key.rotated": ("scheduled", "algorithm_changed", "manual"),
}


def key_rotated(*, reason: str, at: float, kid: str, activates_at: float) -> dict[str, Any]:
    """A key.rotated event (published by emit.lua, which adds ``v``)."""
    return {
        "type": "key.rotated",
        "sub": None,
        "sid": None,
        "jti": None,
        "reason": reason,
        "at": at,
        "until": at,
        "kid": kid,
        "activates_at": activates_at,
    }
