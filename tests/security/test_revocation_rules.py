"""The rules a revocation follows: one clock for "before", a rolled-back Redis caught by
revocations too, a kept session that was already ended stays ended, and a refresh-token
reuse says which kind it was."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from service.cli import disable_user_cli
from service.clock import FrozenClock
from service.http.appkeys import AUTH, FENCE, METRICS, SETTINGS
from service.keyspace import Keyspace
from tests.support import bearer, login, register, unverified
from tests.support.redisdata import stream_events

pytestmark = [pytest.mark.security, pytest.mark.redis_modes()]  # every mode


async def stream(client: Any, redis_client: Any) -> list[dict[str, Any]]:
    """Every partition's events."""
    return await stream_events(redis_client, client.app[SETTINGS].redis_prefix)


async def eventually(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# --- one clock ---------------------------------------------------------------------------


async def test_a_token_from_a_process_whose_clock_runs_ahead_is_denied_by_logout_all(
    make_client, make_settings, make_listener
) -> None:
    """Process A's clock runs 20 s ahead (within the leeway), so its tokens' iat is later
    than the logout-all time taken by process B. Tokens are judged by when their session
    was authenticated, on Redis's clock, so A's token is denied everywhere."""
    settings = make_settings()
    ahead = await make_client(settings=settings, clock=lambda: time.time() + 20)
    behind = await make_client(settings=settings)
    listener = await make_listener(backoff_initial=0.05)
    async with asyncio.timeout(10):
        await listener.wait_ready()
    await register(behind, "alice")
    stolen = await login(ahead, "alice")
    mine = await login(behind, "alice")
    claims = unverified(stolen["access_token"])[1]
    assert claims["iat"] > time.time() + 10  # the premise: A's iat is ahead
    resp = await behind.post("/auth/logout-all", headers=bearer(mine["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.applied["user.revoked"] == 1)
    assert listener.is_revoked(claims)
    for process in (ahead, behind):
        resp = await process.get("/auth/me", headers=bearer(stolen["access_token"]))
        assert resp.status == 401, await resp.text()


# --- a rolled-back Redis is caught by revocations ------------------------------------


async def _rolled_back(client: Any, redis_client: Any) -> int:
    """A user with rotated sessions, the position checkpointed, then the user's partition
    set back two writes (a replica promoted a little behind, a restore from a slightly
    older copy); the partition's index."""
    prefix = client.app[SETTINGS].redis_prefix
    await register(client, "alice")
    logins = [await login(client, "alice") for _ in range(3)]
    for tokens in logins:  # rotations raise gen
        assert (await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))).ok
    part = Keyspace(prefix).of(unverified(logins[0]["access_token"])[1]["sub"])
    fence = client.app[FENCE]
    await fence.checkpoint()
    known = fence.known.get(part.index)
    assert known is not None
    await redis_client.set(part.gen, known.gen - 2)
    return part.index


def users_of(client: Any, part: int, count: int) -> list[str]:
    """``count`` user ids that live in partition ``part``."""
    keys = Keyspace(client.app[SETTINGS].redis_prefix)
    found = [u for u in (f"u{n}" for n in range(10_000)) if keys.of(u).index == part]
    return found[:count]


@pytest.mark.parametrize("revocation", ["session", "user", "token"])
async def test_revocations_on_a_rolled_back_redis_fence_it_first(
    make_client, redis_client, revocation
) -> None:
    """Revocations that are not preceded by a read (RFC 7009 revoke of a refresh or an
    access token, admin revocations) used to raise gen from the rolled-back value without
    a check, so a few of them carried gen past the known position and the rollback went
    unnoticed by every process; now the first one fences."""
    client = await make_client()
    part = await _rolled_back(client, redis_client)
    sessions, now = client.app[AUTH].sessions, time.time()
    # revocations of users who live in the rolled-back partition
    users = users_of(client, part, 3)
    for n in range(3):
        if revocation == "session":
            await sessions.revoke(sid=f"s{n}", now=now, reason="logout", owner=users[0], force=True)
        elif revocation == "user":
            await sessions.revoke_user(uid=users[n], now=now, reason="admin_revoke")
        else:
            await sessions.revoke_access_token(
                jti=f"j{n}", sub=users[0], sid="s", exp=now + 60, now=now, reason="revoked"
            )
    fences = [e for e in await stream(client, redis_client) if e["type"] == "all.revoked"]
    assert [(e["reason"], e["partition"]) for e in fences] == [("redis_rollback", part)]


async def test_tokend_users_disable_on_a_rolled_back_redis_fences_it(
    make_client, redis_client
) -> None:
    """The command line checks the position recorded in SQL before it revokes."""
    client = await make_client()
    part = await _rolled_back(client, redis_client)
    await disable_user_cli(client.app[SETTINGS], "alice")
    fences = [e for e in await stream(client, redis_client) if e["type"] == "all.revoked"]
    assert [(e["reason"], e["partition"]) for e in fences] == [("redis_rollback", part)]


# --- a kept session that an earlier revocation ended stays ended ---------------------


async def test_a_password_change_cannot_keep_a_session_logout_all_ended(make_client) -> None:
    """Logout-all lands between the password change's authentication of the caller's
    session and its revocation of the others: the caller's session stays ended."""
    client = await make_client()
    await register(client, "alice")
    tokens = await login(client, "alice")
    auth = client.app[AUTH]
    sid = unverified(tokens["access_token"])[1]["sid"]
    uid = unverified(tokens["access_token"])[1]["sub"]
    await auth.sessions.revoke_user(uid=uid, now=time.time(), reason="logout_all")
    await auth.sessions.revoke_user(
        uid=uid, now=time.time(), reason="password_changed", keep_sid=sid
    )
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 401
    assert (await client.get("/auth/me", headers=bearer(tokens["access_token"]))).status == 401


# --- refresh-token reuse says what it was ----------------------------------------------


async def _rotate(client: Any, tokens: dict[str, Any], agent: str) -> Any:
    return await client.post(
        "/auth/refresh", headers={**bearer(tokens["refresh_token"]), "User-Agent": agent}
    )


@pytest.mark.parametrize(("wait", "kind"), [(2, "concurrent"), (11, "replay")])
async def test_reuse_is_labelled_concurrent_or_replay(
    make_client, redis_client, caplog, wait, kind
) -> None:
    clock = FrozenClock(time.time())
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    await register(client, "alice")
    first = await login(client, "alice")
    resp = await _rotate(client, first, "owner-app/1.0")
    second = await resp.json()
    clock.advance(wait)
    # the second rotation moves `prev` on: the first token is now plain reuse
    assert (await _rotate(client, second, "owner-app/1.0")).status == 200
    with caplog.at_level(logging.WARNING, logger="tokend.audit"):
        resp = await _rotate(client, first, "thief-tool/6.6")
    assert resp.status == 401
    body = await resp.json()
    assert kind in body["error_description"], body
    (event,) = [e for e in await stream(client, redis_client) if e["type"] == "session.revoked"]
    assert event["reason"] == "refresh_token_reuse" and event["detail"] == kind
    metric = client.app[METRICS].registry.get_sample_value(
        "tokend_refreshes_total", {"result": f"reuse_{kind}"}
    )
    assert metric == 1
    (record,) = [r for r in caplog.records if r.name == "tokend.audit"]
    text = record.getMessage()
    assert kind in text and event["sid"] in text
    assert "thief-tool/6.6" in text and "owner-app/1.0" in text
