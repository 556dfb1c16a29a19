"""Signed webhooks, the Redis and HTTP side: positions, leases, dead letters, signing,
one delivery attempt, and the per-endpoint status (docs/webhooks.md).

Per (endpoint, partition) the position hash (Partition.webhook_position) holds ``id``
(the last stream entry delivered, skipped or given up) and ``n``, that entry's ordinal
in the stream (entries ever added up to it). The event streams are only appended to and
trimmed from the front, so ``entries-added - length`` entries were trimmed: when that
exceeds ``n``, events the endpoint never got were trimmed (lost).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.keyspace import Keyspace, Partition
from service.webhook_settings import WebhookEndpoint

# Bytes of a receiver's answer read (for the error message); the rest is dropped.
BODY_CAP = 1024

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms. 1: held by token (taken or renewed).
HOLD_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS[1] lease; ARGV[1] token
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# KEYS[1] lease, KEYS[2] position, KEYS[3] dead letters; ARGV[1] token, ARGV[2] ttl ms,
# ARGV[3] entry id, ARGV[4] its ordinal, ARGV[5..7] (dead letter) event, error, attempts.
# 0: the lease is no longer ours (nothing written).
ADVANCE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[5] then
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[3], 'event', ARGV[5], 'error', ARGV[6],
    'attempts', ARGV[7])
end
redis.call('HSET', KEYS[2], 'id', ARGV[3], 'n', ARGV[4])
return 1
"""
# KEYS[1] lease, KEYS[2] position; ARGV[1] token, ARGV[2] lost count, ARGV[3] new n,
# ARGV[4] now
LOST_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[2], 'lost', ARGV[2])
redis.call('HSET', KEYS[2], 'n', ARGV[3], 'lost_at', ARGV[4])
return 1
"""


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value."""
    mac = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def message_id(endpoint: str, partition: int, entry_id: str) -> str:
    """``webhook-id``: the same for every attempt of one event to one endpoint (stream ids
    are unique within a partition's stream only)."""
    return f"{endpoint}:{partition}:{entry_id}"


@dataclass(frozen=True)
class Attempt:
    ok: bool
    error: str = ""
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def _read_capped(resp: aiohttp.ClientResponse, cap: int = BODY_CAP) -> bytes:
    # content.read(n) returns what has arrived, up to n: loop to EOF or the cap.
    data = b""
    while len(data) < cap:
        chunk = await resp.content.read(cap - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    seconds: float,
) -> Attempt:
    """One POST; no redirects, the whole exchange within ``seconds``; any 2xx is success."""
    try:
        async with http.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            text = await _read_capped(resp)
            if 200 <= resp.status < 300:
                return Attempt(True)
            snippet = text[:200].decode("utf-8", "replace")
            return Attempt(
                False,
                f"HTTP {resp.status}: {snippet}".strip(),
                _retry_after(resp.headers.get("Retry-After")),
            )
    except TimeoutError:
        return Attempt(False, f"timed out after {seconds:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:300])


async def send(
    http: aiohttp.ClientSession,
    endpoint: WebhookEndpoint,
    msg_id: str,
    body: bytes,
    seconds: float,
) -> Attempt:
    """One signed POST of ``body``; no redirects, the whole exchange within ``seconds``."""
    now = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(endpoint.secret, msg_id, now, body),
    }
    return await post(http, endpoint.url, body, headers, seconds)


class Target(Protocol):
    """A kind of delivery endpoint: which events it takes and how it sends one. The
    engine (workers/webhooks.py) keeps positions, leases, retries and dead letters under
    its ``id``, the same for every kind."""

    @property
    def id(self) -> str: ...

    @property
    def url(self) -> str: ...

    def wants(self, event: dict[str, Any]) -> bool:
        """Whether this endpoint gets the event (the stream entry's JSON, parsed)."""
        ...

    async def send(
        self, http: aiohttp.ClientSession, msg_id: str, body: str, seconds: float
    ) -> Attempt:
        """One attempt of delivering the event ``body`` (the entry's JSON)."""
        ...


@dataclass(frozen=True)
class WebhookTarget:
    """A TOKEND_WEBHOOKS endpoint: the event's JSON, signed per Standard Webhooks."""

    endpoint: WebhookEndpoint

    @property
    def id(self) -> str:
        return self.endpoint.id

    @property
    def url(self) -> str:
        return self.endpoint.url

    def wants(self, event: dict[str, Any]) -> bool:
        return event.get("type") in self.endpoint.events

    async def send(
        self, http: aiohttp.ClientSession, msg_id: str, body: str, seconds: float
    ) -> Attempt:
        return await send(http, self.endpoint, msg_id, body.encode(), seconds)


class WebhookStore:
    """The Redis records of webhook delivery under one prefix."""

    def __init__(self, redis: aioredis.Redis, keys: Keyspace) -> None:
        self.redis = redis
        self.keys = keys
        self._hold = redis.register_script(HOLD_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._advance = redis.register_script(ADVANCE_LUA)
        self._lost = redis.register_script(LOST_LUA)

    async def hold(self, part: Partition, endpoint: str, token: str, ttl_ms: int) -> bool:
        lease = part.webhook_lease(endpoint)
        return bool(await self._hold(keys=[lease], args=[token, ttl_ms]))

    async def release(self, part: Partition, endpoint: str, token: str) -> None:
        await self._release(keys=[part.webhook_lease(endpoint)], args=[token])

    async def stream_info(self, part: Partition) -> tuple[str, int, int]:
        """last-generated-id, entries-added and length of the partition's stream."""
        try:
            info = await self.redis.xinfo_stream(part.events)
        except ResponseError:  # no such key: nothing was ever added
            return "0-0", 0, 0
        return str(info["last-generated-id"]), int(info["entries-added"]), int(info["length"])

    async def position(self, part: Partition, endpoint: str) -> tuple[str, int]:
        """The endpoint's position (id, ordinal); a new endpoint starts at the stream's end."""
        key = part.webhook_position(endpoint)
        got = cast(list[str | None], await self.redis.hmget(key, ["id", "n"]))
        if got[0] is not None:
            return got[0], int(got[1] or 0)
        last, added, _ = await self.stream_info(part)
        await self.redis.hset(key, mapping={"id": last, "n": added})
        return last, added

    async def advance(
        self,
        part: Partition,
        endpoint: str,
        token: str,
        ttl_ms: int,
        entry_id: str,
        ordinal: int,
        dead: tuple[str, str, int] | None = None,
    ) -> bool:
        keys = [
            part.webhook_lease(endpoint),
            part.webhook_position(endpoint),
            part.webhook_dead(endpoint),
        ]
        args: list[Any] = [token, ttl_ms, entry_id, ordinal]
        if dead is not None:
            args.extend(dead)
        return bool(await self._advance(keys=keys, args=args))

    async def mark_lost(
        self, part: Partition, endpoint: str, token: str, count: int, ordinal: int
    ) -> bool:
        keys = [part.webhook_lease(endpoint), part.webhook_position(endpoint)]
        return bool(await self._lost(keys=keys, args=[token, count, ordinal, time.time()]))

    async def failed(self, part: Partition, endpoint: str, error: str) -> None:
        key = part.webhook_position(endpoint)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "failed", 1)
            pipe.hset(key, "error", error[:500])
            await pipe.execute()

    async def partition_status(self, part: Partition, endpoint: str, now: float) -> dict[str, Any]:
        """Position, lag, pending, failures, dead letters and lost events of one pair."""
        pos = cast(dict[str, str], await self.redis.hgetall(part.webhook_position(endpoint)))
        _, added, length = await self.stream_info(part)
        position = pos.get("id")
        n = int(pos.get("n", added))
        trimmed = added - length
        lag = 0.0
        if position is not None:
            head = cast(
                list[tuple[str, dict[str, str]]],
                await self.redis.xrange(part.events, min=f"({position}", count=1),
            )
            if head:
                try:
                    lag = max(0.0, now - float(json.loads(head[0][1]["event"])["at"]))
                except (KeyError, ValueError, TypeError):
                    lag = 0.0
        return {
            "partition": part.index,
            "position": position,
            "lag": round(lag, 3),
            "pending": max(0, added - max(n, trimmed)) if position is not None else 0,
            "failed": int(pos.get("failed", 0)),
            "error": pos.get("error"),
            "dead": int(await self.redis.xlen(part.webhook_dead(endpoint))),
            # marked by the deliverer, plus what is trimmed but not yet noticed
            "lost": int(pos.get("lost", 0)) + max(0, trimmed - n),
            "holder": await self.redis.get(part.webhook_lease(endpoint)),
        }

    async def status(self, endpoint: Target | WebhookEndpoint, now: float) -> dict[str, Any]:
        parts = [await self.partition_status(p, endpoint.id, now) for p in self.keys.all]
        return {
            "endpoint": endpoint.id,
            "url": endpoint.url,
            "lag": max((p["lag"] for p in parts), default=0.0),
            "pending": sum(p["pending"] for p in parts),
            "failed": sum(p["failed"] for p in parts),
            "dead": sum(p["dead"] for p in parts),
            "lost": sum(p["lost"] for p in parts),
            "partitions": parts,
        }

    async def dead_letters(
        self, part: Partition, endpoint: str
    ) -> list[tuple[str, dict[str, str]]]:
        return cast(
            list[tuple[str, dict[str, str]]],
            await self.redis.xrange(part.webhook_dead(endpoint)),
        )

    async def drop_dead_letter(self, part: Partition, endpoint: str, letter_id: str) -> None:
        await self.redis.xdel(part.webhook_dead(endpoint), letter_id)
