"""tokend_client.starlette.TokendMiddleware around a Litestar app and a Quart app, each
served over real HTTP (uvicorn and hypercorn, in this process) against a real tokend and
Redis: the claims reach the handler, a request without a token is refused as RFC 6750
says, a logout at tokend is refused within moments, and the server's lifespan starts and
stops the revocation listener around the framework's own startup and shutdown hooks.

The middleware wraps the framework's ASGI callable from outside (Litestar: the app;
Quart: ``app.asgi_app``), which is where it sees the lifespan scope. Inside Litestar's
own middleware stack (``DefineMiddleware``) it sees no lifespan: the last test shows
what that means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from litestar import Litestar, Request, get
from litestar.middleware import DefineMiddleware
from quart import Quart, request

from service.devredis import free_port
from tests.subscribers import test_asgi
from tests.subscribers.test_asgi import REQUIRED, assert_required, connected, wait_ready
from tests.support import bearer, register_and_login, unverified
from tokend_client import Subscriber
from tokend_client.starlette import TokendMiddleware, TokendRefusal, claims

# test_asgi's fixtures: tokend (on a real socket, with a public OAuth client), env (the
# TOKEND_* variables of its subscriber), settings and subscriber (threaded=False)
tokend = test_asgi.tokend
env = test_asgi.env
settings = test_asgi.settings
subscriber = test_asgi.subscriber

REVOKED = {"error": "invalid_token", "error_description": "token revoked"}
PROMPTLY = 2.0  # seconds from tokend's 204 to the subscriber's 401 (it is milliseconds)


async def started(subscriber: Subscriber, hooks: list[tuple[str, Any]]) -> None:
    """A framework startup hook: the listener is started already (it connects and replays
    while the hook waits; a listener not started would never get ready)."""
    await wait_ready(subscriber)
    hooks.append(("startup", connected(subscriber)))


# --- the apps -----------------------------------------------------------------------------
#
# Both serve GET /protected (the claims as the handler sees them: the framework's request
# state, and claims(request)) and GET /healthz (exempt); ``hooks`` records what the
# listener looked like in the framework's own startup and shutdown hooks.


def litestar_app(subscriber: Subscriber, hooks: list[tuple[str, Any]]) -> Any:
    @get("/protected")
    async def protected(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"state": request.state.tokend, "claims": claims(request)}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def startup() -> None:
        await started(subscriber, hooks)

    async def shutdown() -> None:
        hooks.append(("shutdown", connected(subscriber)))

    app = Litestar(
        route_handlers=[protected, healthz], on_startup=[startup], on_shutdown=[shutdown]
    )
    return TokendMiddleware(app, subscriber, require=True, exempt=("/healthz",))


def quart_app(subscriber: Subscriber, hooks: list[tuple[str, Any]]) -> Any:
    app = Quart(__name__)

    @app.get("/protected")
    async def protected() -> dict[str, Any]:
        return {"state": request.scope["state"]["tokend"], "claims": claims(request)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.before_serving
    async def startup() -> None:
        await started(subscriber, hooks)

    @app.after_serving
    async def shutdown() -> None:
        hooks.append(("shutdown", connected(subscriber)))

    # Quart's way to add ASGI middleware: around asgi_app, which also gets the lifespan
    app.asgi_app = TokendMiddleware(  # type: ignore[method-assign]
        app.asgi_app, subscriber, require=True, exempt=("/healthz",)
    )
    return app


@get("/healthz")
async def healthz_() -> dict[str, str]:
    return {"status": "ok"}


APPS: dict[str, Callable[[Subscriber, list[tuple[str, Any]]], Any]] = {
    "litestar": litestar_app,
    "quart": quart_app,
}


# --- the servers --------------------------------------------------------------------------


@asynccontextmanager
async def uvicorn_serving(app: Any, port: int) -> AsyncIterator[None]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await task


@asynccontextmanager
async def hypercorn_serving(app: Any, port: int) -> AsyncIterator[None]:
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.create_task(
        hypercorn_serve(app, config, shutdown_trigger=stop.wait, mode="asgi")
    )
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


SERVERS = {"uvicorn": uvicorn_serving, "hypercorn": hypercorn_serving}


@asynccontextmanager
async def served(app: Any, server: str) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` behind ``server`` on a real socket, once it answers /healthz (both servers
    listen only after the lifespan's startup is complete); a client of it."""
    port = free_port()
    async with (
        SERVERS[server](app, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as svc,
    ):
        deadline = time.monotonic() + 15
        while True:
            try:
                resp = await svc.get("/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"{server} never answered"
                await asyncio.sleep(0.02)
        assert (resp.status_code, resp.json()) == (200, {"status": "ok"})
        yield svc


@pytest.fixture(
    params=["litestar-uvicorn", "litestar-hypercorn", "quart-uvicorn", "quart-hypercorn"]
)
def stack(request: pytest.FixtureRequest) -> tuple[str, str]:
    framework, server = request.param.split("-")
    return framework, server


# --- the tests ------------------------------------------------------------------------------


async def test_lifespan_starts_and_stops_the_listener(
    stack: tuple[str, str], subscriber: Subscriber
) -> None:
    framework, server = stack
    hooks: list[tuple[str, Any]] = []
    app = APPS[framework](subscriber, hooks)
    assert connected(subscriber) == 0 and not subscriber.ready
    async with served(app, server):
        # started by lifespan.startup, before the framework's own startup hook ran
        assert hooks == [("startup", 1)]
        assert subscriber.ready
        assert connected(subscriber) == 1
    # closed once the framework's shutdown hook had run (it still saw the listener)
    assert hooks == [("startup", 1), ("shutdown", 1)]
    assert connected(subscriber) == 0


async def test_claims_reach_the_handler(
    stack: tuple[str, str], tokend: Any, subscriber: Subscriber
) -> None:
    framework, server = stack
    app = APPS[framework](subscriber, [])
    tokens = await register_and_login(tokend)
    async with served(app, server) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/protected", headers=bearer(tokens["access_token"]))
        assert resp.status_code == 200, resp.text
        want = unverified(tokens["access_token"])[1]
        assert resp.json() == {"state": want, "claims": want}


async def test_no_token_is_401_with_the_challenge(
    stack: tuple[str, str], tokend: Any, subscriber: Subscriber
) -> None:
    framework, server = stack
    app = APPS[framework](subscriber, [])
    async with served(app, server) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/protected")
        assert_required(resp)  # 401, JSON body, WWW-Authenticate, no-store
        assert resp.json() == REQUIRED
        resp = await svc.get("/protected", headers=bearer("abc.def.ghi"))
        assert resp.status_code == 401
        assert resp.json() == {"error": "invalid_token", "error_description": "malformed token"}
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="tokend", error="invalid_token", error_description="malformed token", '
            'DPoP algs="ES256 EdDSA RS256 PS256"'
        )
        # the exempt path is not checked, whatever it carries
        resp = await svc.get("/healthz", headers=bearer("abc.def.ghi"))
        assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


async def test_a_logout_at_tokend_is_refused_promptly(
    stack: tuple[str, str], tokend: Any, subscriber: Subscriber
) -> None:
    framework, server = stack
    app = APPS[framework](subscriber, [])
    tokens = await register_and_login(tokend)
    access = bearer(tokens["access_token"])
    async with served(app, server) as svc:
        await wait_ready(subscriber)
        assert (await svc.get("/protected", headers=access)).status_code == 200
        assert (await tokend.post("/auth/logout", headers=access)).status == 204
        logged_out = time.monotonic()
        while (resp := await svc.get("/protected", headers=access)).status_code == 200:
            assert time.monotonic() - logged_out < PROMPTLY, "the revocation never arrived"
            await asyncio.sleep(0.002)
        assert resp.status_code == 401
        assert resp.json() == REVOKED
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="tokend", error="invalid_token", error_description="token revoked", '
            'DPoP algs="ES256 EdDSA RS256 PS256"'
        )
        assert resp.headers["Content-Type"] == "application/json"


async def test_inside_litestars_middleware_stack_there_is_no_lifespan(
    tokend: Any, subscriber: Subscriber
) -> None:
    # Litestar runs its own middleware (DefineMiddleware) for http and websocket scopes
    # only: the lifespan never reaches TokendMiddleware there. Requests still get checked;
    # the listener starts with the first request (503 until replayed) and is not closed
    # with the app.
    @get("/protected")
    async def protected(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"state": request.state.tokend}

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    middleware = DefineMiddleware(TokendMiddleware, subscriber=subscriber, exempt=("/healthz",))
    app = Litestar(route_handlers=[protected, healthz], middleware=[middleware])
    tokens = await register_and_login(tokend)
    access = bearer(tokens["access_token"])
    try:
        async with served(app, "uvicorn") as svc:
            assert connected(subscriber) == 0  # the lifespan ran, the listener did not start
            first = await svc.get("/protected", headers=access)  # this starts it
            assert first.status_code in (200, 503)
            await wait_ready(subscriber)
            resp = await svc.get("/protected", headers=access)
            assert resp.status_code == 200
            assert resp.json() == {"state": unverified(tokens["access_token"])[1]}
        assert connected(subscriber) == 1  # still open after the server stopped
    finally:
        await subscriber.close()


@pytest.mark.xfail(
    strict=True,
    reason="Litestar and Quart turn an exception from a handler into their own 500 response "
    "before it reaches the middleware outside them: TokendRefusal is not rendered there",
)
@pytest.mark.parametrize("framework", ["litestar", "quart"])
async def test_a_handler_raising_tokend_refusal(framework: str, subscriber: Subscriber) -> None:
    if framework == "litestar":

        @get("/admin")
        async def admin() -> None:
            raise TokendRefusal(subscriber.guard.forbidden("admin"))

        app: Any = TokendMiddleware(Litestar(route_handlers=[admin, healthz_]), subscriber)
    else:
        quart = Quart(__name__)

        @quart.get("/admin")
        async def quart_admin() -> None:
            raise TokendRefusal(subscriber.guard.forbidden("admin"))

        @quart.get("/healthz")
        async def quart_healthz() -> dict[str, str]:
            return {"status": "ok"}

        quart.asgi_app = TokendMiddleware(quart.asgi_app, subscriber)  # type: ignore[method-assign]
        app = quart
    async with served(app, "uvicorn") as svc:
        resp = await svc.get("/admin")
    assert resp.status_code == 403  # it is 500
    assert resp.json() == {"error": "insufficient_scope", "error_description": "token lacks scope"}
