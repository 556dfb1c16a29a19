"""Social login end to end: a real tokend against the real npm ``oidc-provider`` (8.8.1).

A browser is played by an aiohttp session (CookieJar(unsafe=True): the provider lives on
127.0.0.1) that fills in the provider's development login and consent forms. Without
Node.js and npm these tests are skipped, and say so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.app import create_app
from service.db import engine_context
from service.devredis import free_port
from service.identities import SqlIdentityStore
from service.keyspace import Keyspace
from service.settings import Settings
from tests.conftest import REDIS_URL
from tests.support import TokendTestServer, bearer, register_and_login

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
CLIENT_ID = "tokend-test"
# Characters that RFC 6749 section 2.3.1 makes the client form-urlencode for Basic auth.
CLIENT_SECRET = "s3cret:with+odd/chars=%&"
APP = "https://app.example.com/done"
RETURN_TO = f"{APP},http://localhost:3000/"
# The application's PKCE-style pair binding a login_code to it (RFC 7636 S256).
VERIFIER = "app-verifier-" + "x" * 40
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def provider_ready() -> Path:
    """The provider folder with node_modules installed; skip plainly without Node.js/npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed: OIDC end-to-end tests not run")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=PROVIDER_DIR,
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )
    return PROVIDER_DIR


class Provider:
    """One oidc-provider process on a port of its own."""

    def __init__(self, port: int, alg: str, redirect_uri: str, auth_method: str) -> None:
        self.port = port
        self.alg = alg
        self.redirect_uri = redirect_uri
        self.auth_method = auth_method
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {
            **os.environ,
            "OIDC_REDIRECT_URI": self.redirect_uri,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_ID_TOKEN_ALG": self.alg,
            "OIDC_AUTH_METHOD": self.auth_method,
        }
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            "provider.js",
            str(self.port),
            cwd=PROVIDER_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=30)
        assert line.decode().startswith("oidc-provider ready"), line

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), timeout=10)


@dataclass
class Step:
    """Where a browser navigation ended: a page, or a redirect out of tokend and the provider."""

    status: int
    url: str
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class World:
    """A tokend and an oidc-provider that know each other."""

    client: TestClient[Any, Any]
    provider: Provider
    settings: Settings
    base: str

    def url(self, path: str) -> str:
        return self.base + path

    async def follow(
        self,
        browser: aiohttp.ClientSession,
        url: str,
        *,
        data: dict[str, str] | None = None,
        stop: Callable[[str], bool] = lambda url: False,
    ) -> Step:
        """Navigate like a browser: follow redirects within tokend and the provider."""
        method = "POST" if data is not None else "GET"
        while True:
            async with browser.request(method, url, data=data, allow_redirects=False) as resp:
                text = await resp.text()
                headers = dict(resp.headers)
                status = resp.status
            location = headers.get("Location")
            if status in (301, 302, 303, 307, 308) and location:
                target = urljoin(url, location)
                origin = f"{urlsplit(target).scheme}://{urlsplit(target).netloc}"
                if origin not in (self.base, self.provider.issuer) or stop(target):
                    return Step(status, target, text, headers)
                url, method, data = target, "GET", None
                continue
            return Step(status, url, text, headers)

    async def login(
        self,
        login_id: str,
        *,
        return_to: str | None = None,
        browser: aiohttp.ClientSession | None = None,
        stop_at_callback: bool = False,
        start_url: str | None = None,
    ) -> Step:
        """A full social login as ``login_id``; ends at tokend's answer (or its callback URL)."""
        own = browser is None
        browser = browser or new_browser()
        try:
            url = start_url or self.url("/auth/oidc/test/login")
            if return_to is not None and start_url is None:
                url += "?" + urlencode({"return_to": return_to, "code_challenge": CHALLENGE})
            stop = (lambda u: "/callback?" in u) if stop_at_callback else (lambda u: False)
            step = await self.follow(browser, url, stop=stop)
            for _ in range(3):
                if 'name="prompt" value="login"' in step.text:
                    form = {"prompt": "login", "login": login_id, "password": "anything"}
                elif 'name="prompt" value="consent"' in step.text:
                    form = {"prompt": "consent"}
                else:
                    return step
                step = await self.follow(browser, _form_action(step), data=form, stop=stop)
            return step
        finally:
            if own:
                await browser.close()


def new_browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _form_action(step: Step) -> str:
    match = re.search(r'<form[^>]*action="([^"]+)"', step.text)
    assert match, step.text[:500]
    return urljoin(step.url, match.group(1))


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


MakeWorld = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(
    provider_ready: Path, aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> AsyncIterator[MakeWorld]:
    """``await make_world(alg=..., start_provider=True, **env)``: tokend on a known port (its
    TOKEND_ISSUER is its own URL, which the provider registers as redirect URI)."""
    providers: list[Provider] = []

    async def make(
        alg: str = "RS256",
        auth_method: str = "client_secret_basic",
        start_provider: bool = True,
        extra_providers: dict[str, Any] | None = None,
        **env: str,
    ) -> World:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        provider = Provider(free_port(), alg, f"{base}/auth/oidc/test/callback", auth_method)
        providers.append(provider)
        spec = {
            "test": {
                "issuer": provider.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            },
            **(extra_providers or {}),
        }
        settings = make_settings(
            TOKEND_ISSUER=base,
            TOKEND_OIDC_PROVIDERS=json.dumps(spec),
            TOKEND_OIDC_RETURN_TO=RETURN_TO,
            **env,
        )
        if start_provider:
            await provider.start()
        client = await aiohttp_client(TokendTestServer(create_app(settings), port=port))
        assert str(client.make_url("/")).rstrip("/") == base
        return World(client, provider, settings, base)

    yield make
    for provider in providers:
        await provider.stop()


def _verify_with_jwks(world: World, token: str) -> dict[str, Any]:
    """What another service does with tokend's token: the JWKS and nothing else (blocking)."""
    jwks = jwt.PyJWKClient(world.url("/.well-known/jwks.json"), cache_keys=False)
    key = jwks.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=[key.algorithm_name], audience="tokend", issuer=world.base
    )
    return claims


async def _identities(world: World, access_token: str) -> list[dict[str, Any]]:
    resp = await world.client.get("/auth/identities", headers=bearer(access_token))
    assert resp.status == 200, await resp.text()
    body: list[dict[str, Any]] = (await resp.json())["identities"]
    return body


# --- the happy paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "auth_method"),
    [
        ("RS256", "client_secret_basic"),
        ("ES256", "client_secret_basic"),
        ("EdDSA", "client_secret_post"),
    ],
)
async def test_login_returns_tokend_tokens(
    make_world: MakeWorld, alg: str, auth_method: str
) -> None:
    world = await make_world(alg=alg, auth_method=auth_method)
    discovery = f"{world.provider.issuer}/.well-known/openid-configuration"
    async with aiohttp.ClientSession() as http, http.get(discovery) as r:
        doc = await r.json()
    # The provider really signs ID tokens with this algorithm and nothing else.
    assert doc["id_token_signing_alg_values_supported"] == [alg]
    assert doc["token_endpoint_auth_methods_supported"] == [auth_method]

    step = await world.login("alice")
    assert step.status == 200, step.text
    body = step.json()
    assert set(body) >= {"access_token", "refresh_token", "expires_in", "refresh_expires_in"}
    assert body["token_type"] == "Bearer"
    assert step.headers["Authorization"] == f"Bearer {body['access_token']}"
    assert step.headers["X-Refresh-Token"] == body["refresh_token"]
    assert "no-store" in step.headers["Cache-Control"]

    claims = await asyncio.to_thread(_verify_with_jwks, world, body["access_token"])
    assert claims["sub"] and claims["sid"]
    me = await world.client.get("/auth/me", headers=bearer(body["access_token"]))
    assert me.status == 200
    assert (await me.json())["username"] == "alice"
    [identity] = await _identities(world, body["access_token"])
    assert identity["provider"] == "test"
    assert identity["issuer"] == world.provider.issuer
    assert identity["subject"] == "alice"
    assert identity["email"] == "alice@example.com"
    # tokend's own refresh works on the session the social login started.
    refreshed = await world.client.post("/auth/refresh", headers=bearer(body["refresh_token"]))
    assert refreshed.status == 200, await refreshed.text()


async def test_login_code_is_redeemed_once(make_world: MakeWorld) -> None:
    world = await make_world()
    step = await world.login("alice", return_to=f"{APP}?tab=2")
    assert step.status == 302
    assert step.url.startswith(APP + "?")
    query = _query(step.url)
    assert query["tab"] == "2"
    assert set(query) == {"tab", "login_code"}  # no token ever travels in the URL
    assert "no-store" in step.headers["Cache-Control"]

    redeem = {"login_code": query["login_code"], "code_verifier": VERIFIER}
    first = await world.client.post("/auth/oidc/exchange", json=redeem)
    assert first.status == 200, await first.text()
    body = await first.json()
    assert first.headers["Authorization"] == f"Bearer {body['access_token']}"
    claims = await asyncio.to_thread(_verify_with_jwks, world, body["access_token"])
    assert claims["sub"]

    again = await world.client.post("/auth/oidc/exchange", json=redeem)
    assert again.status == 400
    assert (await again.json())["error"] == "invalid_grant"
    unknown = await world.client.post(
        "/auth/oidc/exchange", json={"login_code": "nope", "code_verifier": VERIFIER}
    )
    assert unknown.status == 400
    assert (await unknown.json())["error"] == "invalid_grant"


async def test_same_subject_maps_to_same_user(make_world: MakeWorld) -> None:
    world = await make_world()
    first = (await world.login("alice")).json()
    second = (await world.login("alice")).json()
    other = (await world.login("zed")).json()
    sub = lambda t: jwt.decode(t["access_token"], options={"verify_signature": False})["sub"]  # noqa: E731
    assert sub(first) == sub(second) != sub(other)
    assert len(await _identities(world, second["access_token"])) == 1


async def test_email_match_never_links_an_existing_account(make_world: MakeWorld) -> None:
    world = await make_world()
    local = await register_and_login(world.client, "bob")
    mailbox = await register_and_login(world.client, "bob@example.com")
    social = (await world.login("bob")).json()  # email bob@example.com, preferred_username bob

    me = await world.client.get("/auth/me", headers=bearer(social["access_token"]))
    new_user = await me.json()
    local_sub = jwt.decode(local["access_token"], options={"verify_signature": False})["sub"]
    mailbox_sub = jwt.decode(mailbox["access_token"], options={"verify_signature": False})["sub"]
    assert new_user["sub"] not in (local_sub, mailbox_sub)
    assert new_user["username"].startswith("bob-")
    assert await _identities(world, local["access_token"]) == []
    assert await _identities(world, mailbox["access_token"]) == []
    listing = await world.client.get("/auth/identities", headers=bearer(social["access_token"]))
    assert (await listing.json())["has_password"] is False


# --- refusals ---------------------------------------------------------------------------


async def _sessions(world: World, access_token: str) -> int:
    resp = await world.client.get("/auth/sessions", headers=bearer(access_token))
    return len((await resp.json())["sessions"])


async def test_replayed_state_is_refused(make_world: MakeWorld) -> None:
    world = await make_world()
    async with new_browser() as browser:
        step = await world.login("alice", browser=browser, stop_at_callback=True)
        assert step.url.startswith(world.url("/auth/oidc/test/callback?"))
        assert {"code", "state", "iss"} <= set(_query(step.url))
        first = await world.follow(browser, step.url)
        assert first.status == 200, first.text
        tokens = first.json()
        replay = await world.follow(browser, step.url)
    assert replay.status == 400
    assert replay.json()["error"] == "invalid_request"
    assert "state" in replay.json()["error_description"]
    assert await _sessions(world, tokens["access_token"]) == 1


async def test_callback_in_another_browser_is_refused(make_world: MakeWorld) -> None:
    world = await make_world()
    step = await world.login("alice", stop_at_callback=True)  # that browser is gone now
    async with new_browser() as victim:
        answer = await world.follow(victim, step.url)
    assert answer.status == 400
    assert "another browser" in answer.json()["error_description"]


async def test_wrong_nonce_is_refused(make_world: MakeWorld) -> None:
    world = await make_world()
    async with new_browser() as browser:
        step = await world.login("mallory", browser=browser, stop_at_callback=True)
        state = _query(step.url)["state"]
        key = Keyspace(world.settings.redis_prefix).oidc_state(state)
        redis = aiohttp_redis()
        try:
            record = json.loads(await redis.get(key))
            record["nonce"] = "not-the-nonce-the-provider-saw"
            await redis.set(key, json.dumps(record), ex=600)
        finally:
            await redis.aclose()
        answer = await world.follow(browser, step.url)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "nonce" in answer.json()["error_description"]
    async with engine_context(world.settings.database_url) as engine:
        store = SqlIdentityStore(async_sessionmaker(engine))
        assert await store.user_for(world.provider.issuer, "mallory") is None


def aiohttp_redis() -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(REDIS_URL, decode_responses=True)


async def test_denied_consent(make_world: MakeWorld) -> None:
    world = await make_world()
    for return_to in (None, APP):
        async with new_browser() as browser:
            url = world.url("/auth/oidc/test/login")
            if return_to:
                url += "?" + urlencode({"return_to": return_to, "code_challenge": CHALLENGE})
            page = await world.follow(browser, url)
            abort = urljoin(page.url, re.search(r'href="([^"]*abort[^"]*)"', page.text).group(1))  # type: ignore[union-attr]
            answer = await world.follow(browser, abort)
        if return_to is None:
            assert answer.status == 400
            assert answer.json()["error"] == "access_denied"
        else:
            assert answer.status == 302
            query = _query(answer.url)
            assert answer.url.startswith(APP + "?")
            assert query["error"] == "access_denied"
            assert "login_code" not in query


async def test_provider_down_at_login(make_world: MakeWorld) -> None:
    world = await make_world(start_provider=False)  # nothing listens on its port
    health = await world.client.get("/healthz")
    assert health.status == 200  # tokend starts without its providers
    resp = await world.client.get("/auth/oidc/test/login", allow_redirects=False)
    assert resp.status == 502
    body = await resp.json()
    assert body["error"] == "temporarily_unavailable"
    assert "test" in body["error_description"]
    assert resp.headers["Retry-After"]


async def test_provider_down_at_callback(make_world: MakeWorld) -> None:
    world = await make_world()
    async with new_browser() as browser:
        plain = await world.login("alice", browser=browser, stop_at_callback=True)
        redirected = await world.login(
            "alice", browser=browser, return_to=APP, stop_at_callback=True
        )
        await world.provider.stop()
        answer = await world.follow(browser, plain.url)
        assert answer.status == 502
        assert answer.json()["error"] == "temporarily_unavailable"
        answer = await world.follow(browser, redirected.url)
    assert answer.status == 302
    query = _query(answer.url)
    assert query["error"] == "temporarily_unavailable"
    assert "login_code" not in query


async def test_state_of_another_provider(make_world: MakeWorld) -> None:
    other = {"issuer": "http://127.0.0.1:9", "client_id": "x", "client_secret": "y"}
    world = await make_world(extra_providers={"other": other})
    async with new_browser() as browser:
        step = await world.login("alice", browser=browser, stop_at_callback=True)
        foreign = step.url.replace("/auth/oidc/test/callback", "/auth/oidc/other/callback")
        answer = await world.follow(browser, foreign)
        assert answer.status == 400
        assert "another provider" in answer.json()["error_description"]
        # The state was burned by that attempt: the real callback fails too.
        answer = await world.follow(browser, step.url)
        assert answer.status == 400


# --- identities -------------------------------------------------------------------------


async def test_identities_and_the_unlink_rule(make_world: MakeWorld) -> None:
    world = await make_world()
    social = (await world.login("alice")).json()
    refused = await world.client.delete(
        "/auth/identities/test", headers=bearer(social["access_token"])
    )
    assert refused.status == 409
    body = await refused.json()
    assert body["error"] == "conflict"
    assert "last login method" in body["error_description"]
    assert len(await _identities(world, social["access_token"])) == 1

    # A password user links the provider account "carol", then unlinks it.
    local = await register_and_login(world.client, "carol-local")
    started = await world.client.post("/auth/oidc/test/link", headers=bearer(local["access_token"]))
    assert started.status == 200, await started.text()
    url = (await started.json())["authorization_url"]
    # tokend's own URL with a one-time ticket: the browser's top-level visit binds the flow.
    assert url.startswith(world.url("/auth/oidc/test/link/start?ticket="))
    callback = await world.login("carol", start_url=url)
    assert callback.status == 200, callback.text
    pending = callback.json()
    assert set(pending) == {"link_code", "provider"}
    assert await _identities(world, local["access_token"]) == []  # the callback links nothing
    linked = await world.client.post(
        "/auth/oidc/link/confirm",
        json={"link_code": pending["link_code"]},
        headers=bearer(local["access_token"]),
    )
    assert linked.status == 200, await linked.text()
    assert await linked.json() == {"linked": {"provider": "test", "issuer": world.provider.issuer}}
    [identity] = await _identities(world, local["access_token"])
    assert identity["subject"] == "carol"
    # Logging in at the provider as carol now means the password user.
    via_provider = (await world.login("carol")).json()
    me = await world.client.get("/auth/me", headers=bearer(via_provider["access_token"]))
    assert (await me.json())["username"] == "carol-local"
    # Alice's provider account is someone else's: linking it is refused.
    again = await world.client.post("/auth/oidc/test/link", headers=bearer(local["access_token"]))
    alices = await world.login("alice", start_url=(await again.json())["authorization_url"])
    conflict = await world.client.post(
        "/auth/oidc/link/confirm",
        json={"link_code": alices.json()["link_code"]},
        headers=bearer(local["access_token"]),
    )
    assert conflict.status == 409

    gone = await world.client.delete("/auth/identities/test", headers=bearer(local["access_token"]))
    assert gone.status == 204
    assert await _identities(world, local["access_token"]) == []
    missing = await world.client.delete(
        "/auth/identities/test", headers=bearer(local["access_token"])
    )
    assert missing.status == 404
    anonymous = await world.client.get("/auth/identities")
    assert anonymous.status == 401
