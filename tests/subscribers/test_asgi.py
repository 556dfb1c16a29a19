"""tokend_client.starlette (the ASGI middleware), tokend_client.fastapi (the dependency) and
examples/fastapi_service.py, against a real tokend and Redis.

Requests go in-process through httpx's ASGITransport, which runs no lifespan: ``running``
drives the ASGI lifespan protocol by hand. The example also runs as its own process
under uvicorn with two workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.devredis import free_port
from tests.support import PASSWORD, bearer, register, register_and_login, unverified
from tokend_client import RevocationListener, Subscriber, SubscriberSettings
from tokend_client.fastapi import TokenClaims, TokendBearer, install, require_token
from tokend_client.redis_target import RedisTarget
from tokend_client.starlette import TokendMiddleware, TokendRefusal, claims

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "http://127.0.0.1:8080"
CLIENTS = '{"cli": {}}'  # a public OAuth client, for tokens with a scope
REQUIRED = {"error": "unauthorized", "error_description": "authentication required"}
FORBIDDEN = {"error": "insufficient_scope", "error_description": "token lacks scope"}


# --- helpers ---------------------------------------------------------------------------


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[list[str]]:
    """The app between lifespan.startup and lifespan.shutdown, as a server runs it; yields
    the message types the app sent (startup.complete, then shutdown.complete)."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    answers: asyncio.Queue[str] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(message["type"])
        await answers.put(message["type"])

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    async with asyncio.timeout(10):
        assert await answers.get() == "lifespan.startup.complete"
    try:
        yield sent
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        async with asyncio.timeout(10):
            assert await answers.get() == "lifespan.shutdown.complete"
            await task


def http(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def connected(subscriber: Subscriber) -> float | None:
    listener = subscriber.listener
    assert isinstance(listener, RevocationListener) and listener.registry is not None
    return listener.registry.get_sample_value("tokend_listener_connected")


async def wait_ready(subscriber: Subscriber) -> None:
    listener = subscriber.listener
    assert isinstance(listener, RevocationListener)
    async with asyncio.timeout(10):
        await listener.wait_ready()


async def scoped_token(tokend: Any, scope: str) -> str:
    """An access token with ``scope``, from tokend's password grant (public client)."""
    await register(tokend, "alice")
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    resp = await tokend.post("/oauth/token", data={**form, "scope": scope, "client_id": "cli"})
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["access_token"]
    assert unverified(token)[1]["scope"] == scope
    return token


def assert_required(resp: httpx.Response, realm: str = "tokend") -> None:
    assert resp.status_code == 401
    assert resp.json() == REQUIRED
    assert (
        resp.headers["WWW-Authenticate"]
        == f'Bearer realm="{realm}", DPoP algs="ES256 EdDSA RS256 PS256"'
    )
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"] == "application/json"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS)


@pytest.fixture
def env(tokend: Any, redis_env: dict[str, str], redis_prefix: str) -> dict[str, str]:
    """The TOKEND_* variables of a subscriber of this test's tokend."""
    return {
        **redis_env,
        "TOKEND_ISSUER": ISSUER,
        "TOKEND_JWKS_URL": str(tokend.make_url("/.well-known/jwks.json")),
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_JWKS_MIN_REFETCH": "0",
    }


@pytest.fixture
def settings(env: dict[str, str]) -> SubscriberSettings:
    return SubscriberSettings.from_env(env)


@pytest.fixture
def subscriber(settings: SubscriberSettings) -> Subscriber:
    return Subscriber(settings, threaded=False)


async def show_claims(request: Request) -> JSONResponse:
    return JSONResponse({"state": request.state.tokend, "claims": claims(request)})


def starlette_app(subscriber: Subscriber, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/protected", show_claims), Route("/open", show_claims)])
    app.add_middleware(TokendMiddleware, subscriber=subscriber, **options)
    return app


def fastapi_app(subscriber: Subscriber, handler: bool = True) -> FastAPI:
    """``/me`` needs a token, ``/read`` and ``/write`` one with that scope; with
    ``handler=False`` only the middleware is added, not install's exception handler."""
    app = FastAPI()
    if handler:
        install(app, subscriber)
    else:
        app.add_middleware(TokendMiddleware, subscriber=subscriber)

    @app.get("/me")
    async def me(token: Annotated[TokenClaims, Depends(require_token())]) -> dict[str, Any]:
        return dict(token)

    @app.get("/read")
    async def read(token: Annotated[TokenClaims, Depends(TokendBearer("read"))]) -> str:
        return token["sub"]

    @app.get("/write")
    async def write(token: Annotated[TokenClaims, Depends(require_token("write"))]) -> str:
        return token["sub"]

    return app


# --- the middleware ----------------------------------------------------------------------


async def test_lifespan_starts_and_stops_the_listener(subscriber: Subscriber) -> None:
    seen_at_startup: list[float | None] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the app's own startup runs with the listener already started
        listener = subscriber.listener
        assert isinstance(listener, RevocationListener)
        await asyncio.wait_for(listener.wait_ready(), 10)
        seen_at_startup.append(connected(subscriber))
        yield

    app = Starlette(lifespan=lifespan)
    app.add_middleware(TokendMiddleware, subscriber=subscriber)
    assert connected(subscriber) == 0 and not subscriber.ready
    async with running(app) as sent:
        assert subscriber.ready
        assert connected(subscriber) == 1
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen_at_startup == [1]
    assert connected(subscriber) == 0  # closed with the app


async def test_an_app_without_lifespan_gets_the_protocol_answered(subscriber: Subscriber) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"
        await JSONResponse({"state": scope["state"]["tokend"]})(scope, receive, send)

    app = TokendMiddleware(bare, subscriber)
    async with running(app) as sent:
        await wait_ready(subscriber)
        assert connected(subscriber) == 1
        async with http(app) as svc:
            assert (await svc.get("/")).json() == {"state": None}
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert connected(subscriber) == 0


async def test_claims_reach_request_state(tokend: Any, subscriber: Subscriber) -> None:
    app = starlette_app(subscriber)
    tokens = await register_and_login(tokend)
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/protected", headers=bearer(tokens["access_token"]))
        assert resp.status_code == 200
        want = unverified(tokens["access_token"])[1]
        assert resp.json() == {"state": want, "claims": want}
        # without credentials, and without require: None, the endpoint decides
        resp = await svc.get("/protected")
        assert resp.status_code == 200
        assert resp.json() == {"state": None, "claims": None}


async def test_require_and_exempt(tokend: Any, subscriber: Subscriber) -> None:
    app = starlette_app(subscriber, require=True, exempt=("/open",))
    tokens = await register_and_login(tokend)
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        assert_required(await svc.get("/protected"))
        # exempt paths are not checked at all, whatever they carry
        for headers in ({}, bearer("abc.def.ghi")):
            resp = await svc.get("/open", headers=headers)
            assert resp.status_code == 200
            assert resp.json() == {"state": None, "claims": None}
        resp = await svc.get("/protected", headers=bearer(tokens["access_token"]))
        assert resp.status_code == 200
        assert resp.json()["claims"]["sub"] == unverified(tokens["access_token"])[1]["sub"]


@pytest.mark.parametrize("require", [False, True])
async def test_refusals_follow_rfc_6750(tokend: Any, subscriber: Subscriber, require: bool) -> None:
    app = starlette_app(subscriber, require=require)
    tokens = await register_and_login(tokend)
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/protected", headers=bearer("abc.def.ghi"))
        assert resp.status_code == 401
        assert resp.json() == {"error": "invalid_token", "error_description": "malformed token"}
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="tokend", error="invalid_token", error_description="malformed token", '
            'DPoP algs="ES256 EdDSA RS256 PS256"'
        )
        two = [("Authorization", "Bearer a"), ("Authorization", "Bearer b")]
        resp = await svc.get("/protected", headers=two)
        assert resp.status_code == 400
        assert resp.json() == {
            "error": "invalid_request",
            "error_description": "more than one Authorization header",
        }
        resp = await svc.get("/protected", params={"access_token": tokens["access_token"]})
        assert resp.status_code == 400
        assert resp.json()["error"] == "invalid_request"
        assert resp.headers["Content-Type"] == "application/json"


async def test_an_endpoint_may_raise_a_refusal(tokend: Any, subscriber: Subscriber) -> None:
    async def admin(request: Request) -> JSONResponse:
        raise TokendRefusal(subscriber.guard.forbidden("admin"))

    app = Starlette(routes=[Route("/admin", admin)])
    app.add_middleware(TokendMiddleware, subscriber=subscriber)
    tokens = await register_and_login(tokend)
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/admin", headers=bearer(tokens["access_token"]))
    assert resp.status_code == 403
    assert resp.json() == FORBIDDEN


async def test_claims_without_the_middleware_is_a_runtime_error() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(claims(request))

    app = Starlette(routes=[Route("/", endpoint)])
    async with http(app) as svc:
        with pytest.raises(RuntimeError, match="TokendMiddleware is not installed"):
            await svc.get("/")


async def test_no_replayed_deny_list_is_503(
    tokend: Any, settings: SubscriberSettings, redis_prefix: str
) -> None:
    # nothing listens on this port: the listener never gets to replay
    blind = Subscriber(
        SubscriberSettings(
            issuer=ISSUER,
            jwks_url=settings.jwks_url,
            redis=RedisTarget(url=f"redis://127.0.0.1:{free_port()}/0"),
            redis_prefix=redis_prefix,
        ),
        threaded=False,
    )
    app = starlette_app(blind)
    tokens = await register_and_login(tokend)
    async with running(app), http(app) as svc:
        resp = await svc.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.json() == {
        "error": "temporarily_unavailable",
        "error_description": "revocation list not loaded yet",
    }


async def test_revoked_token_is_401_once_the_event_arrives(
    tokend: Any, subscriber: Subscriber
) -> None:
    app = fastapi_app(subscriber)
    tokens = await register_and_login(tokend)
    access = bearer(tokens["access_token"])
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        assert (await svc.get("/me", headers=access)).status_code == 200
        assert (await tokend.post("/auth/logout", headers=access)).status == 204
        deadline = time.monotonic() + 10
        while (resp := await svc.get("/me", headers=access)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation never arrived"
            await asyncio.sleep(0.005)
    assert resp.status_code == 401
    assert resp.json() == {"error": "invalid_token", "error_description": "token revoked"}
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="tokend", error="invalid_token", error_description="token revoked", '
        'DPoP algs="ES256 EdDSA RS256 PS256"'
    )


# --- websockets -------------------------------------------------------------------------


async def handshake(
    subscriber: Subscriber, headers: list[tuple[bytes, bytes]], extensions: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """One websocket handshake through the middleware: what it sent, what the app saw."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        seen.append(scope["state"]["tokend"])
        await send({"type": "websocket.accept"})

    middleware = TokendMiddleware(app, subscriber, require=True)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "query_string": b"",
        "headers": headers, "extensions": extensions,
    }  # fmt: skip
    async with asyncio.timeout(10):
        await middleware(scope, inbox.get, send)
    return sent, seen


async def test_websocket_handshakes_are_checked(tokend: Any, subscriber: Subscriber) -> None:
    tokens = await register_and_login(tokend)
    await subscriber.start()
    try:
        await wait_ready(subscriber)
        sent, seen = await handshake(
            subscriber, [(b"authorization", f"Bearer {tokens['access_token']}".encode())], {}
        )
        assert sent == [{"type": "websocket.accept"}]
        assert seen == [unverified(tokens["access_token"])[1]]
        # refused: websocket.close 1008, or the HTTP answer where the server can send it
        sent, seen = await handshake(subscriber, [], {})
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]
        assert seen == []
        sent, seen = await handshake(subscriber, [], {"websocket.http.response": {}})
        assert [m["type"] for m in sent] == [
            "websocket.http.response.start",
            "websocket.http.response.body",
        ]
        assert sent[0]["status"] == 401
        assert (
            b"www-authenticate",
            b'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"',
        ) in sent[0]["headers"]
        assert json.loads(sent[1]["body"]) == REQUIRED
        assert seen == []
    finally:
        await subscriber.close()


# --- the FastAPI dependency -------------------------------------------------------------


async def test_fastapi_dependency_answers_200_401_403(tokend: Any, env: dict[str, str]) -> None:
    settings = SubscriberSettings.from_env({**env, "TOKEND_REALM": "orders"})
    subscriber = Subscriber(settings, threaded=False)
    app = fastapi_app(subscriber)
    token = await scoped_token(tokend, "read")
    async with running(app), http(app) as svc:
        await wait_ready(subscriber)
        resp = await svc.get("/me", headers=bearer(token))
        assert resp.status_code == 200
        assert resp.json() == unverified(token)[1]  # every claim, not only TokenClaims's
        resp = await svc.get("/read", headers=bearer(token))
        assert resp.status_code == 200
        assert resp.json() == unverified(token)[1]["sub"]
        for path in ("/me", "/read", "/write"):
            assert_required(await svc.get(path), realm="orders")
        resp = await svc.get("/write", headers=bearer(token))
        assert resp.status_code == 403
        assert resp.json() == FORBIDDEN
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="orders", error="insufficient_scope", '
            'error_description="token lacks scope", scope="write"'
        )
        assert resp.headers["Cache-Control"] == "no-store"


async def test_fastapi_refusals_are_responses_inside_the_app(subscriber: Subscriber) -> None:
    # install's handler answers inside the app: middleware added before it sees a 401
    # response, not the exception
    statuses: list[int] = []

    def recorder(app: Any) -> Any:
        async def record(scope: Any, receive: Any, send: Any) -> None:
            async def send_(message: Any) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                await send(message)

            await app(scope, receive, send_ if scope["type"] == "http" else send)

        return record

    app = FastAPI()
    app.add_middleware(recorder)
    install(app, subscriber)

    @app.get("/me")
    async def me(token: Annotated[TokenClaims, Depends(require_token())]) -> str:
        return token["sub"]

    async with running(app), http(app) as svc:
        assert_required(await svc.get("/me"))
    assert statuses == [401]


async def test_fastapi_dependency_with_the_middleware_alone(subscriber: Subscriber) -> None:
    app = fastapi_app(subscriber, handler=False)  # the middleware renders the refusal
    async with running(app), http(app) as svc:
        assert_required(await svc.get("/me"))


async def test_fastapi_dependency_without_the_middleware_says_so() -> None:
    app = FastAPI()

    @app.get("/me")
    async def me(token: Annotated[TokenClaims, Depends(require_token())]) -> str:
        return token["sub"]

    async with http(app) as svc:
        with pytest.raises(RuntimeError, match="needs TokendMiddleware"):
            await svc.get("/me")


def test_openapi_has_the_bearer_scheme(subscriber: Subscriber) -> None:
    document = fastapi_app(subscriber).openapi()
    assert document["components"]["securitySchemes"] == {
        "tokend": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    for path in ("/me", "/read", "/write"):
        assert document["paths"][path]["get"]["security"] == [{"tokend": []}]


# --- examples/fastapi_service.py ----------------------------------------------------------


async def test_example_service_in_process(tokend: Any, env: dict[str, str]) -> None:
    from examples.fastapi_service import asgi

    app = asgi(env)
    pid = str(os.getpid())
    tokens = await register_and_login(tokend)
    access = bearer(tokens["access_token"])
    async with http(app) as svc:
        # no lifespan yet: the listener has not replayed
        resp = await svc.get("/healthz")
        assert (resp.status_code, resp.json()) == (503, {"status": "starting"})
        assert resp.headers["X-Worker-Pid"] == pid
        async with running(app):
            deadline = time.monotonic() + 10
            while (resp := await svc.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert resp.json() == {"status": "ok", "last_event": None}
            resp = await svc.get("/protected", headers=access)
            assert resp.status_code == 200
            assert resp.json() == unverified(tokens["access_token"])[1]
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["X-Worker-Pid"] == pid
            resp = await svc.get("/protected")
            assert_required(resp)
            assert resp.headers["X-Worker-Pid"] == pid
            resp = await svc.get("/protected", headers={"Authorization": "Basic YWxpY2U6cHc="})
            assert resp.status_code == 400
            assert resp.headers["X-Worker-Pid"] == pid
            resp = await svc.get("/metrics")
            assert resp.status_code == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
            assert "tokend_listener_connected 1.0" in resp.text
            assert (await tokend.post("/auth/logout", headers=access)).status == 204
            while (resp := await svc.get("/protected", headers=access)).status_code == 200:
                assert time.monotonic() < deadline + 10
                await asyncio.sleep(0.005)
            assert resp.json()["error_description"] == "token revoked"
            last = (await svc.get("/healthz")).json()["last_event"]
            assert isinstance(last, str) and "-" in last


async def test_example_service_bad_setting_is_one_line() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "examples" / "fastapi_service.py"),
        env={**os.environ, "TOKEND_JWKS_CACHE_TTL": "soon"}, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err.decode() == (
        "fastapi_service: bad setting: TOKEND_JWKS_CACHE_TTL: expected a number, got 'soon'\n"
    )


async def test_example_service_with_two_workers(
    tokend: Any, env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "fastapi_service.py"),
            env={**os.environ, **env, "PORT": str(port), "WORKERS": "2"}, cwd=str(ROOT),
            stdout=log, stderr=log,
        )  # fmt: skip
    tokens = await register_and_login(tokend)
    pids: set[str] = set()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as svc:
            deadline = time.monotonic() + 30
            while len(pids) < 2:  # a new connection each time, to reach both workers
                assert proc.returncode is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    resp = await svc.get("/healthz", headers={"Connection": "close"})
                    if resp.status_code == 200:
                        pids.add(resp.headers["X-Worker-Pid"])
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            resp = await svc.get("/protected", headers=bearer(tokens["access_token"]))
            assert resp.status_code == 200, resp.text
            assert resp.json() == unverified(tokens["access_token"])[1]
            assert resp.headers["X-Worker-Pid"] in pids
        assert str(proc.pid) not in pids  # the workers answer, not the supervisor
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0, log_path.read_text()
    for pid in pids:  # SIGTERM stopped the workers too
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
