"""Signing keys and the JWKS: a login token verifies with PyJWKClient and nothing else;
keys are shared by every process on a database and sealed at rest under the KEK."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.app import create_app
from service.crypto import Sealer, decode_kek, generate_kek
from service.db import make_engine
from service.errors import ConfigError
from service.http.appkeys import KEYRING
from service.migrate import upgrade_async
from service.models import SigningKeyRow
from tests.conftest import TEST_KEK
from tests.support import TokendTestServer, bearer, register_and_login

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
EXPECTED_JWK = {
    "EdDSA": {"kty": "OKP", "crv": "Ed25519"},
    "ES256": {"kty": "EC", "crv": "P-256"},
    "RS256": {"kty": "RSA"},
}


def _verify_with_jwks_only(url: str, token: str, issuer: str, audience: str) -> dict[str, Any]:
    """What another service does: nothing but the JWKS URL (blocking: call in a thread)."""
    jwks_client = jwt.PyJWKClient(url, cache_keys=False)
    signing_key = jwks_client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key.key,
        algorithms=[signing_key.algorithm_name],
        audience=audience,
        issuer=issuer,
    )
    return claims


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
async def test_login_token_verifies_with_pyjwkclient(make_client: Any, alg: str) -> None:
    client = await make_client(TOKEND_SIGNING_ALG=alg)
    tokens = await register_and_login(client)
    url = str(client.make_url("/.well-known/jwks.json"))
    assert url.startswith("http://127.0.0.1:")
    claims = await asyncio.to_thread(
        _verify_with_jwks_only, url, tokens["access_token"], "http://127.0.0.1:8080", "tokend"
    )
    assert claims["sub"] and claims["sid"]
    assert jwt.get_unverified_header(tokens["access_token"])["alg"] == alg

    # A token for another audience, or a tampered one, does not verify that way.
    with pytest.raises(jwt.InvalidAudienceError):
        await asyncio.to_thread(
            _verify_with_jwks_only, url, tokens["access_token"], "http://127.0.0.1:8080", "other"
        )
    head, payload, sig = tokens["access_token"].split(".")
    middle = len(sig) // 2
    tampered = (
        f"{head}.{payload}.{sig[:middle]}{'A' if sig[middle] != 'A' else 'B'}{sig[middle + 1 :]}"
    )
    with pytest.raises(jwt.InvalidSignatureError):
        await asyncio.to_thread(
            _verify_with_jwks_only, url, tampered, "http://127.0.0.1:8080", "tokend"
        )


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
async def test_jwks_holds_public_members_only(make_client: Any, alg: str) -> None:
    client = await make_client(TOKEND_SIGNING_ALG=alg)
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "public" in resp.headers["Cache-Control"]
    body = await resp.json()
    assert set(body) == {"keys"}
    assert len(body["keys"]) == 1
    (key,) = body["keys"]
    assert not PRIVATE_MEMBERS & set(key), key
    assert key.items() >= EXPECTED_JWK[alg].items()
    assert key["alg"] == alg and key["use"] == "sig" and key["kid"]
    # It is exactly the public half of the key the server signs with.
    ring_key = client.server.app[KEYRING].keys[-1]
    assert key["kid"] == ring_key.kid
    public = jwt.PyJWK(key).key
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert public.public_bytes(*spki) == ring_key.private.public_key().public_bytes(*spki)


async def test_two_apps_on_one_database_sign_with_the_same_key(
    make_client: Any, make_settings: Any, db_url: str
) -> None:
    settings = make_settings(TOKEND_DATABASE_URL=db_url)
    # Started together: the first key is created race-free (one generation, one winner).
    first, second = await asyncio.gather(make_client(settings), make_client(settings))
    kids = {c.server.app[KEYRING].keys[-1].kid for c in (first, second)}
    assert len(kids) == 1
    assert len(first.server.app[KEYRING].keys) == 1
    tokens = await register_and_login(first)
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] in kids
    # Either process accepts the other's tokens.
    resp = await second.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200
    jwks = [await (await c.get("/.well-known/jwks.json")).json() for c in (first, second)]
    assert jwks[0] == jwks[1]


async def test_private_key_is_sealed_at_rest(make_client: Any, migrated_sqlite: str) -> None:
    client = await make_client()
    ring_key = client.server.app[KEYRING].keys[-1]
    der = ring_key.private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = ring_key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    engine = make_engine(migrated_sqlite)
    try:
        async with async_sessionmaker(engine)() as session:
            rows = (await session.scalars(select(SigningKeyRow))).all()
    finally:
        await engine.dispose()
    assert len(rows) == 1
    sealed = rows[0].private_sealed
    assert sealed != der
    assert der not in sealed and raw not in sealed
    assert "d" not in json.loads(rows[0].public_jwk)
    # It is the DER under the KEK, bound to its kid.
    assert Sealer(decode_kek(TEST_KEK)).open(sealed, rows[0].kid) == der
    with pytest.raises(ConfigError):
        Sealer(decode_kek(TEST_KEK)).open(sealed, "another-kid")


async def test_wrong_kek_stops_start_up(make_client: Any, make_settings: Any) -> None:
    await make_client()  # creates the first key under TEST_KEK
    app = create_app(make_settings(TOKEND_KEY_ENCRYPTION_KEY=generate_kek()))
    server = TokendTestServer(app)
    with pytest.raises(ConfigError) as info:
        await server.start_server()
    await server.close()
    assert str(info.value).startswith("TOKEND_KEY_ENCRYPTION_KEY: ")


async def test_postgres_without_kek_is_refused(make_settings: Any) -> None:
    settings = make_settings(
        TOKEND_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        TOKEND_KEY_ENCRYPTION_KEY="",
    )
    assert settings.key_encryption_key is None
    with pytest.raises(ConfigError) as info:
        create_app(settings)
    assert str(info.value).startswith("TOKEND_KEY_ENCRYPTION_KEY: ")


async def test_sqlite_without_kek_generates_a_private_key_file(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "dev" / "tokend.db"
    db.parent.mkdir()
    url = f"sqlite+aiosqlite:///{db}"
    await upgrade_async(url)
    kek_file = tmp_path / "dev" / "tokend.db.kek"
    with caplog.at_level(logging.WARNING, logger="tokend"):
        client = await make_client(TOKEND_DATABASE_URL=url, TOKEND_KEY_ENCRYPTION_KEY="")
    assert kek_file.exists()
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert len(decode_kek(kek_file.read_text().strip())) == 32
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "TOKEND_KEY_ENCRYPTION_KEY" in r.getMessage() and str(kek_file) in r.getMessage()
        for r in warnings
    )
    kid = client.server.app[KEYRING].keys[-1].kid

    # The next start reuses the file quietly and can open the stored key.
    caplog.clear()
    before = kek_file.read_text()
    with caplog.at_level(logging.WARNING, logger="tokend"):
        again = await make_client(TOKEND_DATABASE_URL=url, TOKEND_KEY_ENCRYPTION_KEY="")
    assert kek_file.read_text() == before
    assert again.server.app[KEYRING].keys[-1].kid == kid
    assert not [r for r in caplog.records if "generated" in r.getMessage()]
