"""OpenID Connect Back-Channel Logout 1.0 with tokend as the relying party, against the
Python FakeProvider (tests/support/oidc.py): a real tokend on a real port, real Redis, real
social logins; the provider signs the logout tokens. The end-to-end run with the npm
oidc-provider is at the end. The tests of what is revoked run on Redis Cluster too (every
key of a command in one slot)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.devredis import free_port
from tests.support import TokendTestServer, bearer, register_and_login
from tests.support.oidc import FakeProvider, new_key

CLIENT_ID = "tokend"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
RETURN_TO = "https://app.example.com/done"
VERIFIER = "bcl-verifier-" + "v" * 40
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)
PATH = "/auth/oidc/fake/backchannel-logout"


@dataclass
class World:
    client: TestClient[Any, Any]
    provider: FakeProvider
    browser: aiohttp.ClientSession
    base: str

    async def authorize(self, start: str, **login_claims: Any) -> str:
        """A social login up to the callback URL the provider sends the browser back to."""
        self.provider.login_claims = login_claims
        resp = await self.browser.get(start, allow_redirects=False)
        assert resp.status == 302, await resp.text()
        at_provider = await self.browser.get(resp.headers["Location"], allow_redirects=False)
        assert at_provider.status == 302
        return at_provider.headers["Location"]

    async def login(self, sub: str, sid: str | None = None) -> dict[str, Any]:
        """A social login as provider account ``sub`` in provider session ``sid``."""
        claims = {"sub": sub, **({"sid": sid} if sid else {})}
        callback = await self.authorize(f"{self.base}/auth/oidc/fake/login", **claims)
        done = await self.browser.get(callback, allow_redirects=False)
        assert done.status == 200, await done.text()
        body: dict[str, Any] = await done.json()
        return body

    async def logout(self, token: str) -> aiohttp.ClientResponse:
        return await self.client.post(PATH, data={"logout_token": token})

    async def alive(self, tokens: dict[str, Any]) -> bool:
        """Whether the session of ``tokens`` still works: /auth/me and a refresh (the
        rotated pair is kept in ``tokens``)."""
        me = await self.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        refresh = await self.client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
        assert me.status in (200, 401) and refresh.status in (200, 401)
        assert (me.status == 200) == (refresh.status == 200), (me.status, refresh.status)
        if refresh.status == 200:
            tokens.update(await refresh.json())
        return refresh.status == 200


@pytest.fixture
async def world(
    aiohttp_client: Any, aiohttp_server: Any, make_settings: Any
) -> AsyncIterator[World]:
    provider = FakeProvider.approving(CLIENT_ID)
    server = await aiohttp_server(provider.app)
    provider.issuer = str(server.make_url("")).rstrip("/")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": "secret"}
    settings = make_settings(
        TOKEND_ISSUER=base,
        TOKEND_OIDC_PROVIDERS=json.dumps({"fake": spec}),
        TOKEND_OIDC_RETURN_TO=RETURN_TO,
    )
    client = await aiohttp_client(TokendTestServer(create_app(settings), port=port))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        yield World(client, provider, browser, base)


async def assert_400(resp: aiohttp.ClientResponse, *words: str) -> None:
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "invalid_request"
    for word in words:
        assert word in body["error_description"], body


# --- what is revoked ------------------------------------------------------------------


@pytest.mark.redis_modes("standalone", "cluster")
async def test_sid_token_ends_that_session_only(world: World) -> None:
    first = await world.login("alice", sid="op-session-1")
    second = await world.login("alice", sid="op-session-2")
    other = await world.login("bob", sid="op-session-3")
    resp = await world.logout(world.provider.logout_token(sid="op-session-1", sub="alice"))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.read() == b""
    assert not await world.alive(first)
    assert await world.alive(second)
    assert await world.alive(other)


async def test_sid_only_token(world: World) -> None:
    first = await world.login("alice", sid="op-1")
    twin = await world.login("alice", sid="op-1")  # the same provider session, twice
    second = await world.login("alice", sid="op-2")
    resp = await world.logout(world.provider.logout_token(sid="op-1"))
    assert resp.status == 200, await resp.text()
    assert not await world.alive(first)
    assert not await world.alive(twin)
    assert await world.alive(second)


@pytest.mark.redis_modes("standalone", "cluster")
async def test_sub_only_token_ends_every_session_from_that_provider(world: World) -> None:
    # carol has a password, and links the provider account "carol-at-fake".
    local = await register_and_login(world.client, "carol")
    started = await world.client.post("/auth/oidc/fake/link", headers=bearer(local["access_token"]))
    assert started.status == 200, await started.text()
    callback = await world.authorize(
        (await started.json())["authorization_url"], sub="carol-at-fake"
    )
    linked = await world.browser.get(callback)
    confirm = await world.client.post(
        "/auth/oidc/link/confirm",
        json={"link_code": (await linked.json())["link_code"]},
        headers=bearer(local["access_token"]),
    )
    assert confirm.status == 200, await confirm.text()
    social = [await world.login("carol-at-fake", sid=f"s{i}") for i in range(2)]
    no_sid = await world.login("carol-at-fake")  # a provider that sends no sid
    me = await world.client.get("/auth/me", headers=bearer(social[0]["access_token"]))
    assert (await me.json())["username"] == "carol"  # the same tokend user
    stranger = await world.login("dave", sid="s0")

    resp = await world.logout(world.provider.logout_token(sub="carol-at-fake"))
    assert resp.status == 200, await resp.text()
    for tokens in (*social, no_sid):
        assert not await world.alive(tokens)
    assert await world.alive(local)  # carol's password session did not come from there
    assert await world.alive(stranger)


@pytest.mark.redis_modes("standalone", "cluster")
async def test_login_code_sessions_are_recorded_too(world: World) -> None:
    async def login_code(sid: str) -> str:
        callback = await world.authorize(
            f"{world.base}/auth/oidc/fake/login?return_to={RETURN_TO}&code_challenge={CHALLENGE}",
            sub="erin",
            sid=sid,
        )
        done = await world.browser.get(callback, allow_redirects=False)
        assert done.status == 302, await done.text()
        return parse_qs(urlsplit(done.headers["Location"]).query)["login_code"][0]

    async def exchange(code: str) -> dict[str, Any]:
        resp = await world.client.post(
            "/auth/oidc/exchange", json={"login_code": code, "code_verifier": VERIFIER}
        )
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    redeemed = await exchange(await login_code("op-a"))
    resp = await world.logout(world.provider.logout_token(sid="op-a"))
    assert resp.status == 200
    assert not await world.alive(redeemed)

    # The provider session ends between the callback and the exchange: the session that
    # the exchange starts for it ends at once.
    pending = await login_code("op-b")
    assert (await world.logout(world.provider.logout_token(sid="op-b"))).status == 200
    late = await exchange(pending)
    assert not await world.alive(late)
    assert await world.alive(await exchange(await login_code("op-c")))


# --- refusals: 400 and nothing revoked ------------------------------------------------


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'logout+jwt', 'kid': 'k1'})}.{part(claims)}."


def _forged(provider: FakeProvider) -> str:
    rogue = new_key("EdDSA")
    claims = provider.logout_claims(sid="victim", sub="alice")
    return jwt.encode(claims, rogue, algorithm="EdDSA", headers={"kid": "k1", "typ": "logout+jwt"})


def _refusals() -> dict[str, Any]:
    now = int(time.time())
    sign = FakeProvider.logout_token
    return {
        "forged": (_forged, "signature"),
        "unknown key": (lambda p: sign(p, kid="rogue", sid="victim"), "no provider key"),
        "alg none": (lambda p: _unsigned(p.logout_claims(sid="victim")), "algorithm"),
        "not announced alg": (lambda p: sign(p, kid="r1", sid="victim"), "announces"),
        "expired": (lambda p: sign(p, sid="victim", iat=now - 100, exp=now - 90), "expired"),
        "too old": (lambda p: sign(p, sid="victim", iat=now - 1000, exp=None), "ago"),
        "future": (lambda p: sign(p, sid="victim", iat=now + 600), "not valid yet"),
        "iat string": (lambda p: sign(p, sid="victim", iat=str(now)), "iat"),
        "wrong audience": (lambda p: sign(p, sid="victim", aud="someone-else"), "aud"),
        "wrong issuer": (lambda p: sign(p, sid="victim", iss="https://evil.example"), "iss"),
        "nonce": (lambda p: sign(p, sid="victim", nonce="n-0S6_WzA2Mj"), "nonce"),
        "no events": (lambda p: sign(p, sid="victim", events=None), "events"),
        "other event": (lambda p: sign(p, sid="victim", events={"x": {}}), "events"),
        "event not an object": (lambda p: sign(p, sid="victim", events={EVENT: "yes"}), "events"),
        "neither sid nor sub": (lambda p: sign(p), "neither sid nor sub"),
        "sid not a string": (lambda p: sign(p, sid=7, sub="alice"), "sid"),
        "no jti": (lambda p: sign(p, sid="victim", jti=None), "jti"),
        "typ of an access token": (lambda p: sign(p, sid="victim", typ="at+jwt"), "typ"),
    }


@pytest.mark.parametrize("case", sorted(_refusals()))
async def test_refused_tokens_revoke_nothing(world: World, case: str) -> None:
    world.provider.add_key("EdDSA", "rogue", publish=False)
    world.provider.add_key("RS256", "r1")  # published, but the provider announces EdDSA only
    victim = await world.login("alice", sid="victim")
    make, words = _refusals()[case]
    await assert_400(await world.logout(make(world.provider)), *words)
    assert await world.alive(victim)


async def test_accepted_typ_variants(world: World) -> None:
    for typ in (None, "JWT", "application/logout+jwt"):
        tokens = await world.login("alice", sid=f"t-{typ}")
        resp = await world.logout(world.provider.logout_token(sid=f"t-{typ}", typ=typ))
        assert resp.status == 200, (typ, await resp.text())
        assert not await world.alive(tokens)


@pytest.mark.redis_modes("standalone", "cluster")
async def test_replayed_jti_is_refused(world: World) -> None:
    # sub only: a provider session that ended stays ended (a later login into it would
    # end at once), while the account may log in again.
    first = await world.login("alice", sid="op-1")
    token = world.provider.logout_token(sub="alice")
    assert (await world.logout(token)).status == 200
    assert not await world.alive(first)
    again = await world.login("alice", sid="op-2")
    await assert_400(await world.logout(token), "replay")
    assert await world.alive(again)
    # Another token of the provider with the same jti is a replay as well.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    await assert_400(await world.logout(world.provider.logout_token(sid="op-2", jti=jti)))
    assert await world.alive(again)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"logout_token=",
        b"logout_token=abc",
        b"logout_token=a.b.c",
        b"logout_token=%21%21%21.e30.x",
        b"logout_token=a.b.c&logout_token=a.b.c",
        b"logout_token=\xff\xfe",
        b"other=1",
        b"logout_token=" + b"a" * 20000 + b".b.c",
        b"logout_token=eyJhbGciOiJFZERTQSJ9.WzFd.c2ln",
    ],
)
async def test_malformed_bodies_are_400_json(world: World, body: bytes) -> None:
    victim = await world.login("alice", sid="victim")
    resp = await world.client.post(
        PATH, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    await assert_400(resp)
    assert await world.alive(victim)


async def test_signed_payload_that_is_not_an_object(world: World) -> None:
    key, _ = world.provider.keys["k1"]
    token = jwt.api_jws.encode(b"[1]", key, algorithm="EdDSA", headers={"kid": "k1"})
    await assert_400(await world.logout(token))


async def test_other_media_type_and_unknown_provider(world: World) -> None:
    token = world.provider.logout_token(sid="x")
    resp = await world.client.post(PATH, json={"logout_token": token})
    assert resp.status == 415
    assert (await resp.json())["error"] == "invalid_request"
    resp = await world.client.post(
        "/auth/oidc/nope/backchannel-logout", data={"logout_token": token}
    )
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"


async def test_redis_down_is_503(
    aiohttp_client: Any, aiohttp_server: Any, make_settings: Any, private_redis: Any
) -> None:
    provider = FakeProvider.approving(CLIENT_ID)
    server = await aiohttp_server(provider.app)
    provider.issuer = str(server.make_url("")).rstrip("/")
    spec = {"issuer": provider.issuer, "client_id": CLIENT_ID, "client_secret": "secret"}
    settings = make_settings(
        TOKEND_REDIS_URL=private_redis.url, TOKEND_OIDC_PROVIDERS=json.dumps({"fake": spec})
    )
    client = await aiohttp_client(TokendTestServer(create_app(settings)))
    await register_and_login(client, "zoe")
    private_redis.kill()
    resp = await client.post(PATH, data={"logout_token": provider.logout_token(sid="s")})
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"].isdigit()
    assert (await resp.json())["error"] == "temporarily_unavailable"


# --- end to end with the npm oidc-provider --------------------------------------------

# The provider process and the browser of tests/test_oidc.py (its fixtures, used here).
from tests.test_oidc import MakeWorld, _form_action, make_world, new_browser  # noqa: E402
from tests.test_oidc import provider_ready as provider_ready  # noqa: E402

__all__ = ["make_world", "provider_ready"]


@pytest.mark.slow
async def test_logout_at_oidc_provider_ends_the_tokend_session(
    make_world: MakeWorld, make_listener: Any
) -> None:
    world = await make_world(alg="ES256")
    listener = await make_listener()
    async with asyncio.timeout(10):
        await listener.wait_ready()
    async with new_browser() as browser, new_browser() as elsewhere:
        step = await world.login("alice", browser=browser)
        assert step.status == 200, step.text
        tokens = step.json()
        other = (await world.login("alice", browser=elsewhere)).json()  # another OP session
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert not listener.is_revoked(claims)

        # The user signs out at the provider: its end_session page, then its confirm form.
        discovery = f"{world.provider.issuer}/.well-known/openid-configuration"
        async with browser.get(discovery) as resp:
            end_session = (await resp.json())["end_session_endpoint"]
        page = await world.follow(browser, end_session)
        assert page.status == 200 and "op.logoutForm" in page.text, page.text[:500]
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
        assert xsrf, page.text[:500]
        started = time.monotonic()
        done = await world.follow(
            browser, _form_action(page), data={"xsrf": xsrf.group(1), "logout": "yes"}
        )
        assert done.status == 200, done.text[:500]

        while True:  # the provider has POSTed the logout token before it answers
            refresh = await world.client.post(
                "/auth/refresh", headers=bearer(tokens["refresh_token"])
            )
            if refresh.status == 401 or time.monotonic() - started > 1:
                break
            await asyncio.sleep(0.05)
        assert refresh.status == 401, await refresh.text()
        assert time.monotonic() - started < 1.5
        me = await world.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status == 401
        async with asyncio.timeout(1):
            while not listener.is_revoked(claims):
                await asyncio.sleep(0.01)
        # The other provider session (another browser) keeps its tokend session.
        still = await world.client.post("/auth/refresh", headers=bearer(other["refresh_token"]))
        assert still.status == 200, await still.text()
