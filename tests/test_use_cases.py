"""Use-case rules below HTTP: the refresh script refuses another user's token untouched."""

from __future__ import annotations

from typing import Any

import pytest

from service.http.appkeys import AUTH, CLOCK
from tests.support import bearer, register_and_login


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_rotate_with_another_uid_is_mismatch_and_leaves_the_session(
    make_client: Any,
) -> None:
    client = await make_client()
    tokens = await register_and_login(client, "alice")
    sessions, now = client.app[AUTH].sessions, client.app[CLOCK]()
    claims = client.app[AUTH].tokens.verify_refresh(tokens["refresh_token"], now)
    before = await sessions.get(claims["sub"], claims["sid"])
    assert before is not None
    # another user of alice's partition: rotate.lua finds the session and refuses it
    keys = sessions.keys
    own = keys.of(claims["sub"])
    users = [f"someone-else-{n}" for n in range(1000)]
    neighbour = next(u for u in users if keys.of(u) == own)
    rotation = await sessions.rotate(
        sid=claims["sid"], uid=neighbour, jti=claims["jti"], new_jti="new", now=now
    )
    assert rotation.status == "mismatch" and rotation.uid == claims["sub"]
    assert await sessions.get(claims["sub"], claims["sid"]) == before
    # a user of another partition: the session is not among that partition's keys at all
    stranger = next(u for u in users if keys.of(u) != own)
    rotation = await sessions.rotate(
        sid=claims["sid"], uid=stranger, jti=claims["jti"], new_jti="new", now=now
    )
    assert rotation.status == "unknown"
    assert await sessions.get(claims["sub"], claims["sid"]) == before
    # the presented token was not consumed: it still rotates, once
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 200, await resp.text()


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_a_widened_scope_is_refused_inside_the_rotation_untouched(make_client) -> None:
    """rotate.lua itself refuses a scope beyond the grant before it writes anything (the
    refresh grant needs no read before it: test_oauth's narrow/widen test)."""
    client = await make_client()
    tokens = await register_and_login(client, "alice")
    sessions, now = client.app[AUTH].sessions, client.app[CLOCK]()
    claims = client.app[AUTH].tokens.verify_refresh(tokens["refresh_token"], now)
    before = await sessions.get(claims["sub"], claims["sid"])
    rotation = await sessions.rotate(
        sid=claims["sid"],
        uid=claims["sub"],
        jti=claims["jti"],
        new_jti="n",
        now=now,
        scope="admin",
    )
    assert rotation.status == "scope" and rotation.scope == ""
    assert await sessions.get(claims["sub"], claims["sid"]) == before
    narrowed = await sessions.rotate(
        sid=claims["sid"],
        uid=claims["sub"],
        jti=claims["jti"],
        new_jti="n2",
        now=now,
        scope="",
    )
    assert narrowed.status == "rotated"
