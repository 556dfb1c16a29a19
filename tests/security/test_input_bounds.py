"""Bounded parsing (security review, defect 6): Python's json module raises ValueError,
not JSONDecodeError, for an integer over 4,300 digits and RecursionError for deep
nesting, and PyJWT parses a token's header with it before any signature check. Every
request body and every token header is parsed with a bound on depth, size and number
length: a clear 400 ``invalid_request`` for a body, the usual 401 ``invalid_token``
"malformed token" for a token, at tokend and at the subscriber library, and never a 500
or a traceback in the log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.support import assert_invalid_token, b64, bearer, register_and_login, subscriber_rejects

pytestmark = pytest.mark.security

HUGE_INT = "1" * 5000
RS_SECRET = "resource-server-secret"
CLIENTS = json.dumps({"cli": {}, "rs": {"secret": RS_SECRET}})
JSON_ROUTES = ["/auth/register", "/auth/login", "/auth/refresh", "/auth/oidc/exchange"]
BAD_BODIES = {
    "huge integer": '{"username": ' + HUGE_INT + ', "password": "correct horse battery"}',
    "huge negative integer": '{"refresh_token": -' + HUGE_INT + "}",
    "long integer": '{"username": ' + "9" * 65 + "}",
    "deep nesting": '{"username": ' + "[" * 3000 + "]" * 3000 + "}",
    "nesting past the bound": '{"a": ' + "[" * 32 + "]" * 32 + "}",
    "unclosed deep nesting": "[" * 60_000,
    "NaN": '{"username": NaN, "password": "correct horse battery"}',
    "Infinity": '{"username": -Infinity}',
    "overflowing float": '{"username": 1e999}',
}


def no_tracebacks(caplog: Any) -> None:
    logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_an_unbounded_json_body_is_a_400(client, caplog, path: str, name: str) -> None:
    resp = await client.post(
        path, data=BAD_BODIES[name], headers={"Content-Type": "application/json"}
    )
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"] == "invalid_request"
    assert body["error_description"].startswith("body is not valid JSON"), body
    no_tracebacks(caplog)


async def test_bounded_bodies_still_parse(client) -> None:
    tokens = await register_and_login(client)
    # nesting within the bound and long (but bounded) numbers are fine JSON
    deep = {"refresh_token": tokens["refresh_token"], "x": json.loads("[" * 30 + "]" * 30)}
    resp = await client.post("/auth/refresh", json={**deep, "n": 10**60, "f": 1.5e300})
    assert resp.status == 200, await resp.text()


def _token(header: bytes, *rest: str) -> str:
    return ".".join([b64(header), *(rest or (b64(b'{"sub": "x"}'), b64(b"\x00" * 64)))])


NESTED = {
    "1.5 KB of [": _token(b"[" * 1500),
    "array in an object": _token(b'{"typ": ' + b"[" * 1000 + b"]" * 1000 + b"}"),
    "header three levels deep": _token(b'{"typ": "at+jwt", "jwk": {"y": [1]}}'),
    "header list of lists": _token(b'{"typ": "at+jwt", "crit": [[]]}'),
    "header over 1 KiB": _token(json.dumps({"typ": "at+jwt", "x": "a" * 1100}).encode()),
    "huge integer in the header": _token(b'{"typ": ' + b"1" * 1000 + b"}"),
    "header not an object": _token(b'"at+jwt"'),
    "header not UTF-8": _token(b'{"typ": "\xff"}'),
    "four segments": _token(b"{}", "e30", "e30", "e30"),
    "two segments": _token(b"{}", "e30"),
}


def _requests(token: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/auth/me", {"headers": bearer(token)}),
        ("GET", "/auth/sessions", {"headers": bearer(token)}),
        ("POST", "/auth/logout", {"headers": bearer(token)}),
        ("POST", "/auth/refresh", {"headers": bearer(token)}),
        ("POST", "/auth/refresh", {"json": {"refresh_token": token}}),
        ("POST", "/oauth/revoke", {"data": {"token": token, "client_id": "cli"}}),
        (
            "POST",
            "/oauth/introspect",
            {"data": {"token": token, "client_id": "rs", "client_secret": RS_SECRET}},
        ),
        (
            "POST",
            "/oauth/token",
            {"data": {"grant_type": "refresh_token", "refresh_token": token, "client_id": "cli"}},
        ),
    ]


@pytest.mark.parametrize("name", list(NESTED))
async def test_a_token_with_an_unbounded_header_is_malformed(
    make_client, make_verifier, caplog, name: str
) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS)
    await register_and_login(client)  # a signing key exists, the JWKS is not empty
    token = NESTED[name]
    for method, path, kwargs in _requests(token):
        resp = await client.request(method, path, **kwargs)
        if path == "/oauth/revoke":  # RFC 7009: an unknown token is 200, nothing revoked
            assert resp.status == 200, await resp.text()
            continue
        body = await resp.json()
        if path == "/oauth/introspect":  # RFC 7662: inactive
            assert resp.status == 200 and body == {"active": False}, body
            continue
        if path == "/oauth/token":
            assert resp.status == 400 and body["error"] == "invalid_grant", body
            continue
        assert_invalid_token(resp.status, body, resp.headers, token)
        assert body["error_description"] == "malformed token", (path, body)
    assert await subscriber_rejects(make_verifier(client), token) == "malformed token"
    no_tracebacks(caplog)


async def test_real_tokens_still_verify(make_client, make_verifier) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200, await resp.text()
    assert (await make_verifier(client).verify(tokens["access_token"]))["sub"]
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 200, await resp.text()
