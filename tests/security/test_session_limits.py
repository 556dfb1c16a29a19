"""Limits on what one user can pile up or try: sessions, logins, password guesses,
registrations, and revocations whose Redis cost does not grow with the session count."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.http.appkeys import AUTH, SETTINGS
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.settings import Settings
from service.tokens import new_id
from tests.support import PASSWORD, bearer, login, register
from tests.support.redisdata import stream_events
from tokend_client.redis_target import RedisTarget

pytestmark = pytest.mark.security


async def events(client: Any, redis_client: Any) -> list[dict[str, Any]]:
    """Every partition's events."""
    return await stream_events(redis_client, client.app[SETTINGS].redis_prefix)


async def refresh_status(client: Any, tokens: dict[str, Any]) -> int:
    return (await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))).status


# --- sessions per user ---------------------------------------------------------------


async def test_a_login_past_the_cap_ends_the_least_recently_used_session(
    make_client, redis_client
) -> None:
    client = await make_client(TOKEND_MAX_SESSIONS_PER_USER="3")
    await register(client, "alice")
    first, second, third = [await login(client, "alice") for _ in range(3)]
    # the first is used again: the second is now the least recently used
    resp = await client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert resp.status == 200
    first = await resp.json()
    fourth = await login(client, "alice")
    assert await refresh_status(client, second) == 401
    assert (await client.get("/auth/me", headers=bearer(second["access_token"]))).status == 401
    for alive in (first, third, fourth):
        assert (await client.get("/auth/me", headers=bearer(alive["access_token"]))).status == 200
    resp = await client.get("/auth/sessions", headers=bearer(fourth["access_token"]))
    assert len((await resp.json())["sessions"]) == 3
    (evicted,) = [e for e in await events(client, redis_client) if e["type"] == "session.revoked"]
    assert evicted["reason"] == "session_limit"
    claims = client.app[AUTH].tokens.verify_refresh(second["refresh_token"], time.time())
    assert evicted["sid"] == claims["sid"]


async def test_successful_logins_per_user_are_limited(make_client) -> None:
    client = await make_client(TOKEND_LOGINS_PER_USER="3")
    await register(client, "alice")
    for _ in range(3):
        await login(client, "alice")
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "slow_down"
    await register(client, "bob")  # another user is not held back
    await login(client, "bob")


async def test_the_session_list_is_paged(make_client) -> None:
    client = await make_client()
    await register(client, "alice")
    logins = [await login(client, "alice") for _ in range(5)]
    headers = bearer(logins[-1]["access_token"])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/auth/sessions", params=query, headers=headers)
        assert resp.status == 200
        body = await resp.json()
        assert len(body["sessions"]) <= 2
        seen += [s["id"] for s in body["sessions"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 5
    for bad in ("0", "101", "-1", "x", "1e3"):
        resp = await client.get("/auth/sessions", params={"limit": bad}, headers=headers)
        assert resp.status == 400, bad
        assert (await resp.json())["error"] == "invalid_request"


# --- logout-all and password change: O(1) in Redis -----------------------------------


async def _pile_up(store: SessionStore, uid: str, n: int) -> list[str]:
    """n sessions of ``uid``, each with the refresh token jti "j" (sids returned)."""
    now = time.time()
    sids = [new_id() for _ in range(n)]
    for i in range(0, n, 500):
        await asyncio.gather(
            *(
                store.create(sid=sid, uid=uid, jti="j", now=now, checked_at=now)
                for sid in sids[i : i + 500]
            )
        )
    return sids


def _use(sid: str) -> dict[str, Any]:
    """rotate() arguments presenting the session's current refresh token."""
    return {"sid": sid, "uid": "many", "jti": "j", "new_jti": new_id(), "now": time.time() + 2}


async def _commands_of(redis: aioredis.Redis, run: Any) -> int:
    """How many Redis commands (inside scripts too) ``run`` costs, by INFO commandstats."""
    await redis.config_resetstat()
    await run()
    stats = await redis.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


@pytest.mark.slow
async def test_revoking_a_user_costs_the_same_whatever_their_session_count(
    private_redis, make_settings
) -> None:
    settings: Settings = make_settings(
        TOKEND_REDIS_URL=private_redis.url, TOKEND_MAX_SESSIONS_PER_USER="0"
    )
    redis = make_redis(RedisTarget(url=private_redis.url), pool_size=16, pool_timeout=5)
    store = SessionStore.from_settings(redis, settings)
    try:
        few = await _pile_up(store, "few", 3)
        many = await _pile_up(store, "many", 3000)
        now = time.time() + 1
        await store.revoke_user(uid="nobody", now=now, reason="warm-up")  # script loaded
        for kind in ("password_changed", "logout_all"):
            costs = []
            for uid, sids in (("few", few), ("many", many)):
                keep = sids[0] if kind == "password_changed" else ""

                async def run(uid: str = uid, keep: str = keep, kind: str = kind) -> None:
                    await store.revoke_user(uid=uid, now=now, reason=kind, keep_sid=keep)

                costs.append(await _commands_of(redis, run))
            assert costs[0] == costs[1], (kind, costs)
            if kind == "password_changed":  # the kept session lives, every other one is dead
                assert (await store.rotate(**_use(many[0]))).status == "rotated"
                for sid in many[1:50]:
                    assert (await store.rotate(**_use(sid))).status == "revoked"
        # one event per revocation, not one per session
        kinds = [e["type"] for e in await stream_events(redis, settings.redis_prefix)]
        assert kinds == ["user.revoked"] * 5
        assert (await store.rotate(**_use(many[0]))).status == "revoked"
    finally:
        await redis.aclose()


async def test_a_password_change_keeps_the_callers_session_and_ends_the_rest(
    make_client, redis_client
) -> None:
    client = await make_client()
    await register(client, "alice")
    others = [await login(client, "alice") for _ in range(3)]
    mine = await login(client, "alice")
    resp = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "another long secret"},
        headers=bearer(mine["access_token"]),
    )
    assert resp.status == 200
    assert (await resp.json())["revoked_sessions"] == 3
    for tokens in others:
        assert await refresh_status(client, tokens) == 401
        assert (await client.get("/auth/me", headers=bearer(tokens["access_token"]))).status == 401
    assert (await client.get("/auth/me", headers=bearer(mine["access_token"]))).status == 200
    assert await refresh_status(client, mine) == 200
    revoked = [e for e in await events(client, redis_client) if e["type"].endswith(".revoked")]
    assert len(revoked) == 1 and revoked[0]["type"] == "user.revoked"
    assert (
        revoked[0]["sid"]
        == client.app[AUTH].tokens.verify_refresh(mine["refresh_token"], time.time())["sid"]
    )


# --- password guessing with a stolen access token ------------------------------------


async def _change(client: Any, tokens: dict[str, Any], current: str) -> Any:
    return await client.post(
        "/auth/password",
        json={"current_password": current, "new_password": "the thief's own secret"},
        headers=bearer(tokens["access_token"]),
    )


async def test_password_change_guesses_are_limited_per_user(make_client) -> None:
    client = await make_client(TOKEND_LOGIN_FAILURES_PER_USER="3")
    await register(client, "alice")
    stolen = await login(client, "alice")
    for _ in range(3):
        resp = await _change(client, stolen, "a wrong guess")
        assert resp.status == 401
    resp = await _change(client, stolen, PASSWORD)  # even the right one, now
    assert resp.status == 429, await resp.text()
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "slow_down"
    # the password did not change: the owner still logs in with it
    await login(client, "alice")


async def test_password_change_guesses_are_limited_per_ip(make_client) -> None:
    client = await make_client(TOKEND_LOGIN_FAILURES_PER_IP="4")
    victims = []
    for name in ("ann", "ben", "cat"):
        await register(client, name)
        victims.append(await login(client, name))
    statuses = [(await _change(client, v, "guess")).status for v in victims for _ in range(2)]
    assert statuses[:4] == [401] * 4 and set(statuses[4:]) == {429}, statuses


# --- registration ----------------------------------------------------------------------


async def test_closed_registration_is_403(make_client) -> None:
    client = await make_client(TOKEND_REGISTRATION="closed")
    resp = await client.post("/auth/register", json={"username": "eve", "password": PASSWORD})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"


async def test_registrations_per_ip_are_limited(make_client) -> None:
    client = await make_client(TOKEND_REGISTRATIONS_PER_IP="3")
    await register(client, "ann")
    await register(client, "ben")
    resp = await client.post("/auth/register", json={"username": "ann", "password": PASSWORD})
    assert resp.status == 409  # a refused name counts too: names are not enumerable freely
    resp = await client.post("/auth/register", json={"username": "dan", "password": PASSWORD})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) > 0


async def test_a_taken_name_costs_no_hash(make_client) -> None:
    client = await make_client()
    await register(client, "ann")
    hasher = client.app[AUTH].hasher
    real, calls = hasher.hash, []

    async def counting(password: str) -> str:
        calls.append(password)
        return str(await real(password))

    hasher.hash = counting
    resp = await client.post("/auth/register", json={"username": "ann", "password": PASSWORD})
    assert resp.status == 409
    assert calls == []
