"""Protected resources (RFC 6750): /auth/me behind the bearer check, and the tokens login gives."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from multidict import CIMultiDict

from service.clock import FrozenClock
from service.http.appkeys import AUTH, KEYRING
from tests.support import bearer, register, register_and_login, unverified

REALM = 'Bearer realm="tokend"'
# RFC 9449 section 7.1: the DPoP challenge goes along with every Bearer one.
DPOP = 'DPoP algs="ES256 EdDSA RS256 PS256"'


def invalid_token_header(description: str) -> str:
    return f'{REALM}, error="invalid_token", error_description="{description}"'


async def me(client: Any, headers: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await client.get("/auth/me", headers=headers, **kwargs)
    return resp.status, await resp.json(), resp.headers


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _sign_like_the_server(client: Any, claims: dict[str, Any], **headers: Any) -> str:
    """A token signed with the server's own active key, for claims the server never issues."""
    key = client.server.app[KEYRING].keys[-1]
    header = {"typ": "at+jwt", "kid": key.kid, **headers}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers=header)


async def _claims(client: Any) -> dict[str, Any]:
    tokens = await register_and_login(client)
    return unverified(tokens["access_token"])[1]


# --- the happy path and what login hands out ------------------------------------------------


async def test_me_returns_the_caller(make_client: Any) -> None:
    client = await make_client()
    created = await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    tokens = await resp.json()
    status, body, headers = await me(client, bearer(tokens["access_token"]))
    assert status == 200
    _, claims = unverified(tokens["access_token"])
    assert body == {
        "sub": created["id"],
        "username": "alice",
        "sid": claims["sid"],
        "exp": claims["exp"],
    }
    assert headers["Cache-Control"] == "no-store"


async def test_login_hands_out_tokens_in_headers_and_body(make_client: Any) -> None:
    client = await make_client(TOKEND_ACCESS_TTL="600", TOKEND_AUDIENCE="api")
    await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "refresh_expires_in",
    }
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert 0 < body["refresh_expires_in"] <= 1_209_600
    assert resp.headers["Authorization"] == f"Bearer {body['access_token']}"
    assert resp.headers["X-Refresh-Token"] == body["refresh_token"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"].startswith("application/json")


async def test_access_token_follows_rfc_9068(make_client: Any) -> None:
    client = await make_client(TOKEND_ACCESS_TTL="600", TOKEND_AUDIENCE="api")
    await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    body = await resp.json()
    header, claims = unverified(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    assert header["kid"] == client.server.app[KEYRING].keys[-1].kid
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "sid"} <= set(claims)
    assert claims["iss"] == "http://127.0.0.1:8080"
    assert claims["aud"] == "api"
    assert claims["exp"] - claims["iat"] == 600
    assert all(isinstance(claims[k], int) for k in ("exp", "iat"))

    r_header, r_claims = unverified(body["refresh_token"])
    assert r_header["typ"] == "rt+jwt"
    # MACed with a key only tokend holds, never with a key published in the JWKS
    assert r_header["alg"] == "HS256" and r_header["kid"].startswith("rt-")
    assert r_claims["sid"] == claims["sid"] and r_claims["sub"] == claims["sub"]
    assert r_claims["jti"] != claims["jti"]
    assert r_claims["aud"] != "api"  # never usable where an access token is expected
    assert r_claims["exp"] - r_claims["iat"] == body["refresh_expires_in"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_scheme_is_case_insensitive(make_client: Any, scheme: str) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    status, _, _ = await me(client, {"Authorization": f"{scheme} {tokens['access_token']}"})
    assert status == 200


# --- 401 without an error code ---------------------------------------------------------------


async def test_no_credentials_is_401_without_error_code(make_client: Any) -> None:
    client = await make_client()
    status, body, headers = await me(client)
    assert status == 401
    assert headers.getall("WWW-Authenticate") == [REALM, DPOP]
    assert "error=" not in headers["WWW-Authenticate"]
    assert body["error"] != "invalid_token" and body["error_description"]


# --- 401 invalid_token -------------------------------------------------------------------------


async def test_expired_access_token(make_client: Any, clock: FrozenClock) -> None:
    client = await make_client(clock=clock, TOKEND_ACCESS_TTL="60")
    tokens = await register_and_login(client)
    clock.advance(59)
    assert (await me(client, bearer(tokens["access_token"])))[0] == 200
    clock.advance(1)
    status, body, headers = await me(client, bearer(tokens["access_token"]))
    assert status == 401
    assert headers.getall("WWW-Authenticate") == [
        invalid_token_header("access token expired"),
        DPOP,
    ]
    assert body == {"error": "invalid_token", "error_description": "access token expired"}


async def _assert_invalid_token(client: Any, token: str, description: str | None = None) -> None:
    status, body, headers = await me(client, bearer(token))
    assert status == 401, body
    assert body["error"] == "invalid_token"
    assert body["error_description"]
    if description is not None:
        assert body["error_description"] == description
    assert headers["WWW-Authenticate"] == invalid_token_header(body["error_description"])
    assert token not in json.dumps(body) and token not in headers["WWW-Authenticate"]


async def test_bad_signature(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    head, payload, sig = tokens["access_token"].split(".")
    # Flip a character in the middle: the last one may only touch padding bits.
    middle = len(sig) // 2
    flipped = sig[:middle] + ("A" if sig[middle] != "A" else "B") + sig[middle + 1 :]
    await _assert_invalid_token(client, f"{head}.{payload}.{flipped}", "bad signature")


async def test_changed_claims_break_the_signature(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    head, _, sig = tokens["access_token"].split(".")
    claims = unverified(tokens["access_token"])[1]
    forged = _b64({**claims, "exp": claims["exp"] + 86_400})
    await _assert_invalid_token(client, f"{head}.{forged}.{sig}", "bad signature")


@pytest.mark.parametrize(
    "garbage", ["garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.AAAA", "x" * 5000]
)
async def test_garbage_token(make_client: Any, garbage: str) -> None:
    client = await make_client()
    await _assert_invalid_token(client, garbage)


async def test_refresh_token_is_not_an_access_token(make_client: Any) -> None:
    client = await make_client()
    await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    refresh = resp.headers["X-Refresh-Token"]
    await _assert_invalid_token(client, refresh, "not an access token")


async def test_unknown_kid(make_client: Any) -> None:
    client = await make_client()
    claims = await _claims(client)
    foreign = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(
        claims, foreign, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": "not-in-the-ring"}
    )
    await _assert_invalid_token(client, token, "unknown signing key")


async def test_foreign_key_with_a_known_kid(make_client: Any) -> None:
    client = await make_client()
    claims = await _claims(client)
    kid = client.server.app[KEYRING].keys[-1].kid
    foreign = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(claims, foreign, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": kid})
    await _assert_invalid_token(client, token, "bad signature")


@pytest.mark.security
async def test_alg_none_is_refused(make_client: Any) -> None:
    client = await make_client()
    claims = await _claims(client)
    kid = client.server.app[KEYRING].keys[-1].kid
    token = f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{_b64(claims)}."
    await _assert_invalid_token(client, token)


@pytest.mark.security
async def test_hmac_with_the_public_key_is_refused(make_client: Any) -> None:
    # Algorithm confusion: HS256 keyed with the published public key, built by hand
    # because PyJWT itself refuses to produce it.
    client = await make_client()
    claims = await _claims(client)
    key = client.server.app[KEYRING].keys[-1]
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{_b64(claims)}"
    for secret in (key.jwk["x"].encode(), json.dumps(key.jwk).encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        await _assert_invalid_token(client, f"{signing_input}.{sig}")


@pytest.mark.security
@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"aud": "someone-else"}, "wrong audience"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"exp": "9999999999"}, "claim exp must be a number"),
        ({"sid": ""}, "claim sid must be a non-empty string"),
        ({"jti": None}, None),
    ],
)
async def test_claims_are_checked(
    make_client: Any, change: dict[str, Any], description: str | None
) -> None:
    client = await make_client()
    claims = await _claims(client)
    await _assert_invalid_token(
        client, _sign_like_the_server(client, {**claims, **change}), description
    )


@pytest.mark.security
async def test_missing_claim(make_client: Any) -> None:
    client = await make_client()
    claims = await _claims(client)
    del claims["sid"]
    await _assert_invalid_token(client, _sign_like_the_server(client, claims), "missing claim sid")


@pytest.mark.security
@pytest.mark.parametrize(
    "headers",
    [
        {"typ": "JWT"},
        {"typ": "rt+jwt"},
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
    ],
)
async def test_token_headers_are_checked(make_client: Any, headers: dict[str, Any]) -> None:
    client = await make_client()
    claims = await _claims(client)
    await _assert_invalid_token(client, _sign_like_the_server(client, claims, **headers))


async def test_server_signed_token_with_good_claims_passes(make_client: Any) -> None:
    # The control for the forgeries above: the same construction with nothing changed works.
    client = await make_client()
    claims = await _claims(client)
    status, _, _ = await me(client, bearer(_sign_like_the_server(client, claims)))
    assert status == 200


async def test_disabled_user(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    assert (await me(client, bearer(tokens["access_token"])))[0] == 200
    sub = unverified(tokens["access_token"])[1]["sub"]
    await client.server.app[AUTH].users.set_disabled(sub, True)
    await _assert_invalid_token(client, tokens["access_token"], "user no longer active")
    # Nor can the disabled user log in again.
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    assert resp.status == 401


async def test_revoked_session(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    resp = await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    await _assert_invalid_token(client, tokens["access_token"], "token revoked")


# --- 400 invalid_request for a malformed header ------------------------------------------------


async def _assert_invalid_request(client: Any, headers: Any, **kwargs: Any) -> None:
    status, body, resp_headers = await me(client, headers, **kwargs)
    assert status == 400, body
    assert body["error"] == "invalid_request"
    assert body["error_description"]
    assert "invalid_token" not in resp_headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer  token",
        "Token abc",
        "Bearer tok\u00e9n",
        "Bearer a,b",
    ],
)
async def test_malformed_authorization(make_client: Any, value: str) -> None:
    client = await make_client()
    await _assert_invalid_request(client, {"Authorization": value})


async def test_two_authorization_headers(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    token = tokens["access_token"]
    headers = CIMultiDict(
        [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    )
    await _assert_invalid_request(client, headers)


async def test_token_in_header_and_query(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    token = tokens["access_token"]
    await _assert_invalid_request(client, bearer(token), params={"access_token": token})


async def test_token_in_the_query_only_is_refused(make_client: Any) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    await _assert_invalid_request(client, None, params={"access_token": tokens["access_token"]})
