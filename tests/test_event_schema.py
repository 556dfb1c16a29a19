"""Every emitter of tokend writes an event of the one schema (service/events.py) that
the subscriber library accepts and applies."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

from service import events
from service.fence import RedisFence
from service.keyspace import Keyspace
from service.sessions import SessionStore
from tests.support.redisdata import stream_entries
from tokend_client._denylist import DenyList
from tokend_client._events import problem


def _fits_schema(event: dict[str, Any]) -> None:
    spec = events.EVENTS[event["type"]]
    required = {name for name, t in spec.items() if not t.endswith("?")}
    assert required <= set(event) <= set(spec), event
    assert event["reason"] in events.REASONS[event["type"]], event
    assert problem(event) is None, (problem(event), event)


async def test_every_emitter_writes_what_the_client_accepts_and_applies(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = Keyspace(redis_prefix)
    fence = RedisFence(
        redis_client,
        prefix=redis_prefix,
        positions=None,
        clock=time.time,
        deny_window=61,
        retention=400,
    )
    await fence.start()
    store = SessionStore(
        redis_client,
        prefix=redis_prefix,
        access_ttl=60,
        leeway=1,
        idle_ttl=100,
        absolute_ttl=1000,
        grace=5,
        max_sessions=2,
        fence=fence,
    )
    now = await store.server_time()

    async def session(sid: str, uid: str, at: float | None = None) -> None:
        created = await store.create(
            sid=sid, uid=uid, jti=f"j-{sid}", now=at or now, checked_at=now
        )
        assert not created.refused

    await session("logout", "u1")
    assert await store.revoke(sid="logout", now=now, reason="logout", owner="u1", force=True)
    await session("deleted", "u1")
    assert await store.revoke(sid="deleted", now=now, reason="session_deleted", owner="u1")
    await session("reused", "u2")
    rotated = await store.rotate(sid="reused", uid="u2", jti="j-reused", new_jti="n", now=now)
    assert rotated.status == "rotated"
    later = now + 30  # past the grace: the old token is a replay
    reuse = await store.rotate(sid="reused", uid="u2", jti="j-reused", new_jti="x", now=later)
    assert reuse.status == "reuse"
    await session("oauth", "u2")
    assert await store.revoke(sid="oauth", now=now, reason="oauth_revoke", owner="u2")
    assert await store.revoke_access_token(
        jti="at-1", sub="u2", sid="s", exp=now + 60, now=now, reason="oauth_revoke"
    )
    for n in range(3):  # the third is past the cap of two: the oldest ends
        await session(f"cap{n}", "u3")
    await store.revoke_user(uid="u3", now=now, reason="logout_all")
    await session("kept", "u4")
    await store.revoke_user(uid="u4", now=now, reason="password_changed", keep_sid="kept")
    await store.revoke_user(uid="u5", now=now, reason="admin_revoke")
    await store.revoke_user(uid="u6", now=now, reason="user_deleted")
    await session("idle", "u7")
    # a store whose sessions reach their absolute deadline with their idle one
    short = SessionStore(
        redis_client, prefix=redis_prefix, access_ttl=60, leeway=1, idle_ttl=100,
        absolute_ttl=100, grace=5, fence=fence,
    )  # fmt: skip
    assert not (await short.create(sid="abs", uid="u8", jti="j", now=now, checked_at=now)).refused
    swept = 0
    for part in range(16):  # swept on a clock ahead of Redis's: the hashes are still there
        swept += await store.sweep_expired(partition=part, now=now + 150, batch=10)
    assert swept == 3  # idle, abs and the kept session of u4
    await store.publish(events.key_rotated(reason="manual", at=now, kid="k1", activates_at=now))
    # a Redis partition that lost its data: the fence announces all.revoked for it
    lost = keys.of("u9")
    other = next(u for u in (f"v{n}" for n in range(100)) if keys.of(u) != lost)
    await redis_client.delete(lost.epoch, lost.gen)
    await fence.recover(lost.index)
    await asyncio.sleep(0)

    entries = await stream_entries(redis_client, redis_prefix)
    seen = [json.loads(fields["event"]) for _, _, fields in entries]
    pairs = {(e["type"], e["reason"]) for e in seen}
    assert pairs >= {
        ("session.revoked", "logout"),
        ("session.revoked", "session_deleted"),
        ("session.revoked", "refresh_token_reuse"),
        ("session.revoked", "oauth_revoke"),
        ("session.revoked", "session_limit"),
        ("token.revoked", "oauth_revoke"),
        ("user.revoked", "logout_all"),
        ("user.revoked", "password_changed"),
        ("user.revoked", "admin_revoke"),
        ("user.revoked", "user_deleted"),
        ("session.expired", "idle_timeout"),
        ("session.expired", "absolute_timeout"),
        ("key.rotated", "manual"),
        ("all.revoked", "redis_data_loss"),
    }, pairs
    deny = DenyList(clock=lambda: now)
    deny.partitions = len(keys.all)  # as the listener sets it
    for event in seen:
        _fits_schema(event)
        if event["type"] != "all.revoked":
            deny.add(event["type"], event, float(event["at"]), float(event["until"]))
    evicted = next(e["sid"] for e in seen if e["reason"] == "session_limit")
    assert evicted == "cap0"
    assert deny.is_revoked({"sid": "logout", "sub": "u1", "iat": int(now) + 1, "jti": "a"})
    assert deny.is_revoked({"sid": "cap0", "sub": "u3", "iat": int(now) + 1, "jti": "a"})
    assert deny.is_revoked({"sid": "z", "sub": "u9", "iat": int(now) + 1, "jti": "at-1"})
    assert deny.is_revoked({"sid": "z", "sub": "u3", "iat": int(now), "auth_time": now})
    assert not deny.is_revoked({"sid": "kept", "sub": "u4", "iat": int(now), "auth_time": now})
    # all.revoked: every token of the partition's users issued up to the fence
    fenced = next(e for e in seen if e["type"] == "all.revoked")
    assert fenced["partition"] == lost.index
    assert not deny.is_revoked({"sid": "z", "sub": "u9", "iat": int(now), "jti": "b"})
    deny.add("all.revoked", fenced, float(fenced["at"]), float(fenced["until"]))
    assert deny.is_revoked({"sid": "z", "sub": "u9", "iat": int(now), "jti": "b"})
    assert not deny.is_revoked({"sid": "z", "sub": other, "iat": int(now), "jti": "b"})


def test_the_client_refuses_events_off_the_schema() -> None:
    good = {
        "v": 1,
        "type": "session.revoked",
        "sub": "u",
        "sid": "s",
        "jti": None,
        "reason": "logout",
        "at": 1.5,
        "until": 2,
    }
    assert problem(good) is None
    assert problem({**good, "v": 2}) == "not a v1 event"
    assert problem({**good, "sid": 3}) is not None
    assert problem({k: v for k, v in good.items() if k != "sub"}) is not None
    assert problem({**good, "type": "something.new"}) is None  # unknown types pass
