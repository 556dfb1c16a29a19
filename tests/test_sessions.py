"""Sessions: listing, deleting, logout, logout-all and password change, with deny at once."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from service.clock import FrozenClock
from service.http.appkeys import SETTINGS
from tests.support import PASSWORD, bearer, login, register, register_and_login, unverified
from tests.support.redisdata import stream_events, target_env

pytestmark = pytest.mark.redis_modes()  # standalone, cluster and Sentinel


@pytest.fixture
async def client(make_client: Any, db_url: str) -> Any:
    """Every test here on SQLite and on PostgreSQL: the user store sits under these flows."""
    return await make_client(TOKEND_DATABASE_URL=db_url)


async def me_status(client: Any, access: str) -> int:
    return (await client.get("/auth/me", headers=bearer(access))).status


async def events(client: Any, redis_client: Any) -> list[dict[str, Any]]:
    """Every partition's events."""
    return await stream_events(redis_client, client.app[SETTINGS].redis_prefix)


async def test_list_sessions_marks_the_current_one(client) -> None:
    await register(client, "alice")
    first = await login(client, "alice")
    resp = await client.post(
        "/auth/login",
        json={"username": "alice", "password": PASSWORD},
        headers={"User-Agent": "phone/1.0"},
    )
    second = await resp.json()
    resp = await client.get("/auth/sessions", headers=bearer(second["access_token"]))
    assert resp.status == 200
    sessions = (await resp.json())["sessions"]
    assert len(sessions) == 2
    by_id = {s["id"]: s for s in sessions}
    sid1 = unverified(first["access_token"])[1]["sid"]
    sid2 = unverified(second["access_token"])[1]["sid"]
    assert by_id[sid2]["current"] is True and by_id[sid1]["current"] is False
    assert by_id[sid2]["user_agent"] == "phone/1.0"
    assert by_id[sid2]["ip"] == "127.0.0.1"
    assert {"created", "last_used", "expires"} <= by_id[sid1].keys()


async def test_delete_own_session_denies_its_tokens_at_once(client, redis_client) -> None:
    await register(client, "alice")
    first = await login(client, "alice")
    second = await login(client, "alice")
    sid1 = unverified(first["access_token"])[1]["sid"]
    resp = await client.delete(f"/auth/sessions/{sid1}", headers=bearer(second["access_token"]))
    assert resp.status == 204
    assert await me_status(client, first["access_token"]) == 401
    assert await me_status(client, second["access_token"]) == 200
    resp = await client.post("/auth/refresh", headers=bearer(first["refresh_token"]))
    assert resp.status == 401
    evs = await events(client, redis_client)
    assert [(e["type"], e["sid"], e["reason"]) for e in evs] == [
        ("session.revoked", sid1, "session_deleted")
    ]
    assert evs[0]["until"] > evs[0]["at"]


async def test_a_login_right_after_logout_all_is_not_revoked(make_client) -> None:
    """Access tokens carry a whole-second iat. One from the logout-all's own second is
    refused as issued before it, unless its session began after the logout-all."""
    clock = FrozenClock(math.floor(time.time()) + 0.1)
    client = await make_client(clock=clock)
    first = await register_and_login(client, "alice")
    clock.advance(0.3)
    second = await login(client, "alice")  # an old session with a token of that second
    resp = await client.post("/auth/logout-all", headers=bearer(first["access_token"]))
    assert resp.status == 204
    clock.advance(0.3)
    again = await login(client, "alice")  # a new session, still in the same second
    assert (
        unverified(again["access_token"])[1]["iat"] == unverified(second["access_token"])[1]["iat"]
    )
    assert await me_status(client, again["access_token"]) == 200
    assert await me_status(client, second["access_token"]) == 401
    assert await me_status(client, first["access_token"]) == 401
    # and the new session's token stays good after that second
    clock.advance(5)
    assert await me_status(client, again["access_token"]) == 200


async def test_another_users_session_is_404(client) -> None:
    alice = await register_and_login(client, "alice")
    bob = await register_and_login(client, "bobby")
    bob_sid = unverified(bob["access_token"])[1]["sid"]
    resp = await client.delete(f"/auth/sessions/{bob_sid}", headers=bearer(alice["access_token"]))
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert await me_status(client, bob["access_token"]) == 200
    resp = await client.delete("/auth/sessions/nope", headers=bearer(alice["access_token"]))
    assert resp.status == 404


async def test_logout_revokes_the_session(client) -> None:
    tokens = await register_and_login(client)
    resp = await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    assert await me_status(client, tokens["access_token"]) == 401
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 401


async def test_logout_all_revokes_every_session(client, redis_client) -> None:
    await register(client, "alice")
    logins = [await login(client, "alice") for _ in range(3)]
    other = await register_and_login(client, "bobby")
    resp = await client.post("/auth/logout-all", headers=bearer(logins[0]["access_token"]))
    assert resp.status == 204
    for t in logins:
        assert await me_status(client, t["access_token"]) == 401
        assert (
            await client.post("/auth/refresh", headers=bearer(t["refresh_token"]))
        ).status == 401
    assert await me_status(client, other["access_token"]) == 200
    evs = await events(client, redis_client)
    assert [e["type"] for e in evs] == ["user.revoked"]
    assert evs[0]["sub"] == unverified(logins[0]["access_token"])[1]["sub"]


async def test_password_change_revokes_other_sessions(client) -> None:
    await register(client, "alice")
    keep = await login(client, "alice")
    other = await login(client, "alice")
    resp = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a brand new secret"},
        headers=bearer(keep["access_token"]),
    )
    assert resp.status == 200
    assert (await resp.json())["revoked_sessions"] == 1
    assert await me_status(client, keep["access_token"]) == 200
    assert await me_status(client, other["access_token"]) == 401
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 401
    await login(client, "alice", "a brand new secret")


async def test_password_change_needs_the_current_password(client) -> None:
    tokens = await register_and_login(client)
    resp = await client.post(
        "/auth/password",
        json={"current_password": "wrong password", "new_password": "a brand new secret"},
        headers=bearer(tokens["access_token"]),
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tokend"'
    resp = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=bearer(tokens["access_token"]),
    )
    assert resp.status == 400


async def test_sessions_endpoints_need_a_token(client) -> None:
    for method, path in [
        ("GET", "/auth/sessions"),
        ("DELETE", "/auth/sessions/x"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/logout-all"),
        ("POST", "/auth/password"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="tokend"'


async def test_admin_disable_revokes_every_session(client, redis_client) -> None:
    import asyncio
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import TEST_KEK

    settings = client.app[SETTINGS]
    tokens = await register_and_login(client, "alice")
    env = {
        **os.environ,
        **target_env(settings.redis),  # the test's Redis, in its mode
        "TOKEND_REDIS_PREFIX": settings.redis_prefix,
        "TOKEND_DATABASE_URL": settings.database_url,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
    }
    tokend = str(Path(sys.executable).with_name("tokend"))
    out = await asyncio.to_thread(
        subprocess.run,
        [tokend, "users", "disable", "alice"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["sessions_revoked"] == 1
    assert await me_status(client, tokens["access_token"]) == 401
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 401
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 401
    evs = await events(client, redis_client)
    assert [(e["type"], e["reason"]) for e in evs] == [("user.revoked", "admin_revoke")]
