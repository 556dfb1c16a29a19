"""Revocation events written to a test prefix as tokend writes them (stream and channel in
one step), for the subscriber library's tests."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

# XADD and PUBLISH in one step, like tokend's emit: the channel gets the stream JSON plus id.
_EMIT_LUA = """
local id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
redis.call('PUBLISH', KEYS[2], string.sub(ARGV[1], 1, -2) .. ',"id":"' .. id .. '"}')
return id
"""

EmitRevocation = Callable[..., Awaitable[str]]


async def emit_event(
    client: aioredis.Redis,
    stream: str,
    channel: str,
    type: str,
    *,
    sub: str | None = None,
    sid: str | None = None,
    jti: str | None = None,
    reason: str = "test",
    at: float | None = None,
    until: float | None = None,
) -> str:
    """Append a synthetic v1 event to ``stream`` and publish it on ``channel``; its id."""
    now = time.time() if at is None else at
    event = {
        "type": type,
        "sub": sub,
        "sid": sid,
        "jti": jti,
        "reason": reason,
        "at": now,
        "until": now + 960 if until is None else until,
        "v": 1,
    }
    entry_id = await client.eval(  # type: ignore[misc]
        _EMIT_LUA, 2, stream, channel, json.dumps(event, separators=(",", ":"))
    )
    return str(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
