"""Documents that arrive in several TCP segments are read whole (defect 10).

aiohttp's ``resp.content.read(n)`` returns what has arrived so far (up to n), not n
bytes. The servers here write a ~20 KB JSON document in four writes with a pause
between them, once chunked and once with a Content-Length: the subscriber's JWKS
fetch and tokend's OIDC discovery and token calls must still get all of it, and a body
over the limit, sent the same way, is still refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientSession, web

from service.clock import FrozenClock
from service.errors import ProviderUnavailable
from service.oidc import MAX_RESPONSE, ProviderClient
from service.settings import OIDCProvider
from tests.support import register_and_login, unverified
from tokend_client import JWKSUnavailable, TokenVerifier
from tokend_client._jwks import MAX_JWKS_BYTES

pytestmark = pytest.mark.security

ISSUER = "http://127.0.0.1:8080"
PADDING = "x" * 20_000


class SlowServer:
    """Serves JSON documents in ``parts`` writes, ``pause`` seconds apart."""

    def __init__(self, *, content_length: bool, parts: int = 4, pause: float = 0.05) -> None:
        self.content_length = content_length
        self.parts = parts
        self.pause = pause
        self.documents: dict[str, Any] = {}
        self.sent: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = json.dumps(self.documents[path]).encode()
        self.sent[path] = len(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.content_length:
            resp.content_length = len(body)
        await resp.prepare(request)
        step = -(-len(body) // self.parts)
        for i in range(0, len(body), step):
            try:
                await resp.write(body[i : i + step])
            except ConnectionResetError:
                break  # the client gave up on an over-limit body
            await asyncio.sleep(self.pause)  # write() has drained already
        await resp.write_eof()
        return resp


@pytest.fixture(params=[False, True], ids=["chunked", "content-length"])
async def slow(request: pytest.FixtureRequest, aiohttp_server: Any) -> tuple[SlowServer, str]:
    server = SlowServer(content_length=request.param)
    running = await aiohttp_server(server.app)
    return server, str(running.make_url("")).rstrip("/")


async def test_a_jwks_in_several_segments_is_read_whole(make_client, slow) -> None:
    server, base = slow
    tokend = await make_client()
    tokens = await register_and_login(tokend)
    jwks = await (await tokend.get("/.well-known/jwks.json")).json()
    server.documents["/jwks.json"] = {"keys": jwks["keys"], "padding": PADDING}
    verifier = TokenVerifier(
        f"{base}/jwks.json", issuer=ISSUER, audience="tokend", min_refetch_interval=0
    )
    try:
        claims = await verifier.verify(tokens["access_token"])
    finally:
        await verifier.close()
    assert claims == unverified(tokens["access_token"])[1]
    assert server.sent["/jwks.json"] > 20_000


async def test_an_oversized_jwks_in_several_segments_is_still_refused(slow) -> None:
    server, base = slow
    server.documents["/jwks.json"] = {"keys": [], "padding": "x" * (MAX_JWKS_BYTES + 10)}
    verifier = TokenVerifier(
        f"{base}/jwks.json", issuer=ISSUER, audience="tokend", min_refetch_interval=0
    )
    try:
        error = await verifier._refresh()  # the fetch's own error (verify() says less)
    finally:
        await verifier.close()
    assert isinstance(error, JWKSUnavailable)
    assert "too large" in str(error)


async def test_oidc_discovery_and_token_in_several_segments_are_read_whole(slow) -> None:
    server, base = slow
    server.documents["/.well-known/openid-configuration"] = {
        "issuer": base,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "padding": PADDING,
    }
    server.documents["/token"] = {
        "access_token": "at",
        "token_type": "Bearer",
        "id_token": "header.payload.signature",
        "padding": PADDING,
    }
    async with ClientSession() as http:
        client = ProviderClient(
            OIDCProvider("slow", base, "client", "secret"), http, clock=FrozenClock()
        )
        doc = await client.discovery()
        assert doc.token_endpoint == f"{base}/token"
        id_token = await client.exchange(code="c", verifier="v", redirect_uri=f"{base}/cb")
    assert id_token == "header.payload.signature"


async def test_an_oversized_oidc_answer_in_several_segments_is_still_refused(slow) -> None:
    server, base = slow
    server.documents["/.well-known/openid-configuration"] = {
        "issuer": base,
        "padding": "x" * (MAX_RESPONSE + 10),
    }
    async with ClientSession() as http:
        client = ProviderClient(
            OIDCProvider("slow", base, "client", "secret"), http, clock=FrozenClock()
        )
        with pytest.raises(ProviderUnavailable, match="more than"):
            await client.discovery()


async def test_a_deeply_nested_jwks_is_unavailable_not_an_error(
    make_client, aiohttp_server
) -> None:
    """json.loads of 5,000 nested arrays raises RecursionError, which is no ValueError:
    the verifier answers JWKSUnavailable (the middleware's 503), as for any bad JWKS."""
    tokend = await make_client()
    tokens = await register_and_login(tokend)
    app = web.Application()
    nested = "[" * 5000 + "]" * 5000

    async def jwks(request: web.Request) -> web.Response:
        return web.Response(text=nested, content_type="application/json")

    app.router.add_get("/jwks.json", jwks)
    server = await aiohttp_server(app)
    verifier = TokenVerifier(str(server.make_url("/jwks.json")), issuer=ISSUER, audience="tokend")
    try:
        with pytest.raises(JWKSUnavailable):
            await verifier.verify(tokens["access_token"])
    finally:
        await verifier.close()
