"""The seed's second half: refresh in the header, atomic rotation, grace, reuse, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from service.http.appkeys import KEYRING, SETTINGS
from service.keyspace import Keyspace
from tests.support import bearer, register_and_login, unverified
from tests.support.redisdata import stream_events

pytestmark = pytest.mark.redis_modes()  # standalone, cluster and Sentinel


@pytest.fixture
async def client(make_client: Any, db_url: str) -> Any:
    """Every test here on SQLite and on PostgreSQL: the user store sits under these flows."""
    return await make_client(TOKEND_DATABASE_URL=db_url)


async def refresh(client: Any, token: str, **kw: Any) -> Any:
    return await client.post("/auth/refresh", headers=bearer(token), **kw)


async def test_seed_flow_new_access_token_in_response_header(make_client, clock) -> None:
    client = await make_client(clock=clock, TOKEND_ACCESS_TTL="60")
    tokens = await register_and_login(client)
    clock.advance(61)
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]

    resp = await refresh(client, tokens["refresh_token"])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert resp.headers["Authorization"] == f"Bearer {body['access_token']}"
    assert resp.headers["X-Refresh-Token"] == body["refresh_token"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 60
    assert body["refresh_token"] != tokens["refresh_token"]
    new_access = resp.headers["Authorization"].removeprefix("Bearer ")
    resp = await client.get("/auth/me", headers=bearer(new_access))
    assert resp.status == 200
    # the same session carries on
    assert (await resp.json())["sid"] == unverified(tokens["access_token"])[1]["sid"]


async def test_refresh_token_in_json_body(client) -> None:
    tokens = await register_and_login(client)
    resp = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 200
    resp = await client.post(
        "/auth/refresh",
        json={"refresh_token": tokens["refresh_token"]},
        headers=bearer(tokens["refresh_token"]),
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


async def test_missing_refresh_token_is_400(client) -> None:
    resp = await client.post("/auth/refresh")
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


async def test_expired_refresh_token_says_log_in_again(make_client, clock) -> None:
    client = await make_client(
        clock=clock, TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="1000"
    )
    tokens = await register_and_login(client)
    clock.advance(101)
    resp = await refresh(client, tokens["refresh_token"])
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] == "invalid_token"
    assert "expired" in body["error_description"] and "log in" in body["error_description"]
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_access_token_is_never_a_refresh_token(client) -> None:
    tokens = await register_and_login(client)
    resp = await refresh(client, tokens["access_token"])
    assert resp.status == 401
    assert (await resp.json())["error_description"] == "not a refresh token"
    assert "X-Refresh-Token" not in resp.headers


async def test_rotation_chain_and_idle_window_moves(make_client, clock) -> None:
    client = await make_client(
        clock=clock, TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="10000"
    )
    tokens = await register_and_login(client)
    current = tokens["refresh_token"]
    for _ in range(5):
        clock.advance(80)  # each use within the idle window keeps the session alive
        resp = await refresh(client, current)
        assert resp.status == 200, await resp.text()
        current = (await resp.json())["refresh_token"]
    assert unverified(current)[1]["exp"] == int(clock()) + 100


async def test_absolute_deadline_is_never_extended(make_client, clock) -> None:
    client = await make_client(
        clock=clock, TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="250"
    )
    login_at = int(clock())
    tokens = await register_and_login(client)
    current = tokens["refresh_token"]
    for _ in range(3):
        clock.advance(80)
        resp = await refresh(client, current)
        assert resp.status == 200
        body = await resp.json()
        current = body["refresh_token"]
        assert unverified(current)[1]["exp"] <= login_at + 250
    assert body["refresh_expires_in"] == login_at + 250 - int(clock())
    clock.advance(11)  # past login + 250 although the idle window would allow more
    resp = await refresh(client, current)
    assert resp.status == 401
    assert "expired" in (await resp.json())["error_description"]


async def test_redis_ttl_follows_idle_deadline(make_client, clock, redis_client, make_settings):
    settings = make_settings(TOKEND_REFRESH_IDLE_TTL="300")
    client = await make_client(settings=settings, clock=clock)
    tokens = await register_and_login(client)
    sid, uid = (
        unverified(tokens["refresh_token"])[1]["sid"],
        unverified(tokens["refresh_token"])[1]["sub"],
    )
    ttl = await redis_client.ttl(Keyspace(settings.redis_prefix).of(uid).session(sid))
    assert 290 <= ttl <= 301


async def test_fifty_concurrent_refreshes_converge_on_one_successor(
    client, redis_client, make_settings
) -> None:
    tokens = await register_and_login(client)
    responses = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(50)))
    assert [r.status for r in responses] == [200] * 50
    bodies = [await r.json() for r in responses]
    successor_jtis = {unverified(b["refresh_token"])[1]["jti"] for b in bodies}
    assert len(successor_jtis) == 1
    access_jtis = {unverified(b["access_token"])[1]["jti"] for b in bodies}
    assert len(access_jtis) == 50
    sid, uid = (
        unverified(tokens["refresh_token"])[1]["sid"],
        unverified(tokens["refresh_token"])[1]["sub"],
    )
    prefix = client.app[SETTINGS]
    state = await redis_client.hgetall(Keyspace(prefix.redis_prefix).of(uid).session(sid))
    assert state["cur"] == successor_jtis.pop()
    assert state["prev"] == unverified(tokens["refresh_token"])[1]["jti"]
    # the successor works, and nothing forked
    resp = await refresh(client, bodies[0]["refresh_token"])
    assert resp.status == 200


async def test_grace_replay_returns_the_same_successor(make_client, clock) -> None:
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    tokens = await register_and_login(client)
    first = await (await refresh(client, tokens["refresh_token"])).json()
    clock.advance(9)
    resp = await refresh(client, tokens["refresh_token"])
    assert resp.status == 200
    again = await resp.json()
    assert (
        unverified(again["refresh_token"])[1]["jti"] == unverified(first["refresh_token"])[1]["jti"]
    )
    assert again["refresh_token"] == first["refresh_token"]  # EdDSA signs deterministically
    assert again["access_token"] != first["access_token"]


async def test_reuse_after_grace_revokes_the_whole_session(make_client, clock) -> None:
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    tokens = await register_and_login(client)
    first = await (await refresh(client, tokens["refresh_token"])).json()
    clock.advance(11)
    resp = await refresh(client, tokens["refresh_token"])
    assert resp.status == 401
    assert (await resp.json())["error_description"].startswith("refresh token reuse detected")
    # the current refresh token dies with the session ...
    resp = await refresh(client, first["refresh_token"])
    assert resp.status == 401
    # ... and so do the session's outstanding access tokens, at once
    for access in (tokens["access_token"], first["access_token"]):
        resp = await client.get("/auth/me", headers=bearer(access))
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_token"


async def test_only_the_immediate_predecessor_has_grace(make_client, clock) -> None:
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    tokens = await register_and_login(client)
    second = await (await refresh(client, tokens["refresh_token"])).json()
    third = await (await refresh(client, second["refresh_token"])).json()
    # still inside the window, but two generations old: reuse
    resp = await refresh(client, tokens["refresh_token"])
    assert resp.status == 401
    assert "reuse" in (await resp.json())["error_description"]
    assert (await refresh(client, third["refresh_token"])).status == 401


async def test_reuse_publishes_session_revoked(client, make_settings, redis_client) -> None:
    prefix = client.app[SETTINGS]
    tokens = await register_and_login(client)
    await refresh(client, tokens["refresh_token"])
    second = await (await refresh(client, tokens["refresh_token"])).json()  # grace replay
    await refresh(client, second["refresh_token"])
    resp = await refresh(client, tokens["refresh_token"])  # two generations old
    assert resp.status == 401
    events = await stream_events(redis_client, prefix.redis_prefix)
    assert [e["reason"] for e in events] == ["refresh_token_reuse"]
    assert events[0]["type"] == "session.revoked"
    assert events[0]["sid"] == unverified(tokens["refresh_token"])[1]["sid"]


async def test_forged_refresh_token_is_rejected(client) -> None:
    tokens = await register_and_login(client)
    header, claims = unverified(tokens["refresh_token"])
    forged = jwt.encode(claims, "x" * 32, algorithm="HS256", headers=header)
    resp = await refresh(client, forged)
    assert resp.status == 401 and (await resp.json())["error_description"] == "bad signature"


async def test_refresh_token_signed_with_the_access_key_is_rejected(client) -> None:
    """The MAC key is the only refresh verifier: a ring-signed rt+jwt is not accepted."""
    tokens = await register_and_login(client)
    header, claims = unverified(tokens["refresh_token"])
    key = client.app[KEYRING].signing_key(claims["iat"])
    for kid in (header["kid"], key.kid):
        forged = jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"typ": "rt+jwt", "kid": kid}
        )
        resp = await refresh(client, forged)
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_token"
