"""A login in flight cannot outlive a disable, delete, password change or logout-all.

The login reads the user row, argon2 runs (seconds with strong settings), then the
session is recorded. Whatever ends the user's sessions in between must end this one too:
the login answers 401 and no session exists. The argon2 settings here make one verify
take about a second, so the revocation lands well inside the window; a spy on the
hasher only tells the test when the login's verify has begun (it changes nothing).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.auth import delete_user, disable_user
from service.http.appkeys import AUTH, CLOCK
from tests.support import PASSWORD, bearer, login, register

pytestmark = [pytest.mark.security, pytest.mark.slow]

# About a second a verify on this kind of machine (64 MiB, 12 passes).
SLOW_ARGON2 = {
    "TOKEND_ARGON2_TIME_COST": "12",
    "TOKEND_ARGON2_MEMORY_KIB": "65536",
    "TOKEND_ARGON2_PARALLELISM": "1",
    "TOKEND_HASH_WORKERS": "2",
}


def spy_on_verify(client: Any, hold: asyncio.Event | None = None) -> asyncio.Event:
    """An event set when the next verify of PASSWORD begins; with ``hold``, that verify's
    answer waits for it (the window between reading the user and recording the session
    made as wide as the test needs)."""
    hasher = client.app[AUTH].hasher
    real = hasher.verify
    began = asyncio.Event()

    async def verify(hashed: str | None, password: str) -> bool:
        first = not began.is_set() and password == PASSWORD
        if first:
            began.set()
        ok: bool = await real(hashed, password)
        if first and hold is not None:
            await hold.wait()
        return ok

    hasher.verify = verify
    return began


async def attempt(client: Any, password: str = PASSWORD) -> Any:
    return await client.post("/auth/login", json={"username": "alice", "password": password})


async def assert_no_usable_session(client: Any, resp: Any) -> None:
    """The racing login got 401, or (never here) a session that is dead everywhere."""
    body = await resp.json()
    if resp.status == 200:
        refresh = await client.post("/auth/refresh", headers=bearer(body["refresh_token"]))
        me = await client.get("/auth/me", headers=bearer(body["access_token"]))
        pytest.fail(f"the racing login got a session: refresh {refresh.status}, me {me.status}")
    assert resp.status == 401, body
    assert body["error"] == "invalid_grant"


@pytest.mark.parametrize("action", ["disable", "delete"])
async def test_disable_or_delete_during_the_hash_refuses_the_login(make_client, action) -> None:
    client = await make_client(**SLOW_ARGON2)
    await register(client, "alice")
    began = spy_on_verify(client)
    racing = asyncio.create_task(attempt(client))
    await asyncio.wait_for(began.wait(), 10)
    auth, now = client.app[AUTH], client.app[CLOCK]()
    revoke = disable_user if action == "disable" else delete_user
    await revoke(auth.users, auth.sessions, "alice", now)
    assert not racing.done(), "argon2 finished before the revocation: the window was missed"
    await assert_no_usable_session(client, await racing)


async def test_password_change_during_the_hash_refuses_the_old_passwords_login(
    make_client, redis_client
) -> None:
    client = await make_client(**SLOW_ARGON2)
    await register(client, "alice")
    owner = await login(client, "alice")
    release = asyncio.Event()
    began = spy_on_verify(client, hold=release)
    racing = asyncio.create_task(attempt(client))  # the thief, with the old password
    await asyncio.wait_for(began.wait(), 10)
    resp = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a brand new secret"},
        headers=bearer(owner["access_token"]),
    )
    assert resp.status == 200, await resp.text()
    release.set()
    await assert_no_usable_session(client, await racing)
    # the owner's own session goes on, and the new password logs in
    assert (await client.get("/auth/me", headers=bearer(owner["access_token"]))).status == 200
    after = await attempt(client, "a brand new secret")
    assert after.status == 200


async def test_logout_all_during_the_hash_refuses_the_login(make_client) -> None:
    client = await make_client(**SLOW_ARGON2)
    await register(client, "alice")
    owner = await login(client, "alice")
    release = asyncio.Event()
    began = spy_on_verify(client, hold=release)
    racing = asyncio.create_task(attempt(client))
    await asyncio.wait_for(began.wait(), 10)
    resp = await client.post("/auth/logout-all", headers=bearer(owner["access_token"]))
    assert resp.status == 204
    release.set()
    await assert_no_usable_session(client, await racing)


async def test_a_login_after_the_revocation_works(make_client) -> None:
    """The mark refuses only logins whose credentials were checked before it."""
    client = await make_client()
    await register(client, "alice")
    first = await login(client, "alice")
    assert (await client.post("/auth/logout-all", headers=bearer(first["access_token"]))).status
    later = await login(client, "alice")
    assert (await client.get("/auth/me", headers=bearer(later["access_token"]))).status == 200
    resp = await client.post("/auth/refresh", headers=bearer(later["refresh_token"]))
    assert resp.status == 200
