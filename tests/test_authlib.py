"""Interoperability with a real OAuth 2.0 client: Authlib's AsyncOAuth2Client (httpx)
against tokend on a real socket: password grant, automatic refresh with rotation,
revocation and introspection, for confidential and public clients."""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import pytest

from tests.support import PASSWORD, bearer, register, unverified

with warnings.catch_warnings(record=True):
    # Authlib 1.9 prefers the httpx2 package and warns once on import when it falls back
    # to httpx, which is what tokend's test dependencies install (it forces that warning
    # to "always", so it is recorded here and dropped rather than filtered).
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

CLIENTS = json.dumps({"web": {"secret": "s3cret"}, "cli": {}, "rs": {"secret": "rs-secret"}})


async def start(make_client: Any, **env: str) -> tuple[Any, str]:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS, **env)
    await register(client, "alice")
    return client, str(client.server.make_url("")).rstrip("/")


class TokenStore:
    """What an application's ``update_token`` callback would persist."""

    def __init__(self) -> None:
        self.updates: list[tuple[dict[str, Any], str | None]] = []

    async def __call__(
        self, token: dict[str, Any], refresh_token: str | None = None, **_: Any
    ) -> None:
        self.updates.append((dict(token), refresh_token))


async def me_status(client: Any, access_token: str) -> int:
    status: int = (await client.get("/auth/me", headers=bearer(access_token))).status
    return status


@pytest.mark.slow
async def test_confidential_client_password_refresh_revoke_introspect(make_client) -> None:
    # Short real access TTL: Authlib compares expires_at with the real clock. No grace, so
    # had Authlib replayed a consumed refresh token, reuse detection would end the session.
    server, base = await start(make_client, TOKEND_ACCESS_TTL="2", TOKEND_REFRESH_REUSE_GRACE="0")
    store = TokenStore()
    async with AsyncOAuth2Client(
        client_id="web",
        client_secret="s3cret",
        scope="read write",
        token_endpoint=f"{base}/oauth/token",
        update_token=store,
        leeway=0,
    ) as oauth:
        assert oauth.token_endpoint_auth_method == "client_secret_basic"
        token = await oauth.fetch_token(f"{base}/oauth/token", username="alice", password=PASSWORD)
        assert token["token_type"] == "Bearer" and token["scope"] == "read write"
        assert unverified(token["access_token"])[1]["client_id"] == "web"
        resp = await oauth.get(f"{base}/auth/me")
        assert resp.status_code == 200 and resp.json()["username"] == "alice"
        assert store.updates == []

        refresh_tokens = [token["refresh_token"]]
        for round_ in (1, 2):
            old_access = oauth.token["access_token"]
            await asyncio.sleep(2.2)
            assert await me_status(server, old_access) == 401  # really expired at tokend
            resp = await oauth.get(f"{base}/auth/me")  # Authlib refreshes first
            assert resp.status_code == 200, resp.text
            assert len(store.updates) == round_
            saved, used = store.updates[-1]
            assert used == refresh_tokens[-1]
            assert saved["refresh_token"] not in refresh_tokens  # rotated
            assert saved["access_token"] != old_access and saved["scope"] == "read write"
            assert oauth.token["refresh_token"] == saved["refresh_token"]
            refresh_tokens.append(saved["refresh_token"])

        resp = await oauth.introspect_token(
            f"{base}/oauth/introspect", token=oauth.token["access_token"]
        )
        assert resp.status_code == 200
        info = resp.json()
        assert info["active"] is True and info["client_id"] == "web"
        assert info["username"] == "alice" and info["scope"] == "read write"

        resp = await oauth.revoke_token(
            f"{base}/oauth/revoke",
            token=oauth.token["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert resp.status_code == 200 and resp.content == b""
        resp = await oauth.introspect_token(
            f"{base}/oauth/introspect", token=oauth.token["refresh_token"]
        )
        assert resp.json() == {"active": False}
        assert await me_status(server, oauth.token["access_token"]) == 401
        with pytest.raises(OAuthError) as caught:
            await oauth.refresh_token(f"{base}/oauth/token")
        assert caught.value.error == "invalid_grant"


async def test_client_secret_post_and_errors(make_client) -> None:
    server, base = await start(make_client, TOKEND_ACCESS_TTL="30")
    store = TokenStore()
    # Authlib's default leeway (60 s) exceeds the 30 s lifetime: every call refreshes.
    async with AsyncOAuth2Client(
        client_id="web",
        client_secret="s3cret",
        token_endpoint_auth_method="client_secret_post",
        revocation_endpoint_auth_method="client_secret_post",
        token_endpoint=f"{base}/oauth/token",
        update_token=store,
    ) as oauth:
        token = await oauth.fetch_token(f"{base}/oauth/token", username="alice", password=PASSWORD)
        seen = {token["refresh_token"]}
        for _ in range(3):
            assert (await oauth.get(f"{base}/auth/me")).status_code == 200
            seen.add(oauth.token["refresh_token"])
        assert len(store.updates) == 3 and len(seen) == 4
        access = oauth.token["access_token"]
        resp = await oauth.revoke_token(
            f"{base}/oauth/revoke", token=access, token_type_hint="access_token"
        )
        assert resp.status_code == 200
        assert await me_status(server, access) == 401
        # only that access token: the session refreshes on
        assert (await oauth.get(f"{base}/auth/me")).status_code == 200
        with pytest.raises(OAuthError) as caught:
            await oauth.fetch_token(f"{base}/oauth/token", username="alice", password="wrong one")
        assert caught.value.error == "invalid_grant"

    async with AsyncOAuth2Client(
        client_id="web", client_secret="not it", token_endpoint=f"{base}/oauth/token"
    ) as bad:
        with pytest.raises(OAuthError) as caught:
            await bad.fetch_token(f"{base}/oauth/token", username="alice", password=PASSWORD)
        assert caught.value.error == "invalid_client"


async def test_public_client(make_client) -> None:
    server, base = await start(make_client, TOKEND_ACCESS_TTL="30")
    store = TokenStore()
    async with AsyncOAuth2Client(
        client_id="cli",
        token_endpoint_auth_method="none",
        token_endpoint=f"{base}/oauth/token",
        update_token=store,
    ) as oauth:
        token = await oauth.fetch_token(f"{base}/oauth/token", username="alice", password=PASSWORD)
        assert unverified(token["access_token"])[1]["client_id"] == "cli"
        assert (await oauth.get(f"{base}/auth/me")).status_code == 200  # refreshed (leeway)
        assert len(store.updates) == 1
        assert store.updates[0][0]["refresh_token"] != token["refresh_token"]
        # introspection is for confidential clients only
        resp = await oauth.introspect_token(
            f"{base}/oauth/introspect", token=oauth.token["access_token"]
        )
        assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
        access = oauth.token["access_token"]
        resp = await oauth.revoke_token(f"{base}/oauth/revoke")  # Authlib sends the refresh token
        assert resp.status_code == 200
        assert await me_status(server, access) == 401
        with pytest.raises(OAuthError) as caught:
            await oauth.refresh_token(f"{base}/oauth/token")
        assert caught.value.error == "invalid_grant"

    # a confidential client may introspect the public client's (revoked) tokens
    async with AsyncOAuth2Client(client_id="rs", client_secret="rs-secret") as rs:
        resp = await rs.introspect_token(f"{base}/oauth/introspect", token=access)
        assert resp.json() == {"active": False}
