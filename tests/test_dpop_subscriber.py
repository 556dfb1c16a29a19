"""DPoP (RFC 9449) at the resource server: every subscriber integration (aiohttp, ASGI via
FastAPI, Django's middleware, Django REST framework, Flask) through the one Guard.

Tokens are tokend's own (a real login), re-signed with tokend's signing key with a
``cnf.jkt`` added for the bound ones; proofs come from ``tokend_client.dpop.DPoPKey``.
Each test runs against each integration, in process: the URL the framework sees is its
test client's (``Service.origin``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import django
import httpx
import pytest
from aiohttp import web
from django.conf import settings

from tests.support import register_and_login, sign_like_server, unverified
from tokend_client import CLAIMS_KEY, Subscriber, SubscriberSettings, TokenVerifier
from tokend_client.dpop import DPoPKey

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="tokend-dpop-tests",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from fastapi import Depends, FastAPI
from flask import Flask
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import tokend_client.django as tokend_django
from tokend_client import fastapi as tokend_fastapi
from tokend_client import flask as tokend_flask
from tokend_client import setup as aiohttp_setup
from tokend_client.django import TokendAuthentication, tokend_required

ISSUER = "http://127.0.0.1:8080"
ALGS = 'DPoP algs="ES256 EdDSA RS256 PS256"'
PUBLIC = "https://api.example.com"
INTEGRATIONS = ("aiohttp", "fastapi", "django", "drf", "flask")


# --- the views ---------------------------------------------------------------------------


@tokend_required
def django_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(request.tokend)  # type: ignore[attr-defined, unused-ignore]


class DRFView(APIView):  # type: ignore[misc]
    authentication_classes = [TokendAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        return Response(request.auth)


class DjangoUrls:  # a ROOT_URLCONF
    urlpatterns = [path("protected", django_view)]


class DRFUrls:
    urlpatterns = [path("protected", DRFView.as_view())]


urlpatterns: list[Any] = []  # ROOT_URLCONF when this module configured Django


# --- the services ------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: Any


@dataclass
class Service:
    """One integration's app: ``get(path, headers)``; ``origin`` is the scheme and host
    its framework sees."""

    name: str
    origin: str
    get: Callable[[str, dict[str, str]], Awaitable[Reply]]

    def url(self, path: str = "/protected") -> str:
        return self.origin + path


def _reply(status: int, headers: Any, body: bytes) -> Reply:
    return Reply(status, {k.lower(): v for k, v in headers.items()}, json.loads(body or b"null"))


def _django(name: str, conf: dict[str, str], closing: list[Callable[[], Any]]) -> Service:
    """Django's middleware and ``tokend_required`` ("django"), or DRF's authentication
    class alone ("drf"), under ``settings.TOKEND`` = ``conf``."""
    override = override_settings(
        ROOT_URLCONF=DjangoUrls if name == "django" else DRFUrls,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=["tokend_client.django.TokendMiddleware"] if name == "django" else [],
        REST_FRAMEWORK={
            "UNAUTHENTICATED_USER": None,
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        },
        TOKEND={"ISSUER": ISSUER, "AUDIENCE": "tokend", **conf},
    )
    override.enable()
    closing.append(override.disable)

    def get_sync(path: str, headers: dict[str, str]) -> Reply:
        resp = Client().get(path, headers=headers)
        return _reply(resp.status_code, resp.headers, resp.content)

    async def get(path: str, headers: dict[str, str]) -> Reply:
        return await asyncio.to_thread(get_sync, path, headers)

    return Service(name, "http://testserver", get)


MakeService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client()


@pytest.fixture(params=INTEGRATIONS)
async def make_service(
    request: pytest.FixtureRequest, tokend: Any, aiohttp_client: Any, redis_prefix: str
) -> AsyncIterator[MakeService]:
    """``await make_service(public_url="")``: the integration's protected app."""
    name: str = request.param
    jwks = str(tokend.make_url("/.well-known/jwks.json"))
    closing: list[Callable[[], Any]] = []

    def settings_(public_url: str) -> SubscriberSettings:
        return SubscriberSettings(
            issuer=ISSUER, audience="tokend", jwks_url=jwks, redis=None, public_url=public_url
        )

    async def make(public_url: str = "") -> Service:
        if name == "aiohttp":
            app = web.Application()

            async def handler(req: web.Request) -> web.Response:
                return web.json_response(req[CLAIMS_KEY])

            app.router.add_get("/protected", handler)
            verifier = TokenVerifier(jwks, issuer=ISSUER, audience="tokend")
            aiohttp_setup(app, verifier, public_url=public_url)
            client = await aiohttp_client(app)

            async def get_aiohttp(path: str, headers: dict[str, str]) -> Reply:
                resp = await client.get(path, headers=headers)
                return _reply(resp.status, resp.headers, await resp.read())

            return Service(name, str(client.make_url("")).rstrip("/"), get_aiohttp)
        if name == "fastapi":
            fast = FastAPI()
            subscriber = Subscriber(settings_(public_url), threaded=False)
            tokend_fastapi.install(fast, subscriber)

            @fast.get("/protected")
            async def protected(token: Any = Depends(tokend_fastapi.require_token())) -> Any:  # noqa: B008
                return dict(token)

            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://svc")
            closing.append(http.aclose)
            closing.append(subscriber.close)

            async def get_asgi(path: str, headers: dict[str, str]) -> Reply:
                resp = await http.get(path, headers=headers)
                return _reply(resp.status_code, resp.headers, resp.content)

            return Service(name, "http://svc", get_asgi)
        if name == "flask":
            flask_app = Flask("tokend-dpop-test")
            ext = tokend_flask.Tokend(subscriber=Subscriber(settings_(public_url), threaded=True))
            ext.init_app(flask_app)

            @flask_app.get("/protected")
            @ext.required
            def protected_flask() -> Any:
                return tokend_flask.current_claims()

            def get_flask_sync(path: str, headers: dict[str, str]) -> Reply:
                resp = flask_app.test_client().get(path, headers=headers)
                return _reply(resp.status_code, resp.headers, resp.data)

            async def get_flask(path: str, headers: dict[str, str]) -> Reply:
                return await asyncio.to_thread(get_flask_sync, path, headers)

            return Service(name, "http://localhost", get_flask)
        # django, drf: settings.TOKEND names (the Subscriber follows the test's Redis)
        redis_url = request.getfixturevalue("redis_env")["TOKEND_REDIS_URL"]
        conf = {"JWKS_URL": jwks, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
        return _django(name, {**conf, "PUBLIC_URL": public_url}, closing)

    yield make
    tokend_django.reset()
    for close in reversed(closing):
        result = close()
        if asyncio.iscoroutine(result):
            await result


@pytest.fixture
async def service(make_service: MakeService) -> Service:
    return await make_service()


@pytest.fixture
def key() -> DPoPKey:
    return DPoPKey.generate()


@pytest.fixture
async def plain(tokend: Any) -> str:
    """tokend's own (unbound) access token."""
    tokens = await register_and_login(tokend, "alice")
    token: str = tokens["access_token"]
    return token


@pytest.fixture
def bound(tokend: Any, plain: str, key: DPoPKey) -> str:
    """The same session's token bound to ``key`` (``cnf.jkt``), signed with tokend's key."""
    claims = unverified(plain)[1]
    assert "cnf" not in claims
    return sign_like_server(tokend, {**claims, "cnf": {"jkt": key.jkt}})


def dpop(token: str, proof: str | None) -> dict[str, str]:
    headers = {"Authorization": f"DPoP {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return headers


def refused(reply: Reply, description: str, error: str = "invalid_dpop_proof") -> None:
    """401 invalid_token with ``description``, the DPoP challenge carrying ``error``."""
    assert reply.status == 401, reply
    assert reply.body == {"error": "invalid_token", "error_description": description}, reply
    challenge = reply.headers["www-authenticate"]
    assert challenge == (
        f'Bearer realm="tokend", {ALGS}, error="{error}", error_description="{description}"'
    ), challenge
    if "allow" not in reply.headers:  # (DRF's own 401, with its Allow, has no Cache-Control)
        assert reply.headers["cache-control"] == "no-store"


# --- the tests ---------------------------------------------------------------------------


async def test_a_bound_token_with_a_fresh_proof_is_accepted_each_time(
    service: Service, bound: str, key: DPoPKey
) -> None:
    for _ in range(2):  # the second time the token's verification is cached: proof again
        proof = key.proof("GET", service.url(), access_token=bound)
        reply = await service.get("/protected", dpop(bound, proof))
        assert reply.status == 200, reply
        assert reply.body["cnf"] == {"jkt": key.jkt}
        assert reply.body["sub"] == unverified(bound)[1]["sub"]
    # cached or not, no proof is no access
    refused(await service.get("/protected", dpop(bound, None)), "DPoP proof missing")


async def test_a_bound_token_as_bearer_is_refused(
    service: Service, bound: str, key: DPoPKey
) -> None:
    why = "DPoP-bound token presented as a bearer token"
    expected = f'Bearer realm="tokend", error="invalid_token", error_description="{why}", {ALGS}'
    for _ in range(2):  # not verified before, then verified (cached) by a good DPoP request
        reply = await service.get("/protected", {"Authorization": f"Bearer {bound}"})
        assert (reply.status, reply.body) == (
            401,
            {"error": "invalid_token", "error_description": why},
        ), reply
        assert reply.headers["www-authenticate"] == expected
        proof = key.proof("GET", service.url(), access_token=bound)
        assert (await service.get("/protected", dpop(bound, proof))).status == 200


async def test_a_proof_by_another_key_is_refused(service: Service, bound: str) -> None:
    other = DPoPKey.generate("EdDSA")
    proof = other.proof("GET", service.url(), access_token=bound)
    refused(
        await service.get("/protected", dpop(bound, proof)),
        "DPoP proof signed by another key than the token is bound to",
    )


async def test_a_replayed_proof_is_refused(service: Service, bound: str, key: DPoPKey) -> None:
    proof = key.proof("GET", service.url(), access_token=bound)
    assert (await service.get("/protected", dpop(bound, proof))).status == 200
    refused(
        await service.get("/protected", dpop(bound, proof)),
        "DPoP proof replayed (jti seen before)",
    )


@pytest.mark.parametrize(
    ("method", "path", "why"),
    [
        ("POST", "/protected", "DPoP proof refused: "),
        ("GET", "/other", "DPoP proof refused: "),
    ],
    ids=["htm", "htu"],
)
async def test_a_proof_for_another_method_or_url_is_refused(
    service: Service, bound: str, key: DPoPKey, method: str, path: str, why: str
) -> None:
    proof = key.proof(method, service.url(path), access_token=bound)
    reply = await service.get("/protected", dpop(bound, proof))
    assert reply.status == 401, reply
    assert reply.body["error"] == "invalid_token"
    assert reply.body["error_description"].startswith(why), reply
    assert f'{ALGS}, error="invalid_dpop_proof"' in reply.headers["www-authenticate"]
    # the same request with the right proof passes: the refusal was the htm/htu
    good = key.proof("GET", service.url(), access_token=bound)
    assert (await service.get("/protected", dpop(bound, good))).status == 200


@pytest.mark.parametrize("ath", ["other token", None], ids=["mismatch", "missing"])
async def test_a_proof_without_the_tokens_ath_is_refused(
    service: Service, bound: str, key: DPoPKey, ath: str | None
) -> None:
    proof = key.proof("GET", service.url(), access_token=ath)
    reply = await service.get("/protected", dpop(bound, proof))
    assert reply.status == 401, reply
    assert "ath" in reply.body["error_description"], reply
    assert f'{ALGS}, error="invalid_dpop_proof"' in reply.headers["www-authenticate"]


async def test_the_dpop_scheme_with_an_unbound_token_is_refused(
    service: Service, plain: str, key: DPoPKey
) -> None:
    proof = key.proof("GET", service.url(), access_token=plain)
    refused(
        await service.get("/protected", dpop(plain, proof)),
        "DPoP scheme used with a token not bound to a key",
        error="invalid_token",
    )
    # the same token as Bearer is fine (nothing else changed for bearer tokens)
    assert (await service.get("/protected", {"Authorization": f"Bearer {plain}"})).status == 200


async def test_two_proofs_are_refused(service: Service, bound: str, key: DPoPKey) -> None:
    one, two = (key.proof("GET", service.url(), access_token=bound) for _ in range(2))
    refused(
        await service.get("/protected", dpop(bound, f"{one}, {two}")), "more than one DPoP proof"
    )


async def test_every_401_carries_the_dpop_challenge(service: Service, bound: str) -> None:
    reply = await service.get("/protected", {})
    assert reply.status == 401, reply
    assert reply.headers["www-authenticate"] == f'Bearer realm="tokend", {ALGS}'
    reply = await service.get("/protected", {"Authorization": "Bearer abc.def.ghi"})
    assert reply.status == 401, reply
    assert reply.headers["www-authenticate"].endswith(f", {ALGS}")
    reply = await service.get("/protected", dpop("abc.def.ghi", "x.y.z"))
    assert reply.status == 401, reply
    assert reply.body["error"] == "invalid_token"
    assert f'{ALGS}, error="invalid_token"' in reply.headers["www-authenticate"]


async def test_the_public_url_names_the_service_behind_a_proxy(
    make_service: MakeService, bound: str, key: DPoPKey
) -> None:
    service = await make_service(public_url=PUBLIC + "/")
    internal = key.proof("GET", service.url(), access_token=bound)
    reply = await service.get("/protected", dpop(bound, internal))
    assert reply.status == 401, reply
    assert reply.body["error_description"].startswith("DPoP proof refused: "), reply
    public = key.proof("GET", f"{PUBLIC}/protected", access_token=bound)
    assert (await service.get("/protected", dpop(bound, public))).status == 200


def test_a_proof_is_remembered_as_long_as_its_iat_is_accepted() -> None:
    # verify_proof accepts iat up to now - 300 inclusive: the replay entry outlives that
    from tokend_client._guard import DPoPRequest, Guard

    key = DPoPKey.generate()

    class Verifier:
        exp_leeway = 0

        def cached(self, token: str) -> dict[str, Any]:
            return {"sub": "u", "cnf": {"jkt": key.jkt}}

    guard = Guard(Verifier())  # type: ignore[arg-type]
    issued = 1_800_000_000
    proof = key.proof("GET", f"{PUBLIC}/x", access_token="a.b.c", now=issued)
    request = DPoPRequest("GET", PUBLIC, "/x", [proof])
    for now in (issued, issued + 300):  # the first instant and the last one of its window
        guard.clock = lambda now=now: float(now)
        outcome = guard.check_sync(["DPoP a.b.c"], False, lambda: request)
        if now == issued:
            assert isinstance(outcome, dict)
        else:
            assert not isinstance(outcome, dict), "a replay at iat + 300 s was accepted"
            assert "replayed" in outcome.description


# --- the setting -------------------------------------------------------------------------


def test_public_url_setting() -> None:
    env = {"TOKEND_PUBLIC_URL": " https://API.example.com:8443/orders/ "}
    assert SubscriberSettings.from_env(env).public_url == "https://API.example.com:8443/orders"
    assert SubscriberSettings.from_env({}).public_url == ""
    for bad in ("api.example.com", "ftp://x", "https://x/?q=1", "https://x/#f", "https://u@x"):
        with pytest.raises(ValueError, match="TOKEND_PUBLIC_URL"):
            SubscriberSettings.from_env({"TOKEND_PUBLIC_URL": bad})
    with pytest.raises(ValueError, match="public_url"):
        SubscriberSettings(public_url="https://x:99999")


@pytest.fixture(autouse=True)
def _no_leftover_django_state() -> Iterator[None]:
    yield
    tokend_django.reset()
