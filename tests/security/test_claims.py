"""Claims of a correctly signed token that must still be refused: time claims (type and
leeway), issuer and audience compared exactly, unknown ``crit``, and a user who is gone.
Each is checked at tokend and at the subscriber library."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from service.auth import delete_user
from service.http.appkeys import AUTH, ENGINE, SETTINGS
from tests.conftest import FAST_ARGON2, REDIS_URL, TEST_KEK
from tests.support import (
    assert_invalid_token,
    me,
    refresh,
    register,
    register_and_login,
    server_key,
    sign_like_server,
    sign_raw,
    subscriber_rejects,
    unverified,
)
from tokend_client import RevocationListener

pytestmark = pytest.mark.security

LEEWAY = 30  # TOKEND_LEEWAY's default and the verifier's


async def _claims(client: Any) -> dict[str, Any]:
    tokens = await register_and_login(client)
    return unverified(tokens["access_token"])[1]


async def _refused(client: Any, verifier: Any, token: str, description: str | None) -> None:
    status, body, headers = await me(client, token)
    assert_invalid_token(status, body, headers, token)
    if description is not None:
        assert body["error_description"] == description
    await subscriber_rejects(verifier, token)


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != name}


@pytest.mark.parametrize(
    ("change", "description"),
    [
        (lambda c: _without(c, "exp"), "missing claim exp"),
        (lambda c: _without(c, "iat"), "missing claim iat"),
        (lambda c: {**c, "exp": c["iat"] - 3600, "iat": c["iat"] - 4500}, None),
        (lambda c: {**c, "exp": str(c["exp"])}, "claim exp must be a number"),
        (lambda c: {**c, "exp": [c["exp"]]}, None),
        (lambda c: {**c, "exp": True}, None),
        (lambda c: {**c, "iat": str(c["iat"])}, None),
        (lambda c: {**c, "nbf": str(c["iat"])}, None),
        (lambda c: {**c, "iat": c["iat"] + LEEWAY + 60}, "token issued in the future"),
        (lambda c: {**c, "nbf": c["iat"] + LEEWAY + 60}, "token not yet valid"),
    ],
    ids=[
        "missing-exp",
        "missing-iat",
        "past-exp",
        "exp-as-string",
        "exp-as-list",
        "exp-as-bool",
        "iat-as-string",
        "nbf-as-string",
        "iat-beyond-leeway",
        "nbf-beyond-leeway",
    ],
)
async def test_time_claims(make_client, make_verifier, change, description) -> None:
    client = await make_client()
    claims = await _claims(client)
    token = sign_like_server(client, change(claims))
    await _refused(client, make_verifier(client), token, description)


async def test_future_claims_within_the_leeway_pass(make_client, make_verifier) -> None:
    # the control for the two rows above: skew smaller than the leeway is tolerated
    client = await make_client()
    claims = await _claims(client)
    soon = claims["iat"] + LEEWAY - 10
    token = sign_like_server(client, {**claims, "iat": soon, "nbf": soon})
    assert (await me(client, token))[0] == 200
    assert (await make_verifier(client).verify(token))["sid"] == claims["sid"]


ISSUER = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "http://127.0.0.1:8080/"},
        {"iss": "http://127.0.0.1:8080.evil.example"},
        {"iss": "http://127.0.0.1:808"},
        {"iss": "http://127.0.0.1:8080 "},
        {"iss": "HTTP://127.0.0.1:8080"},
        {"iss": "127.0.0.1:8080"},
        {"iss": [ISSUER]},
        {"iss": [ISSUER, "https://evil.example"]},
        {"iss": ""},
        {"iss": None},
        {"aud": "tokend-admin"},
        {"aud": "tokendx"},
        {"aud": "token"},
        {"aud": "tok"},
        {"aud": "TOKEND"},
        {"aud": ["tokend-admin", "x"]},
        {"aud": "http://127.0.0.1:8080"},  # the refresh tokens' audience
        {"aud": []},
        {"aud": ""},
        {"aud": None},
    ],
    ids=lambda change: f"{next(iter(change))}={next(iter(change.values()))!r}",
)
async def test_issuer_and_audience_match_exactly(make_client, make_verifier, change) -> None:
    client = await make_client()
    claims = await _claims(client)
    token = sign_raw(client, {"typ": "at+jwt", "kid": server_key(client).kid}, {**claims, **change})
    await _refused(client, make_verifier(client), token, None)


@pytest.mark.parametrize(
    "header",
    [
        {"crit": ["exp-x"], "exp-x": 1},
        {"crit": ["b64"], "b64": False},
        {"crit": []},
        {"crit": "exp"},
        {"crit": ["kid"]},
    ],
    ids=["unknown", "b64-unencoded", "empty-list", "not-a-list", "registered-name"],
)
async def test_crit_headers_are_refused(make_client, make_verifier, header) -> None:
    client = await make_client()
    claims = await _claims(client)
    token = sign_raw(client, {"typ": "at+jwt", "kid": server_key(client).kid, **header}, claims)
    await _refused(client, make_verifier(client), token, None)


async def test_a_deleted_user_is_locked_out(make_client) -> None:
    """Refresh never reads SQL, so deleting a user must end their sessions too."""
    client = await make_client()
    await register(client, "bobby")
    tokens = await register_and_login(client, "alice")
    other = await register_and_login(client, "carol")
    sub = unverified(tokens["access_token"])[1]["sub"]
    auth = client.app[AUTH]
    assert await delete_user(auth.users, auth.sessions, "alice", time.time()) == 1
    async with client.app[ENGINE].connect() as conn:
        found = await conn.execute(text("SELECT count(*) FROM users WHERE id = :id"), {"id": sub})
        assert found.scalar() == 0
    token = tokens["access_token"]
    status, body, headers = await me(client, token)
    assert_invalid_token(status, body, headers, token)
    status, body, headers = await refresh(client, tokens["refresh_token"])
    assert_invalid_token(status, body, headers, tokens["refresh_token"])
    # nobody else is affected, and the name cannot log in any more
    assert (await me(client, other["access_token"]))[0] == 200
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": "correct horse battery"}
    )
    assert resp.status == 401


async def test_a_row_deleted_behind_tokends_back_is_refused_at_me(make_client) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    sub = unverified(tokens["access_token"])[1]["sub"]
    async with client.app[ENGINE].begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": sub})
    token = tokens["access_token"]
    status, body, headers = await me(client, token)
    assert_invalid_token(status, body, headers, token)
    assert body["error_description"] == "user no longer active"


async def test_a_disabled_user_is_locked_out_everywhere(make_client, make_verifier) -> None:
    """``tokend users disable``: refresh, tokend and the subscriber's deny list."""
    client = await make_client()
    tokens = await register_and_login(client)
    settings = client.app[AUTH].sessions
    listener = RevocationListener(_redis_url(client), prefix=settings.prefix)
    await listener.start()
    try:
        await listener.wait_ready()
        assert await client.app[AUTH].disable_user("alice") == 1
        token = tokens["access_token"]
        status, body, headers = await me(client, token)
        assert_invalid_token(status, body, headers, token)
        status, body, headers = await refresh(client, tokens["refresh_token"])
        assert_invalid_token(status, body, headers, tokens["refresh_token"])
        claims = unverified(token)[1]
        async with asyncio.timeout(5):
            while not listener.is_revoked(claims):
                await asyncio.sleep(0.01)
    finally:
        await listener.close()


def _redis_url(client: Any) -> str:
    return str(client.app[SETTINGS].redis_url)


async def test_users_delete_on_the_command_line(make_client, migrated_sqlite, redis_prefix) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
        **FAST_ARGON2,
        "TOKEND_DATABASE_URL": migrated_sqlite,
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tokend"),
        "users",
        "delete",
        "ALICE",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"deleted": "ALICE", "sessions_revoked": 1}
    status, body, headers = await refresh(client, tokens["refresh_token"])
    assert_invalid_token(status, body, headers, tokens["refresh_token"])
    assert (await me(client, tokens["access_token"]))[0] == 401
