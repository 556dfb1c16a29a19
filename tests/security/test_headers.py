"""RFC 6750 header rows at the refresh endpoint and at a subscriber-protected service
(tests/test_protected.py covers them at /auth/me): malformed or ambiguous credentials are
400 invalid_request and never consume a refresh token."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.support import register_and_login
from tokend_client import setup

pytestmark = pytest.mark.security


def _cases(token: str) -> dict[str, Any]:
    return {
        "Bearer alone": {"Authorization": "Bearer"},
        "Bearer and a space": {"Authorization": "Bearer "},
        "several spaces": {"Authorization": f"Bearer   {token}"},
        "two tokens": {"Authorization": f"Bearer {token} {token}"},
        "comma-separated": {"Authorization": f"Bearer {token},{token}"},
        "another scheme": {"Authorization": f"Token {token}"},
        "tab": {"Authorization": f"Bearer\t{token}"},
        "duplicate headers": CIMultiDict(
            [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
        ),
        "duplicate, one empty": CIMultiDict(
            [("Authorization", f"Bearer {token}"), ("Authorization", "")]
        ),
    }


async def test_refresh_endpoint(make_client) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    token = tokens["refresh_token"]
    for name, headers in _cases(token).items():
        resp = await client.post("/auth/refresh", headers=headers)
        body = await resp.json()
        assert resp.status == 400, (name, body)
        assert body["error"] == "invalid_request", name
        assert "X-Refresh-Token" not in resp.headers
    # in the header and the body at once, or in the URL
    resp = await client.post(
        "/auth/refresh",
        json={"refresh_token": token},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 400
    resp = await client.post("/auth/refresh", params={"access_token": token})
    assert resp.status == 400
    # lower case is the same scheme (RFC 7235), and none of the above consumed the token
    resp = await client.post("/auth/refresh", headers={"Authorization": f"bearer {token}"})
    assert resp.status == 200


async def test_subscriber_middleware(make_client, make_verifier, aiohttp_client) -> None:
    tokend = await make_client()
    tokens = await register_and_login(tokend)
    app = web.Application()
    setup(app, make_verifier(tokend))

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/hello", hello)
    service = await aiohttp_client(app)
    resp = await service.get("/hello")
    assert resp.status == 401 and "error=" not in resp.headers["WWW-Authenticate"]
    for name, headers in _cases(tokens["access_token"]).items():
        resp = await service.get("/hello", headers=headers)
        assert resp.status == 400, name
        assert (await resp.json())["error"] == "invalid_request", name
    resp = await service.get(
        "/hello", headers={"Authorization": f"bearer {tokens['access_token']}"}
    )
    assert resp.status == 200
