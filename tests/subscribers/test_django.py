"""tokend_client.django against a real tokend and Redis: the middleware (sync and async
paths), ``tokend_required``, the DRF authentication class, and examples/django_service.py
under gunicorn with --preload.

Django is configured once per process (below) and each test overrides its settings. The
test's tokend runs on the test's event loop, so the sync Client (whose path may block on
a JWKS fetch) always runs in a thread; the AsyncClient runs on the loop (the async path
must not block it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import django
import pytest
from django.conf import settings

from service.devredis import free_port
from tests.support import PASSWORD, REDIS_URL, bearer, register, register_and_login, unverified

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="tokend-django-tests",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import tokend_client.django as tokend_django
from tokend_client.django import TokendAuthentication, TokendUser, tokend_required

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_service.py"
ISSUER = "http://127.0.0.1:8080"
START_TIMEOUT = 20
MIDDLEWARE = ["tokend_client.django.TokendMiddleware"]
DRF = {
    "UNAUTHENTICATED_USER": None,  # no django.contrib.auth here
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}


# --- the project's views ----------------------------------------------------------------


def claims_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"claims": request.tokend})  # type: ignore[attr-defined, unused-ignore]


@tokend_required
def sync_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"view": "sync", "claims": request.tokend})  # type: ignore[attr-defined, unused-ignore]


@tokend_required()
async def async_view(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    return JsonResponse({"view": "async", "claims": request.tokend})  # type: ignore[attr-defined, unused-ignore]


@tokend_required(scope="orders:read")
def orders_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"orders": [], "sub": request.tokend["sub"]})  # type: ignore[attr-defined, unused-ignore]


@tokend_required(scope="orders:read")
async def async_orders_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"orders": [], "sub": request.tokend["sub"]})  # type: ignore[attr-defined, unused-ignore]


class DRFView(APIView):  # type: ignore[misc]
    authentication_classes = [TokendAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        user = request.user
        assert isinstance(user, TokendUser)
        return Response({"sub": user.sub, "sid": request.auth["sid"], "user": str(user)})


urlpatterns = [
    path("claims", claims_view),
    path("sync", sync_view),
    path("async", async_view),
    path("orders", orders_view),
    path("async-orders", async_orders_view),
    path("drf", DRFView.as_view()),
]


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client(TOKEND_OAUTH_CLIENTS='{"cli": {}}')


@pytest.fixture
def conf(tokend: Any, redis_prefix: str) -> dict[str, Any]:
    """settings.TOKEND for a subscriber of the test's tokend."""
    return {
        "ISSUER": ISSUER,
        "AUDIENCE": "tokend",
        "JWKS_URL": str(tokend.make_url("/.well-known/jwks.json")),
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "JWKS_MIN_REFETCH": 0,
    }


@pytest.fixture
def configure(conf: dict[str, Any]) -> Iterator[Callable[..., None]]:
    """``configure(middleware=True, **TOKEND)``: this test's settings; the process's
    Subscriber is stopped afterwards."""
    applied: list[Any] = []

    def apply(middleware: bool = True, **tokend: Any) -> None:
        override = override_settings(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=MIDDLEWARE if middleware else [],
            REST_FRAMEWORK=DRF,
            TOKEND={**conf, **tokend},
        )
        override.enable()
        applied.append(override)

    apply()
    yield apply
    tokend_django.reset()
    for override in reversed(applied):
        override.disable()


async def get(mode: str, url: str, token: str | None = None, **headers: str) -> Any:
    """GET through Django's Client in a thread ("sync") or its AsyncClient ("async")."""
    if token is not None:
        headers.update(bearer(token))
    if mode == "sync":
        return await asyncio.to_thread(lambda: Client().get(url, headers=headers))
    return await AsyncClient().get(url, headers=headers)


def answer(resp: Any) -> tuple[int, Any, str | None, str | None]:
    """Status, JSON body, WWW-Authenticate and Cache-Control of a response."""
    return (
        resp.status_code,
        resp.json(),
        resp.headers.get("WWW-Authenticate"),
        resp.headers.get("Cache-Control"),
    )


async def scoped_token(tokend: Any, scope: str) -> str:
    """An access token with ``scope``, from the password grant of the public client."""
    await register(tokend, "bob")
    form = {"grant_type": "password", "username": "bob", "password": PASSWORD}
    form.update(client_id="cli", scope=scope)
    resp = await tokend.post("/oauth/token", data=form)
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["access_token"]
    assert unverified(token)[1]["scope"] == scope
    return token


async def logout(tokend: Any, token: str) -> None:
    resp = await tokend.post("/auth/logout", headers=bearer(token))
    assert resp.status == 204


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# --- the middleware and the decorator -----------------------------------------------------


@MODES
@pytest.mark.parametrize("view", ["sync", "async"])
async def test_a_valid_token_reaches_sync_and_async_views(tokend, configure, mode, view) -> None:
    tokens = await register_and_login(tokend)
    claims = unverified(tokens["access_token"])[1]
    resp = await get(mode, f"/{view}", tokens["access_token"])
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"view": view, "claims": claims}
    resp = await get(mode, "/claims", tokens["access_token"])
    assert resp.json() == {"claims": claims}


@MODES
async def test_no_credentials_leaves_none_and_required_views_answer_401(configure, mode) -> None:
    configure(REALM="orders")
    resp = await get(mode, "/claims")
    assert (resp.status_code, resp.json()) == (200, {"claims": None})
    for url in ("/sync", "/async"):
        assert answer(await get(mode, url)) == (
            401,
            {"error": "unauthorized", "error_description": "authentication required"},
            'Bearer realm="orders", DPoP algs="ES256 EdDSA RS256 PS256"',
            "no-store",
        )


@MODES
@pytest.mark.parametrize(
    ("header", "description"),
    [
        ("Basic YWxpY2U6cHc=", "Authorization must use the Bearer or DPoP scheme"),
        ("Bearer", "Bearer scheme without a token"),
        ("Bearer a b", "Authorization must be 'Bearer <one token>'"),
        ("Bearer abc,Bearer abc", "more than one Authorization header"),
    ],
    ids=["basic", "no-token", "two-tokens", "duplicate-header-joined"],
)
async def test_a_malformed_authorization_is_400(configure, mode, header, description) -> None:
    resp = await get(mode, "/claims", Authorization=header)  # even on an undecorated view
    assert answer(resp) == (
        400,
        {"error": "invalid_request", "error_description": description},
        f'Bearer realm="tokend", error="invalid_request", error_description="{description}"',
        "no-store",
    )


@MODES
async def test_a_token_in_the_url_is_400(tokend, configure, mode) -> None:
    tokens = await register_and_login(tokend)
    resp = await get(mode, f"/claims?access_token={tokens['access_token']}")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"


@MODES
async def test_invalid_tokens_are_401_invalid_token(tokend, configure, mode) -> None:
    tokens = await register_and_login(tokend)
    for token, why in (
        ("abc.def.ghi", "malformed token"),
        (tokens["refresh_token"], "not an access token"),
    ):
        assert answer(await get(mode, "/claims", token)) == (
            401,
            {"error": "invalid_token", "error_description": why},
            f'Bearer realm="tokend", error="invalid_token", error_description="{why}", '
            'DPoP algs="ES256 EdDSA RS256 PS256"',
            "no-store",
        )


@MODES
async def test_a_missing_scope_is_403_insufficient_scope(tokend, configure, mode) -> None:
    url = "/orders" if mode == "sync" else "/async-orders"
    tokens = await register_and_login(tokend)  # no scope
    assert answer(await get(mode, url, tokens["access_token"])) == (
        403,
        {"error": "insufficient_scope", "error_description": "token lacks scope"},
        'Bearer realm="tokend", error="insufficient_scope", '
        'error_description="token lacks scope", scope="orders:read"',
        "no-store",
    )
    token = await scoped_token(tokend, "orders:read")
    resp = await get(mode, url, token)
    assert (resp.status_code, resp.json()["orders"]) == (200, [])


@MODES
async def test_a_logout_is_refused_within_a_second(tokend, configure, mode) -> None:
    tokens = await register_and_login(tokend)
    token = tokens["access_token"]
    assert (await get(mode, "/sync", token)).status_code == 200
    await logout(tokend, token)
    started = time.monotonic()
    while (resp := await get(mode, "/sync", token)).status_code == 200:
        assert time.monotonic() - started < 1, "still accepted a second after the logout"
        await asyncio.sleep(0.01)
    assert answer(resp) == (
        401,
        {"error": "invalid_token", "error_description": "token revoked"},
        'Bearer realm="tokend", error="invalid_token", error_description="token revoked", '
        'DPoP algs="ES256 EdDSA RS256 PS256"',
        "no-store",
    )


@MODES
async def test_no_replayed_deny_list_yet_is_503(tokend, configure, mode) -> None:
    # nothing listens there: the listener never replays
    configure(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FIRST_WAIT=0.2)
    tokens = await register_and_login(tokend)
    resp = await get(mode, "/sync", tokens["access_token"])
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "1")
    assert resp.json() == {
        "error": "temporarily_unavailable",
        "error_description": "revocation list not loaded yet",
    }
    health = tokend_django.health_view(Client().get("/claims").wsgi_request)
    assert health.status_code == 503


@MODES
async def test_require_answers_401_everywhere_but_exempt_paths(tokend, configure, mode) -> None:
    configure(REQUIRE=True, EXEMPT=["/claims"])
    resp = await get(mode, "/claims", "abc.def.ghi")  # exempt: not even looked at
    assert (resp.status_code, resp.json()) == (200, {"claims": None})
    resp = await get(mode, "/drf")
    assert answer(resp)[:3] == (
        401,
        {"error": "unauthorized", "error_description": "authentication required"},
        'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"',
    )
    tokens = await register_and_login(tokend)
    assert (await get(mode, "/sync", tokens["access_token"])).status_code == 200


@MODES
async def test_the_decorator_checks_the_token_without_the_middleware(
    tokend, configure, mode
) -> None:
    configure(middleware=False)
    tokens = await register_and_login(tokend)
    claims = unverified(tokens["access_token"])[1]
    for url in ("/sync", "/async"):
        resp = await get(mode, url, tokens["access_token"])
        assert (resp.status_code, resp.json()["claims"]) == (200, claims)
        resp = await get(mode, url, "abc.def.ghi")
        assert (resp.status_code, resp.json()["error"]) == (401, "invalid_token")
        assert (await get(mode, url)).headers[
            "WWW-Authenticate"
        ] == 'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"'
    await logout(tokend, tokens["access_token"])
    async with asyncio.timeout(5):
        while (await get(mode, "/sync", tokens["access_token"])).status_code == 200:
            await asyncio.sleep(0.01)


# --- Django REST framework --------------------------------------------------------------


@pytest.mark.parametrize("middleware", [True, False], ids=["middleware", "alone"])
async def test_drf_authentication(tokend, configure, middleware) -> None:
    configure(middleware=middleware)
    tokens = await register_and_login(tokend)
    claims = unverified(tokens["access_token"])[1]
    resp = await get("sync", "/drf", tokens["access_token"])
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"sub": claims["sub"], "sid": claims["sid"], "user": claims["sub"]}

    resp = await get("sync", "/drf")  # IsAuthenticated: DRF's own 401, with the challenge
    assert (resp.status_code, resp.headers["WWW-Authenticate"]) == (
        401,
        'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"',
    )

    resp = await get("sync", "/drf", "abc.def.ghi")
    assert answer(resp)[:3] == (
        401,
        {"error": "invalid_token", "error_description": "malformed token"},
        'Bearer realm="tokend", error="invalid_token", error_description="malformed token", '
        'DPoP algs="ES256 EdDSA RS256 PS256"',
    )
    resp = await get("sync", "/drf", Authorization="Basic YWxpY2U6cHc=")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in resp.headers["WWW-Authenticate"]


async def test_drf_authentication_is_503_before_the_replay(tokend, configure) -> None:
    configure(middleware=False, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FIRST_WAIT=0.2)
    tokens = await register_and_login(tokend)
    resp = await get("sync", "/drf", tokens["access_token"])
    assert (resp.status_code, resp.headers["Retry-After"]) == (503, "1")
    assert resp.json()["error"] == "temporarily_unavailable"


def test_importing_the_module_does_not_import_rest_framework() -> None:
    code = (
        "import sys\n"
        "sys.modules['rest_framework'] = None  # as if not installed\n"
        "import tokend_client.django as d\n"
        "assert 'rest_framework' not in sys.modules or sys.modules['rest_framework'] is None\n"
        "try:\n"
        "    d.TokendAuthentication\n"
        "except ImportError:\n"
        "    print('no drf')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "no drf\n", "")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tokend_client.django; print('rest_framework' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout) == (0, "False\n"), out.stderr


# --- examples/django_service.py under gunicorn --------------------------------------------


@pytest.fixture
async def service(tokend: Any, redis_prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    """The example with PRELOAD=1 and two workers, started; stopped with SIGTERM after."""
    port = free_port()
    log_path = tmp_path / "django_service.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
        "WORKERS": "2",
        "PRELOAD": "1",
        "TOKEND_JWKS_URL": str(tokend.make_url("/.well-known/jwks.json")),
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_ISSUER": ISSUER,
        "TOKEND_AUDIENCE": "tokend",
    }
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), env=env, cwd=str(ROOT), stdout=log, stderr=log
        )
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.returncode is None, log_path.read_text()
            try:
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        yield proc, http, base, log_path
    finally:
        await http.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_example_under_gunicorn_preload_follows_revocations_in_every_worker(
    tokend, service
) -> None:
    proc, http, base, log_path = service
    tokens = await register_and_login(tokend)
    headers = bearer(tokens["access_token"])
    claims = unverified(tokens["access_token"])[1]

    async def burst() -> list[tuple[int, str, Any]]:
        async def one() -> tuple[int, str, Any]:
            async with http.get(f"{base}/protected", headers=headers) as resp:
                return resp.status, resp.headers["X-Worker-Pid"], await resp.json()

        return await asyncio.gather(*(one() for _ in range(8)))

    async def every_worker(status: int) -> dict[str, Any]:
        """Bursts of requests until both workers have answered ``status``."""
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2:
            for code, pid, body in await burst():
                assert code in (200, 401), (code, body)  # never 503: replayed before serving
                if code == status:
                    seen[pid] = body
            assert time.monotonic() < deadline, (seen, log_path.read_text())
        return seen

    bodies = await every_worker(200)
    assert all(body == claims for body in bodies.values())
    assert str(proc.pid) not in bodies  # workers answer, not the master
    await logout(tokend, tokens["access_token"])
    bodies = await every_worker(401)
    assert all(body["error_description"] == "token revoked" for body in bodies.values())
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert "tokend_listener_events_applied_total" in await resp.text()
        assert resp.headers["X-Worker-Pid"] in bodies

    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(START_TIMEOUT):
        assert await proc.wait() == 0, log_path.read_text()
    for pid in bodies:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


async def test_the_async_path_does_not_block_the_event_loop(tokend, configure) -> None:
    # the first request of the process waits FIRST_WAIT for a replay that never comes:
    # in a thread, while the loop keeps ticking
    configure(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FIRST_WAIT=1)
    tokens = await register_and_login(tokend)
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    resp = await get("async", "/async", tokens["access_token"])
    waited = time.monotonic() - started
    ticker.cancel()
    assert resp.status_code == 503
    assert waited >= 0.9  # it did wait for the replay...
    assert max(gaps) < 0.5  # ...without holding the loop


async def test_the_example_refuses_an_unknown_server_in_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env={**os.environ, "SERVER": "waitress"}, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err.decode() == (
        "django_service: bad setting: SERVER: expected gunicorn or uvicorn, got 'waitress'\n"
    )
