"""(5) Expiry sweep with 100,000 and 1,000,000 live sessions; (6) Redis memory per session.

Both run tokend's own code in-process (SessionStore, ExpiryWorker) against the shared
Redis, under fresh prefixes that are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from bench.harness import REDIS_URL, cleanup_redis_prefix, fmt, median, new_prefix, wait_quiet
from bench.report import Section, progress
from service.clock import FrozenClock
from service.http.request import FIELD_BYTES, shorten
from service.keyspace import Keyspace
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.settings import Settings
from service.tokens import new_id
from tokend_client.redis_target import RedisTarget
from workers.expiry import ExpiryWorker

CHUNK = 5_000
DUE = 10_000
BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
API_UA = "python-httpx/0.27.0"


def _settings(prefix: str, **lifetimes: int) -> Settings:
    return replace(Settings(), redis_prefix=prefix, **lifetimes)


async def create_sessions(
    redis: aioredis.Redis,
    settings: Settings,
    n: int,
    *,
    now: float,
    user_agent: str = "",
    ip: str = "",
) -> list[tuple[str, str, str]]:
    """``n`` sessions through ``SessionStore.create`` in big gathers; (sid, uid, jti)."""
    store = SessionStore.from_settings(redis, settings)
    batch, script = getattr(store, "_batch", None), getattr(store, "_create", None)
    if batch is not None and script is not None:
        # Bulk fill only: the store's own create script, auto-pipelined like its rotate, so a
        # million sessions take minutes rather than many (one round trip per 128 calls).
        store._create = lambda keys, args: batch.script(script, keys, args)  # type: ignore
    made: list[tuple[str, str, str]] = []
    for i in range(0, n, CHUNK):
        chunk = [(new_id(), str(uuid.uuid4()), new_id()) for _ in range(min(CHUNK, n - i))]
        await asyncio.gather(
            *(
                store.create(
                    sid=sid, uid=uid, jti=jti, now=now, checked_at=now, user_agent=user_agent, ip=ip
                )
                for sid, uid, jti in chunk
            )
        )
        made.extend(chunk)
    return made


async def _used_memory(redis: aioredis.Redis) -> int:
    info: dict[str, Any] = await redis.info("memory")
    return int(info["used_memory"])


async def _sweep(sizes: Sequence[int], rounds: int, batch: int) -> Section:
    redis = make_redis(RedisTarget(url=REDIS_URL), pool_size=16, pool_timeout=60)
    prefixes = {size: new_prefix(f"sweep{size}") for size in sizes}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    swept: dict[int, list[int]] = {size: [] for size in sizes}
    populate: dict[int, float] = {}
    try:
        before = await _used_memory(redis)
        for size in sizes:
            t0 = time.perf_counter()
            await create_sessions(redis, _settings(prefixes[size]), size, now=time.time())
            populate[size] = time.perf_counter() - t0
            progress(
                f"[sweep] {size:,} live sessions created in {populate[size]:.0f} s "
                f"({size / populate[size]:,.0f}/s)"
            )
        peak = await _used_memory(redis)
        for i in range(rounds):
            for size in sizes:
                prefix = prefixes[size]
                now = time.time()
                # Due an hour from now: idle and absolute deadlines a minute away.
                due = _settings(
                    prefix, refresh_idle_ttl=60, refresh_absolute_ttl=120, refresh_reuse_grace=10
                )
                await create_sessions(redis, due, DUE, now=now)
                worker = ExpiryWorker(
                    sessions=SessionStore.from_settings(redis, _settings(prefix)),
                    clock=FrozenClock(now + 3600),
                    batch=batch,
                )
                await asyncio.to_thread(wait_quiet)
                t0 = time.perf_counter()
                total = 0
                while n := await worker.step():
                    total += n
                elapsed = time.perf_counter() - t0
                times[size].append(elapsed)
                swept[size].append(total)
                progress(
                    f"[sweep] round {i + 1}/{rounds} {size:,} live: {total:,} swept in "
                    f"{elapsed * 1000:.0f} ms"
                )
    finally:
        for prefix in prefixes.values():
            cleanup_redis_prefix(prefix)
        after = await _used_memory(redis)
        await redis.aclose()

    s = Section(f"5. Expiry sweep of {DUE:,} due sessions ({rounds} rounds)")
    s.add(
        f"`workers.expiry.ExpiryWorker.step` (batch {batch} per shard) called in a loop until "
        f"it finds nothing due, in-process; {DUE:,} sessions due among the live ones, "
        "created through `SessionStore.create` (gathered, auto-pipelined). The live "
        "sessions' deadlines are two weeks away.",
        "",
    )
    rows = [
        [
            f"{size:,}",
            fmt([t * 1000 for t in times[size]]),
            fmt([float(n) for n in swept[size]]),
            f"{populate[size]:.0f} s",
        ]
        for size in sizes
    ]
    s.table(["live sessions", "sweep ms", "sessions swept", "time to create the live ones"], rows)
    s.add(
        f"Redis used_memory: {before / 2**20:,.0f} MiB before, {peak / 2**20:,.0f} MiB with "
        f"every population, {after / 2**20:,.0f} MiB after cleaning up.",
        "",
    )
    if len(sizes) >= 2:
        small, large = min(sizes), max(sizes)
        ratio = median(times[large]) / median(times[small])
        s.target(
            f"sweep with {large:,} live within 1.3x of {small:,}", f"{ratio:.2f}x", ratio <= 1.3
        )
    return s


def sweep_section(rounds: int, sizes: Sequence[int], batch: int = 500) -> Section:
    return asyncio.run(_sweep(sizes, rounds, batch))


async def _key_bytes(redis: aioredis.Redis, prefix: str) -> dict[str, int]:
    """``MEMORY USAGE`` summed over the prefix's keys, by kind (s, u, exp, ...)."""
    keys = [k async for k in redis.scan_iter(match=Keyspace(prefix).pattern, count=5000)]
    total: dict[str, int] = {}
    for i in range(0, len(keys), 5000):
        chunk = keys[i : i + 5000]
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(chunk, sizes, strict=True):
            rest = str(key)[len(prefix) + 1 :]
            if rest.startswith("{"):  # a partition's key: "{<tag>}:<kind>:..."
                rest = rest.partition("}:")[2]
            kind = rest.split(":", 1)[0]
            total[kind] = total.get(kind, 0) + int(size or 0)
    return total


async def _memory(n: int) -> Section:
    redis = make_redis(RedisTarget(url=REDIS_URL), pool_size=16, pool_timeout=60)
    rows = []
    s = Section(f"6. Redis memory per live session ({n:,} sessions)")
    try:
        for label, sent in (("API client user agent", API_UA), ("browser user agent", BROWSER_UA)):
            ua = shorten(sent, FIELD_BYTES)  # what the HTTP layer records (client_info)
            prefix = new_prefix("mem")
            settings = _settings(prefix)
            try:
                base = await _used_memory(redis)
                now = time.time()
                made = await create_sessions(
                    redis, settings, n, now=now, user_agent=ua, ip="203.0.113.7"
                )
                created = await _used_memory(redis) - base
                created_keys = sum((await _key_bytes(redis, prefix)).values())
                store = SessionStore.from_settings(redis, settings)
                for i in range(0, n, 1000):
                    await asyncio.gather(
                        *(
                            store.rotate(
                                sid=sid,
                                uid=_uid,
                                jti=jti,
                                new_jti=new_id(),
                                now=now + 1,
                                user_agent=ua,
                                ip="203.0.113.7",
                            )
                            for sid, _uid, jti in made[i : i + 1000]
                        )
                    )
                rotated = await _used_memory(redis) - base
                kinds = await _key_bytes(redis, prefix)
                rotated_keys = sum(kinds.values())
                first_sid, first_uid, _ = made[0]
                encoding = await redis.object(
                    "encoding", store.keys.of(first_uid).session(first_sid)
                )
            finally:
                cleanup_redis_prefix(prefix)
            rows.append(
                [
                    label,
                    f"{len(sent)} chars sent, {len(ua.encode())} B recorded",
                    f"{created / n:.0f}",
                    f"{created_keys / n:.0f}",
                    f"{rotated / n:.0f}",
                    f"{rotated_keys / n:.0f}",
                    f"{kinds.get('s', 0) / n:.0f} ({encoding})",
                    f"{kinds.get('u', 0) / n:.0f}",
                    f"{kinds.get('exp', 0) / n:.0f}",
                ]
            )
            progress(
                f"[memory] {label}: {created / n:.0f} B/session created, "
                f"{rotated / n:.0f} after one refresh"
            )
            s.target(
                f"<= 512 bytes of Redis per live session ({label}, after a refresh)",
                f"{rotated / n:.0f} B (INFO delta), {rotated_keys / n:.0f} B (MEMORY USAGE)",
                max(rotated, rotated_keys) / n <= 512,
            )
    finally:
        await redis.aclose()
    s.add(
        f"{n:,} sessions of {n:,} users created through `SessionStore.create` (the login "
        "path's Redis work; uid a UUID, ip set, the user agent as the HTTP layer records it: "
        "within 64 bytes, `head…tail`), then each refreshed "
        "once through `SessionStore.rotate` (which adds the previous token and its grace). "
        "`INFO memory` used_memory deltas (the whole server: other clients add noise) next "
        "to the sum of `MEMORY USAGE` over the prefix's keys, split by structure (session "
        "hash `{T}:s:<sid>`, per-user index `{T}:u:<uid>`, the partitions' expiry indexes "
        "`{T}:exp`). INFO also "
        "counts the main and expires dictionary entries that `MEMORY USAGE` leaves out. "
        "A hash stays a compact listpack only while every value is at most "
        "`hash-max-listpack-value` (64 here) bytes.",
        "",
    )
    s.table(
        [
            "variant",
            "user agent",
            "B/session created (INFO)",
            "(MEMORY USAGE)",
            "B/session after a refresh (INFO)",
            "(MEMORY USAGE)",
            "of which session hash",
            "user index",
            "expiry index",
        ],
        rows,
    )
    return s


def memory_section(n: int = 10_000) -> Section:
    return asyncio.run(_memory(n))
