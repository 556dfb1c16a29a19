"""tokend_client's aiohttp middleware: RFC 6750 answers, claims for handlers, 503 when blind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from service.devredis import free_port
from service.events import key_rotated
from service.sessions import SessionStore
from tests.support import bearer, register_and_login, unverified
from tokend_client import CLAIMS_KEY, RevocationListener, TokenVerifier, setup

ISSUER = "http://127.0.0.1:8080"


async def claims_handler(request: web.Request) -> web.Response:
    return web.json_response(request[CLAIMS_KEY])


async def open_handler(request: web.Request) -> web.Response:
    return web.json_response({"open": True})


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client()


@pytest.fixture
def make_service(tokend: Any, aiohttp_client: Any, redis_prefix: str) -> Any:
    """A protected aiohttp service in-process: ``await make_service(listener=..., **setup)``."""

    async def make(
        listener: RevocationListener | None = None,
        jwks_url: str | None = None,
        wait: bool = True,
        **options: Any,
    ) -> Any:
        verifier = TokenVerifier(
            jwks_url or str(tokend.make_url("/.well-known/jwks.json")),
            issuer=ISSUER,
            audience="tokend",
            min_refetch_interval=0,
        )
        app = web.Application()
        setup(app, verifier, listener, exempt=("/open",), **options)
        app.router.add_get("/protected", claims_handler)
        app.router.add_get("/open", open_handler)
        client = await aiohttp_client(app)
        if listener is not None and wait:
            async with asyncio.timeout(10):
                await listener.wait_ready()
        return client

    return make


def listener_for(prefix: str, **kwargs: Any) -> RevocationListener:
    return RevocationListener("redis://127.0.0.1:6379/0", prefix=prefix, **kwargs)


async def test_valid_token_reaches_the_handler_with_its_claims(tokend, make_service) -> None:
    service = await make_service()
    tokens = await register_and_login(tokend)
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 200
    assert await resp.json() == unverified(tokens["access_token"])[1]


async def test_no_credentials_is_401_without_error_code(make_service) -> None:
    service = await make_service(realm="orders")
    resp = await service.get("/protected")
    assert resp.status == 401
    assert (
        resp.headers["WWW-Authenticate"]
        == 'Bearer realm="orders", DPoP algs="ES256 EdDSA RS256 PS256"'
    )
    assert resp.headers["Cache-Control"] == "no-store"
    assert (await resp.json())["error"] == "unauthorized"
    assert (await service.get("/open")).status == 200  # exempt


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Basic YWxpY2U6cHc=")],
        [("Authorization", "Bearer")],
        [("Authorization", "Bearer ")],
        [("Authorization", "Bearer a b")],
        [("Authorization", "Bearer a,b")],
        [("Authorization", "Bearer abc"), ("Authorization", "Bearer abc")],
    ],
    ids=["basic", "no-token", "empty-token", "two-tokens", "comma", "duplicate-header"],
)
async def test_malformed_authorization_is_400(make_service, headers) -> None:
    service = await make_service()
    resp = await service.get("/protected", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"
    assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]


async def test_token_in_the_url_is_400(tokend, make_service) -> None:
    service = await make_service()
    tokens = await register_and_login(tokend)
    resp = await service.get("/protected", params={"access_token": tokens["access_token"]})
    assert resp.status == 400


async def test_invalid_tokens_are_401_invalid_token(tokend, make_service) -> None:
    service = await make_service()
    tokens = await register_and_login(tokend)
    for token, why in (
        ("abc.def.ghi", "malformed token"),
        (tokens["refresh_token"], "not an access token"),
    ):
        resp = await service.get("/protected", headers=bearer(token))
        assert resp.status == 401
        body = await resp.json()
        assert body == {"error": "invalid_token", "error_description": why}
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="tokend", error="invalid_token", error_description="{why}", '
            'DPoP algs="ES256 EdDSA RS256 PS256"'
        )


async def test_revoked_token_is_401_once_the_event_arrives(
    tokend, make_service, redis_prefix
) -> None:
    listener = listener_for(redis_prefix)
    service = await make_service(listener)
    tokens = await register_and_login(tokend)
    assert (await service.get("/protected", headers=bearer(tokens["access_token"]))).status == 200
    assert (await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))).status == 204
    deadline = time.monotonic() + 10
    while True:
        resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
        if resp.status != 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    assert resp.status == 401
    assert (await resp.json())["error_description"] == "token revoked"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_no_replayed_deny_list_yet_is_503(tokend, make_service, redis_prefix) -> None:
    # nothing listens on this port: the listener never gets to replay
    listener = RevocationListener(f"redis://127.0.0.1:{free_port()}/0", prefix=redis_prefix)
    service = await make_service(listener, wait=False)
    tokens = await register_and_login(tokend)
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"] == "temporarily_unavailable"


async def test_unreachable_jwks_is_503(tokend, make_service) -> None:
    port = free_port()
    service = await make_service(jwks_url=f"http://127.0.0.1:{port}/jwks.json")
    tokens = await register_and_login(tokend)
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"] == "temporarily_unavailable"
    assert str(port) not in await resp.text()  # where the JWKS lives is not for callers


async def test_key_rotated_event_makes_the_verifier_refetch(
    tokend, aiohttp_client, redis_prefix, redis_client
) -> None:
    verifier = TokenVerifier(
        str(tokend.make_url("/.well-known/jwks.json")),
        issuer=ISSUER,
        audience="tokend",
        min_refetch_interval=0,
    )
    listener = listener_for(redis_prefix)
    app = web.Application()
    setup(app, verifier, listener)
    app.router.add_get("/protected", claims_handler)
    service = await aiohttp_client(app)
    async with asyncio.timeout(10):
        await listener.wait_ready()
    tokens = await register_and_login(tokend)
    for _ in range(3):
        await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert verifier.fetches == 1
    # published the way the key-rotation worker publishes it
    store = SessionStore(
        redis_client, prefix=redis_prefix, access_ttl=60, leeway=1, idle_ttl=1, absolute_ttl=1,
        grace=1,
    )  # fmt: skip
    now = time.time()
    await store.publish(key_rotated(reason="manual", at=now, kid="k2", activates_at=now))
    deadline = time.monotonic() + 10
    while listener.applied["key.rotated"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert (await service.get("/protected", headers=bearer(tokens["access_token"]))).status == 200
    assert verifier.fetches == 2
    assert listener.deny_list_size == 0


async def test_a_cached_token_is_refused_once_its_session_is_revoked(
    tokend, aiohttp_client, redis_prefix
) -> None:
    """The verified-token cache answers verify(); the deny list is still checked after it."""
    verifier = TokenVerifier(
        str(tokend.make_url("/.well-known/jwks.json")), issuer=ISSUER, audience="tokend"
    )
    listener = listener_for(redis_prefix)
    app = web.Application()
    setup(app, verifier, listener)
    app.router.add_get("/protected", claims_handler)
    service = await aiohttp_client(app)
    async with asyncio.timeout(10):
        await listener.wait_ready()
    tokens = await register_and_login(tokend)
    headers = bearer(tokens["access_token"])
    for _ in range(2):
        assert (await service.get("/protected", headers=headers)).status == 200
    assert (verifier.cache_hits, verifier.cached_tokens) == (1, 1)
    assert (await tokend.post("/auth/logout", headers=headers)).status == 204
    async with asyncio.timeout(10):
        while listener.deny_list_size == 0:
            await asyncio.sleep(0.005)
    hits = verifier.cache_hits
    resp = await service.get("/protected", headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error_description"] == "token revoked"
    # the token was still valid for the verifier (served from its cache), yet refused
    assert verifier.cache_hits == hits + 1
