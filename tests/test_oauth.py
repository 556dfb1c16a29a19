"""OAuth 2.0 endpoints: token (RFC 6749 5.1/5.2), revocation (RFC 7009), introspection
(RFC 7662), with client_secret_basic, client_secret_post and public clients."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote_plus

import pytest

from service.devredis import free_port
from service.http.appkeys import AUTH, REDIS
from tests.support import (
    PASSWORD,
    add_user,
    bearer,
    register,
    register_and_login,
    unverified,
)

FORM = "application/x-www-form-urlencoded"
CLIENTS = json.dumps(
    {
        "web": {"secret": "s3cret"},
        "cli": {},
        "rs": {"secret": "resource-server"},
        "odd": {"secret": "a b+c:d%é"},
    }
)
SECRETS = {"web": "s3cret", "rs": "resource-server", "odd": "a b+c:d%é"}


def basic(
    client_id: str, secret: str | None = None, *, encode: bool = False, charset: str = "utf-8"
) -> dict[str, str]:
    """Authorization: Basic, raw like Authlib, or form-urlencoded first like RFC 6749 2.3.1."""
    secret = SECRETS.get(client_id, "") if secret is None else secret
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    raw = f"{client_id}:{secret}".encode(charset)
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def oauth_client(make_client: Any, **env: str) -> Any:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS, **env)
    await register(client, "alice")
    return client


async def password_grant(
    client: Any, *, who: str = "web", scope: str | None = None, **form: str
) -> dict[str, Any]:
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD, **form}
    if scope is not None:
        data["scope"] = scope
    headers = basic(who) if who in SECRETS else {}
    if who not in SECRETS:
        data["client_id"] = who
    resp = await client.post("/oauth/token", data=data, headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def refresh_grant(client: Any, refresh_token: str, who: str = "web", **form: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
    headers = basic(who) if who in SECRETS else {}
    if who not in SECRETS:
        data["client_id"] = who
    return await client.post("/oauth/token", data=data, headers=headers)


async def post(client: Any, path: str, who: str = "web", **form: str) -> Any:
    headers = basic(who) if who in SECRETS else {}
    if who not in SECRETS:
        form["client_id"] = who
    return await client.post(path, data=form, headers=headers)


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["error"] == code, body
    return body


async def me_status(client: Any, access_token: str) -> int:
    resp = await client.get("/auth/me", headers=bearer(access_token))
    status: int = resp.status
    return status


# -- token endpoint: success (5.1) -----------------------------------------------------


async def test_password_grant_basic_answers_per_5_1(make_client) -> None:
    client = await oauth_client(make_client, TOKEND_ACCESS_TTL="120")
    resp = await client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "scope": "read  write read",
        },
        headers=basic("web"),
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"
    assert resp.content_type == "application/json"
    assert "Authorization" not in resp.headers and "X-Refresh-Token" not in resp.headers
    body = await resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 120
    assert body["scope"] == "read write"
    assert body["refresh_token"] and body["refresh_expires_in"] > 0
    _, access = unverified(body["access_token"])
    assert access["client_id"] == "web" and access["scope"] == "read write"
    assert unverified(body["refresh_token"])[1]["client_id"] == "web"
    assert await me_status(client, body["access_token"]) == 200


async def test_client_secret_post_and_public_client(make_client) -> None:
    client = await oauth_client(make_client)
    resp = await client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORD,
            "client_id": "web",
            "client_secret": "s3cret",
        },
    )
    assert resp.status == 200, await resp.text()
    assert unverified((await resp.json())["access_token"])[1]["client_id"] == "web"
    body = await password_grant(client, who="cli")
    assert unverified(body["access_token"])[1]["client_id"] == "cli"
    assert "scope" not in body


async def test_basic_credentials_raw_and_form_urlencoded(make_client) -> None:
    client = await oauth_client(make_client)
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    for encode, charset in [(False, "utf-8"), (False, "latin-1"), (True, "utf-8")]:
        headers = basic("odd", encode=encode, charset=charset)  # Authlib sends raw Latin-1
        resp = await client.post("/oauth/token", data=data, headers=headers)
        assert resp.status == 200, (encode, charset, await resp.text())
    resp = await client.post("/oauth/token", data=data, headers=basic("odd", "a b+c:d%e"))
    await error_of(resp, 401, "invalid_client")
    # Basic with an empty secret identifies a public client
    resp = await client.post("/oauth/token", data=data, headers=basic("cli", ""))
    assert resp.status == 200


# -- client authentication failures ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form"),
    [
        (basic("web", "wrong"), {}),
        (basic("nobody", "s3cret"), {}),
        ({}, {"client_id": "web", "client_secret": "wrong"}),
        ({}, {"client_id": "web"}),  # confidential client without its secret
        ({}, {"client_id": "nobody"}),
        ({}, {}),  # no client authentication at all
        ({}, {"client_id": "cli", "client_secret": "made-up"}),  # public client has none
        (basic("cli", "made-up"), {}),
        ({"Authorization": "Basic !!!"}, {}),
        ({"Authorization": "Bearer abc"}, {}),
    ],
)
async def test_client_authentication_failure_is_401_invalid_client(
    make_client, headers: dict[str, str], form: dict[str, str]
) -> None:
    client = await oauth_client(make_client)
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD, **form}
    resp = await client.post("/oauth/token", data=data, headers=headers)
    body = await error_of(resp, 401, "invalid_client")
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert "access_token" not in body


async def test_two_client_authentication_methods_is_400(make_client) -> None:
    client = await oauth_client(make_client)
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    resp = await client.post(
        "/oauth/token", data={**data, "client_secret": "s3cret"}, headers=basic("web")
    )
    await error_of(resp, 400, "invalid_request")
    resp = await client.post(
        "/oauth/token", data={**data, "client_id": "cli"}, headers=basic("web")
    )
    await error_of(resp, 400, "invalid_request")
    # the same client_id beside Basic is identification, not a second method
    resp = await client.post(
        "/oauth/token", data={**data, "client_id": "web"}, headers=basic("web")
    )
    assert resp.status == 200
    resp = await client.post(
        "/oauth/token", data={**data, "client_secret": "s3cret"}
    )  # a secret without an id
    await error_of(resp, 400, "invalid_request")


# -- token endpoint: request errors (5.2) -----------------------------------------------


async def test_malformed_token_requests(make_client) -> None:
    client = await oauth_client(make_client)
    resp = await client.post(
        "/oauth/token",
        data="grant_type=password&username=alice&username=bob&password=x",
        headers={**basic("web"), "Content-Type": FORM},
    )
    body = await error_of(resp, 400, "invalid_request")
    assert "username" in body["error_description"]
    resp = await client.post(
        "/oauth/token",
        json={"grant_type": "password", "username": "alice", "password": PASSWORD},
        headers=basic("web"),
    )
    await error_of(resp, 415, "invalid_request")
    for form, missing in [
        ({"username": "alice", "password": PASSWORD}, "grant_type"),
        ({"grant_type": "password", "password": PASSWORD}, "username"),
        ({"grant_type": "password", "username": "alice", "password": ""}, "password"),
        ({"grant_type": "refresh_token"}, "refresh_token"),
    ]:
        resp = await client.post("/oauth/token", data=form, headers=basic("web"))
        body = await error_of(resp, 400, "invalid_request")
        assert missing in body["error_description"]
    resp = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("web")
    )
    await error_of(resp, 400, "unsupported_grant_type")
    resp = await client.post(
        f"/oauth/token?client_secret=s3cret&password={PASSWORD}",
        data={"grant_type": "password", "username": "alice", "client_id": "web"},
    )
    await error_of(resp, 400, "invalid_request")


async def test_bad_credentials_are_400_invalid_grant(make_client) -> None:
    client = await oauth_client(make_client)
    for username, password in [("alice", "wrong password"), ("nobody", PASSWORD)]:
        resp = await client.post(
            "/oauth/token",
            data={"grant_type": "password", "username": username, "password": password},
            headers=basic("web"),
        )
        body = await error_of(resp, 400, "invalid_grant")
        assert body["error_description"] == "invalid username or password"
        assert "WWW-Authenticate" not in resp.headers


async def test_login_rate_limit_applies_to_the_password_grant(make_client) -> None:
    client = await oauth_client(make_client, TOKEND_LOGIN_FAILURES_PER_USER="2")
    data = {"grant_type": "password", "username": "alice", "password": "wrong password"}
    for _ in range(2):
        await error_of(
            await client.post("/oauth/token", data=data, headers=basic("web")), 400, "invalid_grant"
        )
    resp = await client.post(
        "/oauth/token", data={**data, "password": PASSWORD}, headers=basic("web")
    )
    await error_of(resp, 429, "slow_down")
    assert int(resp.headers["Retry-After"]) > 0


async def test_invalid_scope(make_client) -> None:
    client = await oauth_client(make_client)
    resp = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD, "scope": 'a"b'},
        headers=basic("web"),
    )
    await error_of(resp, 400, "invalid_scope")


# -- refresh_token grant ---------------------------------------------------------------


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_refresh_rotates_and_reuse_is_invalid_grant(make_client, clock) -> None:
    client = await oauth_client(make_client, clock=clock, TOKEND_REFRESH_REUSE_GRACE="5")
    first = await password_grant(client)
    resp = await refresh_grant(client, first["refresh_token"])
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert unverified(second["access_token"])[1]["client_id"] == "web"
    clock.advance(6)
    resp = await refresh_grant(client, first["refresh_token"])
    body = await error_of(resp, 400, "invalid_grant")
    assert "reuse" in body["error_description"]
    # reuse revoked the whole session, the current refresh token included
    await error_of(await refresh_grant(client, second["refresh_token"]), 400, "invalid_grant")


async def test_expired_refresh_token_is_invalid_grant(make_client, clock) -> None:
    client = await oauth_client(
        make_client,
        clock=clock,
        TOKEND_REFRESH_IDLE_TTL="100",
        TOKEND_REFRESH_ABSOLUTE_TTL="200",
    )
    tokens = await password_grant(client)
    clock.advance(101)
    body = await error_of(
        await refresh_grant(client, tokens["refresh_token"]), 400, "invalid_grant"
    )
    assert "expired" in body["error_description"]


async def test_wrong_tokens_at_the_refresh_grant_are_invalid_grant(make_client) -> None:
    client = await oauth_client(make_client, TOKEND_REFRESH_REUSE_GRACE="0")
    web = await password_grant(client)
    # an access token is never a refresh token
    body = await error_of(await refresh_grant(client, web["access_token"]), 400, "invalid_grant")
    assert body["error_description"] == "not a refresh token"
    # another client's refresh token
    body = await error_of(
        await refresh_grant(client, web["refresh_token"], who="cli"), 400, "invalid_grant"
    )
    assert "another client" in body["error_description"]
    # a refresh token from /auth/login belongs to no client
    login = await (
        await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    ).json()
    await error_of(await refresh_grant(client, login["refresh_token"]), 400, "invalid_grant")
    await error_of(await refresh_grant(client, "not.a.jwt"), 400, "invalid_grant")
    # none of the refusals consumed the web client's token
    assert (await refresh_grant(client, web["refresh_token"])).status == 200


async def test_refresh_scope_may_narrow_never_widen(make_client) -> None:
    client = await oauth_client(make_client, TOKEND_REFRESH_REUSE_GRACE="0")
    tokens = await password_grant(client, scope="read write")

    async def no_read_first(**kwargs: Any) -> Any:
        raise AssertionError("the rotation itself judges the scope: no read before it")

    client.app[AUTH].sessions.live_grant = no_read_first
    resp = await refresh_grant(client, tokens["refresh_token"], scope="read write admin")
    body = await error_of(resp, 400, "invalid_scope")
    assert "admin" in body["error_description"]
    # the refused request did not consume the token; a narrower scope is granted
    resp = await refresh_grant(client, tokens["refresh_token"], scope="read")
    assert resp.status == 200, await resp.text()
    narrowed = await resp.json()
    assert narrowed["scope"] == "read"
    assert unverified(narrowed["access_token"])[1]["scope"] == "read"
    assert await me_status(client, narrowed["access_token"]) == 200
    # omitted scope means the original grant (RFC 6749 section 6)
    resp = await refresh_grant(client, narrowed["refresh_token"])
    full = await resp.json()
    assert full["scope"] == "read write"
    assert unverified(full["access_token"])[1]["scope"] == "read write"


async def test_redis_faults_pass_through_as_503(make_client) -> None:
    client = await make_client(
        TOKEND_OAUTH_CLIENTS=CLIENTS, TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    await add_user(client, "alice")  # registration counts in Redis
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    resp = await client.post("/oauth/token", data=data, headers=basic("web"))
    await error_of(resp, 503, "temporarily_unavailable")
    assert resp.headers["Retry-After"].isdigit()


async def test_exhausted_pool_refresh_is_503_and_consumes_nothing(make_client) -> None:
    client = await oauth_client(
        make_client,
        TOKEND_REDIS_POOL_SIZE="1",
        TOKEND_REDIS_POOL_TIMEOUT="0.2",
        TOKEND_REFRESH_REUSE_GRACE="0",
    )
    tokens = await password_grant(client)
    holder = asyncio.create_task(client.app[REDIS].blpop(["tokend-test-never"], timeout=1))
    await asyncio.sleep(0.05)
    resp = await refresh_grant(client, tokens["refresh_token"])
    await error_of(resp, 503, "temporarily_unavailable")
    assert "Retry-After" in resp.headers
    await holder
    assert (await refresh_grant(client, tokens["refresh_token"])).status == 200


# -- revocation (RFC 7009) ---------------------------------------------------------------


async def test_revoke_unknown_or_invalid_token_is_200(make_client) -> None:
    client = await oauth_client(make_client)
    for token in ("garbage", "a.b.c", "x" * 5000):
        resp = await post(client, "/oauth/revoke", token=token)
        assert resp.status == 200 and await resp.read() == b""
    await error_of(await post(client, "/oauth/revoke"), 400, "invalid_request")
    resp = await client.post("/oauth/revoke", data={"token": "garbage"})
    await error_of(resp, 401, "invalid_client")


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_revoking_a_refresh_token_ends_its_session(make_client) -> None:
    client = await oauth_client(make_client)
    first = await password_grant(client)
    second = await (await refresh_grant(client, first["refresh_token"])).json()
    other_session = await password_grant(client)
    # an old refresh token of the session is enough: the whole family goes
    resp = await post(
        client, "/oauth/revoke", token=first["refresh_token"], token_type_hint="refresh_token"
    )
    assert resp.status == 200 and await resp.read() == b""
    await error_of(await refresh_grant(client, second["refresh_token"]), 400, "invalid_grant")
    assert await me_status(client, second["access_token"]) == 401
    assert await me_status(client, first["access_token"]) == 401
    assert await me_status(client, other_session["access_token"]) == 200
    # revoking again is fine
    assert (await post(client, "/oauth/revoke", token=second["refresh_token"])).status == 200


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_revoking_an_access_token_denies_only_it(make_client) -> None:
    client = await oauth_client(make_client)
    tokens = await password_grant(client)
    # a wrong hint widens the search; an unknown hint is ignored
    for hint in ("refresh_token", "id_token"):
        resp = await post(
            client, "/oauth/revoke", token=tokens["access_token"], token_type_hint=hint
        )
        assert resp.status == 200
        assert await me_status(client, tokens["access_token"]) == 401
    # the session and its refresh token live on
    resp = await refresh_grant(client, tokens["refresh_token"])
    assert resp.status == 200
    assert await me_status(client, (await resp.json())["access_token"]) == 200


async def test_another_clients_token_is_refused_with_unauthorized_client(make_client) -> None:
    client = await oauth_client(make_client, TOKEND_REFRESH_REUSE_GRACE="0")
    tokens = await password_grant(client, who="web")
    for token in (tokens["access_token"], tokens["refresh_token"]):
        resp = await post(client, "/oauth/revoke", who="cli", token=token)
        await error_of(resp, 400, "unauthorized_client")
    assert await me_status(client, tokens["access_token"]) == 200
    assert (await refresh_grant(client, tokens["refresh_token"])).status == 200


async def test_any_client_may_revoke_a_login_token(make_client) -> None:
    client = await oauth_client(make_client)
    login = await (
        await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    ).json()
    resp = await post(client, "/oauth/revoke", who="cli", token=login["refresh_token"])
    assert resp.status == 200
    assert await me_status(client, login["access_token"]) == 401
    resp = await client.post("/auth/refresh", headers=bearer(login["refresh_token"]))
    assert resp.status == 401


# -- introspection (RFC 7662) ---------------------------------------------------------------


async def introspect(client: Any, token: str, who: str = "rs", **form: str) -> dict[str, Any]:
    resp = await post(client, "/oauth/introspect", who=who, token=token, **form)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


@pytest.mark.redis_modes()  # smoke: also on cluster and Sentinel
async def test_introspect_active_tokens(make_client) -> None:
    client = await oauth_client(make_client)
    tokens = await password_grant(client, scope="read")
    _, claims = unverified(tokens["access_token"])
    body = await introspect(client, tokens["access_token"])  # another client's token
    assert body == {
        "active": True,
        "token_type": "Bearer",
        "username": "alice",
        "scope": "read",
        "client_id": "web",
        **{k: claims[k] for k in ("sub", "aud", "iss", "exp", "iat", "jti", "sid")},
    }
    _, rclaims = unverified(tokens["refresh_token"])
    body = await introspect(
        client, tokens["refresh_token"], who="web", token_type_hint="access_token"
    )
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert body["scope"] == "read" and body["client_id"] == "web" and body["username"] == "alice"
    assert body["jti"] == rclaims["jti"] and body["sid"] == claims["sid"]
    # through client_secret_post too
    resp = await client.post(
        "/oauth/introspect",
        data={"token": tokens["access_token"], "client_id": "web", "client_secret": "s3cret"},
    )
    assert (await resp.json())["active"] is True


async def test_introspect_inactive_is_only_active_false(make_client, clock) -> None:
    client = await oauth_client(
        make_client, clock=clock, TOKEND_ACCESS_TTL="60", TOKEND_REFRESH_REUSE_GRACE="5"
    )
    tokens = await password_grant(client)
    assert await introspect(client, "garbage") == {"active": False}
    second = await (await refresh_grant(client, tokens["refresh_token"])).json()
    # the previous refresh token is active within the grace only
    assert (await introspect(client, tokens["refresh_token"]))["active"] is True
    clock.advance(6)
    assert await introspect(client, tokens["refresh_token"]) == {"active": False}
    assert (await introspect(client, second["refresh_token"]))["active"] is True
    clock.advance(55)
    assert await introspect(client, second["access_token"]) == {"active": False}  # expired
    fresh = await password_grant(client)
    await post(client, "/oauth/revoke", token=fresh["access_token"])
    assert await introspect(client, fresh["access_token"]) == {"active": False}
    assert (await introspect(client, fresh["refresh_token"]))["active"] is True
    await post(client, "/oauth/revoke", token=fresh["refresh_token"])
    assert await introspect(client, fresh["refresh_token"]) == {"active": False}


async def test_introspect_needs_a_confidential_client(make_client) -> None:
    client = await oauth_client(make_client)
    tokens = await register_and_login(client, "bob")
    resp = await post(client, "/oauth/introspect", who="cli", token=tokens["access_token"])
    body = await error_of(resp, 401, "invalid_client")
    assert "active" not in body
    resp = await client.post("/oauth/introspect", data={"token": tokens["access_token"]})
    await error_of(resp, 401, "invalid_client")
    resp = await post(client, "/oauth/introspect", who="web")
    await error_of(resp, 400, "invalid_request")


async def test_metadata_names_the_endpoints(make_client) -> None:
    client = await oauth_client(make_client)
    meta = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["token_endpoint"].endswith("/oauth/token")
    assert meta["revocation_endpoint"].endswith("/oauth/revoke")
    assert meta["introspection_endpoint"].endswith("/oauth/introspect")
    assert set(meta["grant_types_supported"]) == {"password", "refresh_token"}
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
