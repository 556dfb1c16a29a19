"""The seed's first half end to end: register, log in, call a protected API, expiry."""

from __future__ import annotations

import pytest

from service.clock import FrozenClock
from tests.support import bearer, register_and_login, unverified


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_login_then_me_then_expired(make_client, clock: FrozenClock) -> None:
    client = await make_client(clock=clock, TOKEND_ACCESS_TTL="60")
    tokens = await register_and_login(client)
    header, claims = unverified(tokens["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA" and header["kid"]
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200
    me = await resp.json()
    assert me["username"] == "alice" and me["sub"] == claims["sub"]
    clock.advance(61)
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="tokend", error="invalid_token", error_description="access token expired"'
    )
    assert (await resp.json())["error"] == "invalid_token"
