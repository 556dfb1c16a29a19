"""OpenID Connect Back-Channel Logout 1.0 with tokend as the OP (workers/backchannel.py):
real Redis, the real tokend app, the delivery worker in-process, and a relying party's
receiver on 127.0.0.1 that checks every logout token as section 2.6 says, with PyJWT
against tokend's JWKS."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.crypto import Sealer
from service.db import make_engine
from service.devredis import free_port
from service.kek import resolve_kek
from service.keys import SqlKeyStore
from service.keyspace import Keyspace
from service.redisconn import close_redis, make_redis
from service.settings import Settings
from tests.conftest import FAST_ARGON2, TEST_KEK
from tests.support import PASSWORD, bearer, register, unverified
from tests.support.http import LoopbackApp
from tests.support.poll import until
from workers.backchannel import EVENT, LogoutSigner, delivery_targets
from workers.webhooks import WebhookWorker
from workers.webhooks_store import WebhookStore

TOKEND = Path(sys.executable).with_name("tokend")
FORM = "application/x-www-form-urlencoded"
pytestmark = pytest.mark.timeout(120)


class RelyingParty(LoopbackApp):
    """A back-channel logout receiver of client ``client_id``: validates each logout
    token (section 2.6) against tokend's JWKS; ``tokens`` the claims of the valid ones,
    ``bad`` why the others failed."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/backchannel-logout"
        self.tokens: list[dict[str, Any]] = []
        self.raw: list[str] = []  # the valid tokens as received
        self.bad: list[str] = []
        self.jwks: jwt.PyJWKSet | None = None
        self.refuse = False  # answer 503 to valid tokens (the logout did not happen)
        self.refused = 0
        self.issuer = ""
        self._jtis: set[str] = set()
        self._runner: web.AppRunner | None = None

    def check(self, token: str) -> dict[str, Any]:
        assert self.jwks is not None
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "logout+jwt":
            raise ValueError(f"typ {header.get('typ')!r}")
        key = next((k for k in self.jwks.keys if k.key_id == header.get("kid")), None)
        if key is None:
            raise ValueError(f"kid {header.get('kid')!r} not in the JWKS")
        if header.get("alg") != key.algorithm_name:
            raise ValueError(f"alg {header.get('alg')!r}, the key's is {key.algorithm_name}")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            audience=self.client_id,
            issuer=self.issuer,
            options={"require": ["iss", "aud", "iat", "exp", "jti", "events"]},
        )
        now = time.time()
        if not isinstance(claims["iat"], int) or not isinstance(claims["exp"], int):
            raise ValueError("iat/exp not numbers")
        if not now - 60 <= claims["iat"] <= now + 5 or claims["exp"] - claims["iat"] > 300:
            raise ValueError(f"iat {claims['iat']} / exp {claims['exp']} off")
        events = claims["events"]
        if not isinstance(events, dict) or events.get(EVENT) != {}:
            raise ValueError(f"events {events!r}")
        if "sid" not in claims and "sub" not in claims:
            raise ValueError("neither sid nor sub")
        if "nonce" in claims:
            raise ValueError("a nonce")
        if claims["jti"] in self._jtis:
            raise ValueError(f"jti {claims['jti']} replayed")
        self._jtis.add(claims["jti"])
        return claims

    async def handle(self, request: web.Request) -> web.Response:
        if not request.headers.get("Content-Type", "").startswith(FORM):
            self.bad.append(f"content type {request.headers.get('Content-Type')!r}")
            return web.Response(status=400)
        form = await request.post()
        try:
            claims = self.check(str(form["logout_token"]))
        except Exception as exc:  # every failure is recorded and fails the test
            self.bad.append(repr(exc))
            return web.json_response({"error": "invalid_request"}, status=400)
        if self.refuse:
            self.refused += 1
            return web.Response(status=503)
        self.tokens.append(claims)
        self.raw.append(str(form["logout_token"]))
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/backchannel-logout", self.handle)


def clients_env(app: RelyingParty, other: RelyingParty, **app_extra: Any) -> str:
    return json.dumps(
        {
            "app": {"secret": "app-secret", "backchannel_logout_uri": app.url, **app_extra},
            "other": {"backchannel_logout_uri": other.url},
            "plain": {},
        }
    )


class Setup:
    """tokend (the app), the delivery worker in-process and two relying parties."""

    def __init__(self, client: Any, settings: Settings, app: RelyingParty, other: RelyingParty):
        self.client = client
        self.settings = settings
        self.app = app
        self.other = other
        self.engine = make_engine(settings.database_url)
        keys = SqlKeyStore(async_sessionmaker(self.engine), Sealer(resolve_kek(settings)))
        self.redis = make_redis(settings.redis, pool_size=32, pool_timeout=5.0)
        targets = delivery_targets(settings, LogoutSigner(keys, settings))
        self.worker = WebhookWorker(redis=self.redis, settings=settings, targets=targets)
        self.task = asyncio.create_task(self.worker.run())

    async def status(self, endpoint: str) -> dict[str, Any]:
        store = WebhookStore(
            self.redis, Keyspace(self.settings.redis_prefix, self.settings.redis_partitions)
        )
        target = next(t for t in self.worker.endpoints if t.id == endpoint)
        return await store.status(target, time.time())

    async def ready(self) -> None:
        """JWKS to the relying parties; the deliverers at their start positions."""
        jwks = await (await self.client.get("/.well-known/jwks.json")).json()
        for rp in (self.app, self.other):
            rp.jwks = jwt.PyJWKSet.from_dict(jwks)
            rp.issuer = self.settings.issuer
        for endpoint in ("bcl-app", "bcl-other"):

            async def positioned(endpoint: str = endpoint) -> bool:
                s = await self.status(endpoint)
                return all(p["position"] is not None for p in s["partitions"])

            await until(positioned, 20, f"{endpoint}'s start positions")

    async def grant(self, client_id: str, username: str = "alice") -> dict[str, Any]:
        data = {"grant_type": "password", "username": username, "password": PASSWORD}
        if client_id == "app":
            data.update(client_id="app", client_secret="app-secret")
        else:
            data["client_id"] = client_id
        resp = await self.client.post("/oauth/token", data=data)
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    async def close(self) -> None:
        await self.worker.close()
        await asyncio.wait_for(self.task, 15)
        await close_redis(self.redis)
        await self.engine.dispose()


@pytest.fixture
async def rps() -> AsyncIterator[tuple[RelyingParty, RelyingParty]]:
    app, other = RelyingParty("app"), RelyingParty("other")
    await app.start()
    await other.start()
    yield app, other
    await app.stop()
    await other.stop()


@pytest.fixture
async def setup(
    rps: tuple[RelyingParty, RelyingParty],
    make_client: Any,
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Setup]:
    app, other = rps
    settings = make_settings(
        TOKEND_OAUTH_CLIENTS=clients_env(app, other),
        TOKEND_REFRESH_REUSE_GRACE="0",
        TOKEND_WEBHOOK_BACKOFF="0.2",
    )
    client = await make_client(settings=settings)
    await register(client, "alice")
    s = Setup(client, settings, app, other)
    try:
        await s.ready()
        yield s
    finally:
        await s.close()
    assert app.bad == [] and other.bad == [], (app.bad, other.bad)


async def test_a_logout_sends_the_sessions_client_one_token_and_no_other_client_any(
    setup: Setup,
) -> None:
    client, app, other = setup.client, setup.app, setup.other
    # sessions of another back-channel client, of a client without one, of no client
    other_tokens = await setup.grant("other")
    plain = await setup.grant("plain")
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    direct = await resp.json()
    mine = await setup.grant("app")
    for tokens in (other_tokens, plain, direct, mine):
        resp = await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
        assert resp.status == 204
    _, claims = unverified(mine["access_token"])
    # one user, one partition: in order, so app's own token comes after anything else
    await until(lambda: len(app.tokens) >= 1, 20, "app's logout token")
    await until(lambda: len(other.tokens) >= 1, 20, "other's logout token")
    await asyncio.sleep(0.5)
    assert [(t["sid"], t["sub"], t["aud"]) for t in app.tokens] == [
        (claims["sid"], claims["sub"], "app")
    ]
    _, other_claims = unverified(other_tokens["access_token"])
    assert [(t["sid"], t["aud"]) for t in other.tokens] == [(other_claims["sid"], "other")]
    status = await setup.status("bcl-app")
    assert status["url"] == app.url and status["dead"] == 0 and status["pending"] == 0


async def test_logout_all_sends_every_backchannel_client_a_sub_only_token(
    setup: Setup,
) -> None:
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    resp = await setup.client.post("/auth/logout-all", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    for rp in (setup.app, setup.other):
        await until(lambda rp=rp: len(rp.tokens) >= 1, 20, f"{rp.client_id}'s token")
    await asyncio.sleep(0.3)
    for rp in (setup.app, setup.other):
        assert len(rp.tokens) == 1, rp.tokens
        assert rp.tokens[0]["sub"] == claims["sub"] and "sid" not in rp.tokens[0]


def assert_one_sub_only_token(rp: RelyingParty, sub: str) -> None:
    """Exactly one logout token reached ``rp`` (valid by RelyingParty.check: signature
    from the JWKS, typ, iss, aud, iat/exp, events, no nonce, a new jti): sub only."""
    assert len(rp.tokens) == 1, rp.tokens
    token = rp.tokens[0]
    assert token["sub"] == sub and "sid" not in token, token
    assert token["aud"] == rp.client_id
    assert token["events"] == {EVENT: {}}


async def test_a_password_change_sends_every_backchannel_client_a_sub_only_token(
    setup: Setup,
) -> None:
    # sessions with both clients; the change is made with app's (that one is kept by
    # tokend, but a sub-only token cannot say so: both clients get one)
    await setup.grant("other")
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    resp = await setup.client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(tokens["access_token"]),
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["revoked_sessions"] >= 1
    for rp in (setup.app, setup.other):
        await until(lambda rp=rp: len(rp.tokens) >= 1, 20, f"{rp.client_id}'s token")
    await asyncio.sleep(0.3)  # nothing more follows
    for rp in (setup.app, setup.other):
        assert_one_sub_only_token(rp, claims["sub"])


async def test_an_admin_disable_sends_every_backchannel_client_a_sub_only_token(
    setup: Setup, redis_env: dict[str, str], tmp_path: Path
) -> None:
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    settings = setup.settings
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "users", "disable", "alice", cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
            **FAST_ARGON2,
            **redis_env,
            "TOKEND_REDIS_PREFIX": settings.redis_prefix,
            "TOKEND_DATABASE_URL": settings.database_url,
            "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
            # the same as the API's (the CLI writes the event, with its stream retention)
            "TOKEND_OAUTH_CLIENTS": clients_env(setup.app, setup.other),
        },
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"disabled": "alice", "sessions_revoked": 1}
    for rp in (setup.app, setup.other):
        await until(lambda rp=rp: len(rp.tokens) >= 1, 20, f"{rp.client_id}'s token")
    await asyncio.sleep(0.3)
    for rp in (setup.app, setup.other):
        assert_one_sub_only_token(rp, claims["sub"])
    # the session is over at tokend too
    resp = await setup.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 401


def readme_receiver(issuer: str, client_id: str, jwks_url: str) -> Callable[[str], dict[str, Any]]:
    """The receiver of the README's back-channel logout example, as written there."""
    jwks = jwt.PyJWKClient(jwks_url)
    seen: set[str] = set()

    def logout_claims(token: str) -> dict[str, Any]:
        if jwt.get_unverified_header(token).get("typ") != "logout+jwt":
            raise jwt.InvalidTokenError("not a logout token")
        key = jwks.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[key.algorithm_name], audience=client_id, issuer=issuer,
            options={"require": ["iat", "exp", "jti", "events", "sub"]},
        )  # fmt: skip
        if EVENT not in claims["events"] or "nonce" in claims or claims["jti"] in seen:
            raise jwt.InvalidTokenError("not a valid logout token")
        seen.add(claims["jti"])
        return claims  # end the session claims["sid"], or without one every session of sub

    return logout_claims


async def test_the_readme_receiver_example_takes_tokends_logout_tokens(setup: Setup) -> None:
    """PyJWT's PyJWKClient against tokend's JWKS accepts both kinds of token once."""
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    await setup.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    await until(lambda: len(setup.app.raw) >= 1, 20, "the session's logout token")
    tokens = await setup.grant("app")
    await setup.client.post("/auth/logout-all", headers=bearer(tokens["access_token"]))
    await until(lambda: len(setup.app.raw) >= 2, 20, "the user's logout token")
    url = str(setup.client.make_url("/.well-known/jwks.json"))
    check = readme_receiver(setup.settings.issuer, "app", url)
    first = await asyncio.to_thread(check, setup.app.raw[0])
    assert (first["sid"], first["sub"]) == (claims["sid"], claims["sub"])
    second = await asyncio.to_thread(check, setup.app.raw[1])
    assert second["sub"] == claims["sub"] and "sid" not in second
    with pytest.raises(jwt.InvalidTokenError):  # a replay
        await asyncio.to_thread(check, setup.app.raw[0])
    wrong = readme_receiver(setup.settings.issuer, "other", url)
    with pytest.raises(jwt.InvalidAudienceError):  # another client's receiver
        await asyncio.to_thread(wrong, setup.app.raw[1])


async def test_refresh_token_reuse_sends_a_logout_token(setup: Setup) -> None:
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    form = {
        "grant_type": "refresh_token",
        "client_id": "app",
        "client_secret": "app-secret",
        "refresh_token": tokens["refresh_token"],
    }
    assert (await setup.client.post("/oauth/token", data=form)).status == 200
    await asyncio.sleep(1.1)  # past the grace (0): the old token replayed is a reuse
    resp = await setup.client.post("/oauth/token", data=form)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    await until(lambda: len(setup.app.tokens) >= 1, 20, "the logout token")
    assert setup.app.tokens[0]["sid"] == claims["sid"]
    assert setup.app.tokens[0]["sub"] == claims["sub"]


async def test_a_receiver_down_gets_the_logout_token_once_it_is_up(setup: Setup) -> None:
    app = setup.app
    await app.stop()
    tokens = await setup.grant("app")
    _, claims = unverified(tokens["access_token"])
    assert (
        await setup.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    ).status == 204

    async def failing() -> bool:
        return (await setup.status("bcl-app"))["failed"] >= 2

    await until(failing, 20, "failed attempts to the receiver that is down")
    assert app.tokens == []
    await app.start()
    await until(lambda: len(app.tokens) >= 1, 30, "the logout token after the restart")
    assert app.tokens[0]["sid"] == claims["sid"]
    status = await setup.status("bcl-app")
    assert status["dead"] == 0 and status["pending"] == 0


async def test_a_dead_letter_is_resent_by_the_cli_with_a_freshly_signed_token(
    rps: tuple[RelyingParty, RelyingParty],
    make_client: Any,
    make_settings: Callable[..., Settings],
    redis_env: dict[str, str],
    tmp_path: Path,
) -> None:
    app, other = rps
    clients = clients_env(app, other)
    env = {"TOKEND_OAUTH_CLIENTS": clients, "TOKEND_WEBHOOK_MAX_ATTEMPTS": "2"}
    settings = make_settings(TOKEND_WEBHOOK_BACKOFF="0.1", **env)
    client = await make_client(settings=settings)
    await register(client, "alice")
    s = Setup(client, settings, app, other)
    try:
        await s.ready()
        app.refuse = True
        tokens = await s.grant("app")
        _, claims = unverified(tokens["access_token"])
        await client.post("/auth/logout", headers=bearer(tokens["access_token"]))

        async def dead() -> bool:
            return (await s.status("bcl-app"))["dead"] == 1

        await until(dead, 20, "the dead letter")
        assert app.refused == 2 and app.tokens == []
    finally:
        await s.close()
    app.refuse = False
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "webhooks", "retry", "bcl-app", cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
            **redis_env,
            **env,
            "TOKEND_REDIS_PREFIX": settings.redis_prefix,
            "TOKEND_DATABASE_URL": settings.database_url,
            "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        },
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["redelivered"] == 1
    # the token of the retry was signed when it was sent: valid (iat now), sid of the session
    assert [t["sid"] for t in app.tokens] == [claims["sid"]]
    assert app.bad == []


async def test_the_metadata_advertises_backchannel_logout(make_client: Any) -> None:
    client = await make_client()
    meta = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True


@pytest.mark.parametrize(
    "uri", ["ftp://rp.example/logout", "not a url", "https://rp.example/logout#frag", 42]
)
async def test_a_bad_backchannel_logout_uri_stops_start_up_with_one_line(
    uri: Any, redis_env: dict[str, str], redis_prefix: str, migrated_sqlite: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env.update(
        {
            **FAST_ARGON2,
            **redis_env,
            "TOKEND_REDIS_PREFIX": redis_prefix,
            "TOKEND_DATABASE_URL": migrated_sqlite,
            "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
            "TOKEND_OAUTH_CLIENTS": json.dumps({"rp": {"backchannel_logout_uri": uri}}),
        }
    )
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "work", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err.decode()
    assert lines[0].startswith("tokend: TOKEND_OAUTH_CLIENTS: client 'rp': ")
    assert "backchannel_logout_uri" in lines[0]
