"""Forged signatures and hostile token headers: every one is 401 invalid_token at tokend
(protected resource and refresh) and at the subscriber library, and nothing is fetched,
opened or run because of what a token header says."""

from __future__ import annotations

import hashlib
import hmac
import itertools
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from service.http.appkeys import ENGINE, REDIS
from service.keys import public_jwk
from tests.conftest import REDIS_URL
from tests.support import (
    ConnectionCounter,
    assert_invalid_token,
    forge,
    me,
    refresh,
    register_and_login,
    sentry,
    server_key,
    sign_like_server,
    sign_raw,
    subscriber_rejects,
    unverified,
)

pytestmark = pytest.mark.security

NONE_CASINGS = ["".join(c) for c in itertools.product(*zip("none", "NONE", strict=True))]


async def _login(client: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(tokens, refresh-token header, access-token claims) of a fresh login."""
    tokens = await register_and_login(client)
    return tokens, unverified(tokens["refresh_token"])[0], unverified(tokens["access_token"])[1]


async def _refused_everywhere(
    client: Any, verifier: Any, access: str | None = None, refresh_token: str | None = None
) -> None:
    if access is not None:
        assert_invalid_token(*await me(client, access), access)
        await subscriber_rejects(verifier, access)
    if refresh_token is not None:
        status, body, headers = await refresh(client, refresh_token)
        assert_invalid_token(status, body, headers, refresh_token)
        assert "X-Refresh-Token" not in headers


async def test_alg_none_in_every_letter_case(make_client, make_verifier) -> None:
    client = await make_client()
    verifier = make_verifier(client)
    tokens, r_header, claims = await _login(client)
    r_claims = unverified(tokens["refresh_token"])[1]
    kid = server_key(client).kid
    assert len(NONE_CASINGS) == 16
    for alg in NONE_CASINGS:
        for sign in (lambda _: b"", lambda _: b"\x00" * 64):
            await _refused_everywhere(
                client,
                verifier,
                access=forge({"alg": alg, "typ": "at+jwt", "kid": kid}, claims, sign),
                refresh_token=forge({**r_header, "alg": alg}, r_claims, sign),
            )
    # none of it consumed the real refresh token
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200


async def test_empty_signature(make_client, make_verifier) -> None:
    client = await make_client()
    tokens, _, _ = await _login(client)
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    await _refused_everywhere(
        client,
        make_verifier(client),
        access=access.rsplit(".", 1)[0] + ".",
        refresh_token=refresh_token.rsplit(".", 1)[0] + ".",
    )


def _public_forms(key: Any) -> dict[str, bytes]:
    public = key.public
    return {
        "empty": b"",
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "jwk-x": key.jwk["x"].encode(),
    }


@pytest.mark.parametrize("form", ["empty", "pem", "der", "raw", "jwk-x"])
async def test_hs256_with_an_empty_key_or_our_public_key(make_client, make_verifier, form) -> None:
    """The classic algorithm confusion: HMAC keyed with what the JWKS publishes."""
    client = await make_client()
    tokens, r_header, claims = await _login(client)
    r_claims = unverified(tokens["refresh_token"])[1]
    key = server_key(client)
    secret = _public_forms(key)[form]

    def mac(data: bytes) -> bytes:
        return hmac.new(secret, data, hashlib.sha256).digest()

    await _refused_everywhere(
        client,
        make_verifier(client),
        access=forge({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, claims, mac),
        # refresh tokens are HS256 already: the public key is simply the wrong MAC key
        refresh_token=forge(r_header, r_claims, mac),
    )


async def test_es256_with_r_and_s_zero(make_client, make_verifier) -> None:
    """CVE-2022-21449 ("psychic signatures"): r = s = 0 must never verify."""
    client = await make_client(TOKEND_SIGNING_ALG="ES256")
    verifier = make_verifier(client)
    tokens, _, claims = await _login(client)
    key = server_key(client)
    assert key.alg == "ES256" and unverified(tokens["access_token"])[0]["alg"] == "ES256"
    # the legitimate ES256 token passes: the refusals below are about the signature
    assert (await me(client, tokens["access_token"]))[0] == 200
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    der_zero = bytes.fromhex("3006020100020100")  # SEQUENCE { INTEGER 0, INTEGER 0 }
    for signature in (b"\x00" * 64, der_zero, b""):
        token = forge(header, claims, lambda _, s=signature: s)
        await _refused_everywhere(client, verifier, access=token)


def _attacker() -> tuple[ed25519.Ed25519PrivateKey, dict[str, Any]]:
    private = ed25519.Ed25519PrivateKey.generate()
    return private, public_jwk(private.public_key(), "EdDSA")


def _allowed_ports(client: Any) -> set[int]:
    redis_port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    return {client.server.port, redis_port}


async def test_jwk_jku_x5u_headers_fetch_nothing(make_client, make_verifier) -> None:
    client = await make_client()
    verifier = make_verifier(client)
    _, _, claims = await _login(client)
    await verifier.verify(sign_like_server(client, claims))  # JWKS fetched before watching
    await client.app[REDIS].ping()
    private, jwk = _attacker()
    async with ConnectionCounter() as jku:
        attacker_headers: list[dict[str, Any]] = [
            {"jku": jku.url()},
            {"x5u": jku.url("/cert.pem")},
            {"jwk": jwk},
            {"jku": jku.url(), "jwk": jwk},
            {"x5c": ["MIIB"], "x5u": jku.url("/chain.pem")},
        ]
        with sentry() as activity:
            for extra in attacker_headers:
                own = jwt.encode(
                    claims,
                    private,
                    algorithm="EdDSA",
                    headers={"typ": "at+jwt", "kid": jwk["kid"], **extra},
                )
                # the header on a token tokend's own key signed is refused as well
                for token in (own, sign_like_server(client, claims, **extra)):
                    status, body, headers = await me(client, token)
                    assert_invalid_token(status, body, headers, token)
                    assert body["error_description"] in {
                        "token header names external key material",
                        "unknown signing key",
                    }
                    await subscriber_rejects(verifier, token)
        assert jku.connections == 0
    assert activity.connections(_allowed_ports(client)) == []


KIDS = [
    "../../dev/null",
    "../../../../../../etc/passwd",
    "/dev/null",
    "file:///etc/passwd",
    "x' UNION SELECT '1';--",
    "1' OR '1'='1",
    "'; DROP TABLE signing_keys; --",
    "$(touch /tmp/tokend-pwned)",
    "`id > /tmp/tokend-pwned`",
    "a; cat /etc/passwd | nc 127.0.0.1 9",
    "unknown-kid",
    "",
    "\u0000",
    "k" * 3000,
]


@pytest.mark.parametrize("sign", ["server-key", "hs256-empty-key"])
async def test_hostile_kid_reads_and_runs_nothing(make_client, make_verifier, sign) -> None:
    client = await make_client()
    verifier = make_verifier(client)
    tokens, r_header, claims = await _login(client)
    r_claims = unverified(tokens["refresh_token"])[1]
    await verifier.verify(tokens["access_token"])
    key = server_key(client)
    with sentry() as activity:
        for kid in [*KIDS, 7, None, ["a"], {"k": "v"}]:
            if sign == "server-key":
                access = sign_raw(client, {"typ": "at+jwt", "kid": kid}, claims)
            else:
                access = forge(
                    {"alg": "HS256", "typ": "at+jwt", "kid": kid},
                    claims,
                    lambda data: hmac.new(b"", data, hashlib.sha256).digest(),
                )
            refresh_token = forge(
                {**r_header, "kid": kid},
                r_claims,
                lambda data: hmac.new(b"", data, hashlib.sha256).digest(),
            )
            status, body, headers = await me(client, access)
            if len(access) > 4096:
                assert status == 401 and body["error"] == "invalid_token"
            else:
                assert_invalid_token(status, body, headers, access)
                assert body["error_description"] in {"unknown signing key", "token too long"}
            await subscriber_rejects(verifier, access)
            status, body, headers = await refresh(client, refresh_token)
            assert status == 401 and body["error"] == "invalid_token"
    for fragment in ("dev/null", "etc/passwd", "tokend-pwned"):
        assert activity.opened(fragment) == []
    assert activity.processes() == []
    assert activity.connections(_allowed_ports(client)) == []
    # the key table is intact and the real tokens still work
    async with client.app[ENGINE].connect() as conn:
        from sqlalchemy import text

        assert (await conn.execute(text("SELECT count(*) FROM signing_keys"))).scalar() == 1
    assert (await me(client, tokens["access_token"]))[0] == 200
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200
    assert key.kid == server_key(client).kid
