"""Workers: session expiry sweep, key rotation, heartbeats, and the event stream's shape."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.clock import FrozenClock
from service.crypto import Sealer, decode_kek
from service.db import make_engine
from service.http.appkeys import KEYRING, SETTINGS
from service.keys import SqlKeyStore
from service.keyspace import Keyspace
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.tokens import new_id
from tests.conftest import FAST_ARGON2, TEST_KEK
from tests.support import bearer, register_and_login, unverified
from tests.support.redisdata import stream_events, target_env
from tokend_client.redis_target import initialized
from workers.expiry import ExpiryWorker
from workers.rotation import KeyRotationWorker, rotate_and_announce

TOKEND = str(Path(sys.executable).with_name("tokend"))


async def index_size(redis_client: Any, prefix: str) -> int:
    """Members of every partition's expiry index."""
    sizes = [await redis_client.zcard(p.expiry) for p in Keyspace(prefix).all]
    return sum(sizes)


# The in-process tests run on standalone, cluster and Sentinel; those that start
# `tokend work`/`tokend keys` processes stay on standalone (the process side of a cluster
# deployment is tests/test_cluster_deployment.py's), to keep the suite's time.
every_mode = pytest.mark.redis_modes()


def store_for(redis: aioredis.Redis, make_settings: Any, **env: str) -> SessionStore:
    return SessionStore.from_settings(redis, make_settings(**env))


async def redis_of(settings: Any, pool_size: int = 4, pool_timeout: float = 1) -> Any:
    """tokend's own client of the settings' Redis (in their mode), initialized."""
    redis = make_redis(settings.redis, pool_size=pool_size, pool_timeout=pool_timeout)
    await initialized(redis)
    return redis


@every_mode
async def test_expiry_sweeps_only_due_sessions_once(make_settings, redis_client) -> None:
    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="1000")
    redis = await redis_of(settings, 4, 1)
    clock = FrozenClock()
    store = SessionStore.from_settings(redis, settings)
    try:
        old = [new_id() for _ in range(30)]
        for sid in old:
            await store.create(sid=sid, uid="u-old", jti=new_id(), now=clock(), checked_at=clock())
        clock.advance(50)
        young = [new_id() for _ in range(10)]
        for sid in young:
            await store.create(
                sid=sid, uid="u-young", jti=new_id(), now=clock(), checked_at=clock()
            )
        revoked = old[0]
        await store.revoke(sid=revoked, now=clock(), reason="logout", owner="u-old")
        worker = ExpiryWorker(sessions=store, clock=clock, batch=7)
        assert await worker.step() == 0  # nothing is due yet
        clock.advance(51)  # the old ones are past their idle deadline, the young are not
        total = 0
        while n := await worker.step():
            total += n
        assert total == 29
        events = await stream_events(redis_client, settings.redis_prefix)
        expired = [e for e in events if e["type"] == "session.expired"]
        assert sorted(e["sid"] for e in expired) == sorted(old[1:])
        assert {e["reason"] for e in expired} == {"idle_timeout"}
        assert all(e["until"] == e["at"] and e["sub"] == "u-old" for e in expired)
        for sid in old:
            assert await store.get("u-old", sid) is None
        for sid in young:
            assert await store.get("u-young", sid) is not None
        old_index = Keyspace(settings.redis_prefix).of("u-old").user_index("u-old")
        assert await redis_client.zcard(old_index) == 0
        assert await index_size(redis_client, settings.redis_prefix) == 10
        assert await worker.step() == 0
    finally:
        await redis.aclose()


@every_mode
async def test_refreshed_session_is_not_expired(make_settings, redis_client) -> None:
    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="1000")
    redis = await redis_of(settings, 4, 1)
    clock = FrozenClock()
    store = SessionStore.from_settings(redis, settings)
    try:
        sid, jti = new_id(), new_id()
        await store.create(sid=sid, uid="u", jti=jti, now=clock(), checked_at=clock())
        clock.advance(90)
        assert (
            await store.rotate(sid=sid, uid="u", jti=jti, new_jti=new_id(), now=clock())
        ).status == ("rotated")
        clock.advance(20)  # past the first idle deadline, within the moved one
        assert await ExpiryWorker(sessions=store, clock=clock).step() == 0
        assert await store.get("u", sid) is not None
        clock.advance(100)
        assert await ExpiryWorker(sessions=store, clock=clock).step() == 1
    finally:
        await redis.aclose()


@every_mode
async def test_absolute_deadline_expiry_reason(make_settings, redis_client) -> None:
    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="150")
    redis = await redis_of(settings, 4, 1)
    clock = FrozenClock(1_900_000_000.0)  # ahead of the wall clock, so Redis TTLs keep keys
    store = SessionStore.from_settings(redis, settings)
    try:
        sid, jti = new_id(), new_id()
        await store.create(sid=sid, uid="u", jti=jti, now=clock(), checked_at=clock())
        clock.advance(90)
        await store.rotate(sid=sid, uid="u", jti=jti, new_jti=new_id(), now=clock())
        clock.advance(61)
        assert await ExpiryWorker(sessions=store, clock=clock).step() == 1
        events = await stream_events(redis_client, settings.redis_prefix)
        assert events[-1]["reason"] == "absolute_timeout"
    finally:
        await redis.aclose()


def worker_env(settings: Any, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **target_env(settings.redis),  # the settings' Redis, in their mode
        "TOKEND_REDIS_PREFIX": settings.redis_prefix,
        "TOKEND_DATABASE_URL": settings.database_url,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        **FAST_ARGON2,
        **extra,
    }


async def test_two_worker_processes_sweep_10000_sessions_exactly_once(
    make_settings, redis_client
) -> None:
    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="60")
    redis = await redis_of(settings, 32, 5)
    store = SessionStore.from_settings(redis, settings)
    past = time.time() - 3600  # every one of them is already past its idle deadline
    sids = [new_id() for _ in range(10_000)]
    try:
        for i in range(0, len(sids), 500):
            await asyncio.gather(
                *(
                    store.create(
                        sid=sid, uid=f"user-{j % 100}", jti=new_id(), now=past, checked_at=past
                    )
                    for j, sid in enumerate(sids[i : i + 500], start=i)
                )
            )
        assert await index_size(redis_client, settings.redis_prefix) == 10_000
        env = worker_env(settings)
        procs = [
            subprocess.Popen([TOKEND, "work"], env=env, stderr=subprocess.DEVNULL) for _ in range(2)
        ]
        try:
            # kill one of them with SIGKILL while the sweep is under way
            deadline = time.monotonic() + 30
            while await index_size(redis_client, settings.redis_prefix) == 10_000:
                assert time.monotonic() < deadline, "no worker started sweeping"
                await asyncio.sleep(0.005)
            procs[0].kill()
            while await index_size(redis_client, settings.redis_prefix):
                assert time.monotonic() < deadline, "the surviving worker did not finish"
                await asyncio.sleep(0.05)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=30)
        events = await stream_events(redis_client, settings.redis_prefix)
        counts = Counter(e["sid"] for e in events if e["type"] == "session.expired")
        assert len(counts) == 10_000
        assert set(counts.values()) == {1}
        assert set(counts) == set(sids)
    finally:
        await redis.aclose()


async def test_worker_heartbeat_check_and_sigterm(make_settings) -> None:
    settings = make_settings()
    env = worker_env(settings)
    check = [TOKEND, "work", "--check"]
    assert subprocess.run(check, env=env, capture_output=True).returncode == 1
    proc = subprocess.Popen([TOKEND, "work"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(check, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "no heartbeat"
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # a clean exit removes the heartbeat
    assert subprocess.run(check, env=env, capture_output=True).returncode == 1


async def key_store(settings: Any) -> tuple[SqlKeyStore, Any]:
    engine = make_engine(settings.database_url)
    return SqlKeyStore(async_sessionmaker(engine), Sealer(decode_kek(TEST_KEK))), engine


@every_mode
async def test_key_rotation_lifecycle(make_client, make_settings, redis_client) -> None:
    clock = FrozenClock()
    settings = make_settings(TOKEND_ACCESS_TTL="60", TOKEND_LEEWAY="0")
    client = await make_client(settings=settings, clock=clock)
    tokens = await register_and_login(client)
    old_kid = unverified(tokens["access_token"])[0]["kid"]
    store, engine = await key_store(settings)
    redis = await redis_of(settings, 4, 1)
    worker = KeyRotationWorker(
        store=store,
        sessions=SessionStore.from_settings(redis, settings),
        clock=clock,
        alg="EdDSA",
        period=1000,
        publish_delay=300,
        keep_retired=5000,
    )
    try:
        assert await worker.step() == 0  # not due
        clock.advance(1000)
        assert await worker.step() == 1
        events = [e for e in await stream_events(redis_client, settings.redis_prefix)]
        assert [e["type"] for e in events] == ["key.rotated"]
        new_kid = events[0]["kid"]
        # the API reloads on the event: the new key is in the JWKS at once ...
        for _ in range(100):
            kids = {
                k["kid"]
                for k in (await (await client.get("/.well-known/jwks.json")).json())["keys"]
            }
            if new_kid in kids:
                break
            await asyncio.sleep(0.02)
        assert kids == {old_kid, new_kid}
        # ... but does not sign before the publish delay
        resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
        body = await resp.json()
        assert unverified(body["access_token"])[0]["kid"] == old_kid
        clock.advance(300)
        resp = await client.post("/auth/refresh", headers=bearer(body["refresh_token"]))
        assert resp.status == 200  # refresh tokens from before the switch keep working
        body = await resp.json()
        assert unverified(body["access_token"])[0]["kid"] == new_kid
        # the old key leaves the JWKS once its last access token has expired
        clock.advance(61)
        jwks = await (await client.get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid]
        # and is purged after the longest session it may have signed
        clock.advance(5000)
        worker.period = 10**9  # no new rotation in this step: only the purge
        assert await worker.step() == 1
        assert [k.kid for k in await store.load()] == [new_kid]
        assert client.app[KEYRING].get(old_kid) is not None  # until the next reload
    finally:
        await redis.aclose()
        await engine.dispose()


async def test_cli_rotation_reaches_running_api(make_client, make_settings) -> None:
    settings = make_settings()
    client = await make_client(settings=settings)
    before = {k["kid"] for k in (await (await client.get("/.well-known/jwks.json")).json())["keys"]}
    out = await asyncio.to_thread(
        subprocess.run,
        [TOKEND, "keys", "rotate"],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1])["rotated"] is True
    for _ in range(100):  # well before the 30 s periodic reload
        after = {
            k["kid"] for k in (await (await client.get("/.well-known/jwks.json")).json())["keys"]
        }
        if len(after) == 2:
            break
        await asyncio.sleep(0.02)
    assert before < after and len(after) == 2


@every_mode
async def test_concurrent_rotations_create_one_key(make_settings) -> None:
    settings = make_settings()
    store, engine = await key_store(settings)
    redis = await redis_of(settings, 4, 1)
    sessions = SessionStore.from_settings(redis, settings)
    try:
        await store.create(1, "EdDSA", activates_at=time.time(), now=time.time())
        results = await asyncio.gather(
            *(
                rotate_and_announce(
                    store,
                    sessions,
                    alg="EdDSA",
                    now=time.time(),
                    publish_delay=10,
                    reason="t",
                    after=1,
                )
                for _ in range(5)
            ),
            return_exceptions=True,
        )
        assert [r for r in results if r is not None] == [2]
        assert [k.generation for k in await store.load()] == [1, 2]
    finally:
        await redis.aclose()
        await engine.dispose()


@every_mode
async def test_event_schema_and_stream_trimming(client, redis_client) -> None:
    prefix = client.app[SETTINGS].redis_prefix
    settings = client.app[SETTINGS]
    retention = settings.access_ttl + settings.leeway + 300
    stale_ms = int((time.time() - retention - 60) * 1000)
    tokens = await register_and_login(client)
    # the logout goes to the user's partition's stream; its channel has the same name
    stream = Keyspace(prefix).of(unverified(tokens["access_token"])[1]["sub"]).events
    await redis_client.xadd(stream, {"event": "{}"}, id=f"{stale_ms}-0")
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(stream)
        await pubsub.get_message(timeout=1)
        resp = await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
        assert resp.status == 204
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
    assert message is not None
    published = json.loads(message["data"])
    entries = await redis_client.xrange(stream)
    assert len(entries) == 1  # the stale entry was trimmed by MINID
    entry_id, fields = entries[0]
    stored = json.loads(fields["event"])
    assert set(stored) == {"v", "type", "sub", "sid", "jti", "reason", "at", "until"}
    assert published == {**stored, "id": entry_id}
    claims = unverified(tokens["access_token"])[1]
    assert stored["v"] == 1 and stored["type"] == "session.revoked"
    assert stored["sid"] == claims["sid"] and stored["sub"] == claims["sub"]
    assert stored["jti"] is None and stored["reason"] == "logout"
    assert stored["until"] >= claims["exp"]
    assert "\n" not in message["data"]


async def test_worker_process_exports_metrics(make_settings, redis_client) -> None:
    import aiohttp

    from service.devredis import free_port

    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="60")
    redis = await redis_of(settings, 4, 5)
    store = SessionStore.from_settings(redis, settings)
    try:
        for _ in range(5):
            await store.create(
                sid=new_id(), uid="u", jti=new_id(), now=time.time() - 3600, checked_at=0.0
            )
    finally:
        await redis.aclose()
    port = free_port()
    env = worker_env(settings, TOKEND_WORKER_METRICS_PORT=str(port))
    proc = subprocess.Popen([TOKEND, "work"], env=env, stderr=subprocess.DEVNULL)
    try:
        text = ""
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientConnectionError:
                    text = ""
                if 'tokend_worker_items_total{worker="expiry"} 5.0' in text:
                    break
                await asyncio.sleep(0.05)
        assert 'tokend_worker_items_total{worker="expiry"} 5.0' in text
        assert "tokend_worker_heartbeat_timestamp_seconds" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
