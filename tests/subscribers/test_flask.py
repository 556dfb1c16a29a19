"""tokend_client.flask against a real tokend and Redis: the extension, its decorator, and
examples/flask_service.py behind gunicorn.

The test's tokend runs on the test's event loop and the sync path may block on a JWKS
fetch (urllib), so every Flask test-client call runs in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from flask import Flask, g
from werkzeug.test import TestResponse

from service.devredis import free_port
from tests.support import PASSWORD, bearer, register_and_login, unverified
from tokend_client import BackgroundListener, Subscriber, SubscriberSettings
from tokend_client.flask import Tokend, current_claims

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flask_service.py"
ISSUER = "http://127.0.0.1:8080"
START_TIMEOUT = 20

App = Callable[..., Flask]


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client(TOKEND_OAUTH_CLIENTS='{"cli": {}}')


@pytest.fixture
def config(tokend: Any, redis_env: dict[str, str], redis_prefix: str) -> dict[str, str]:
    """The TOKEND_* settings of a subscriber of the test's tokend."""
    return {
        **redis_env,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_JWKS_URL": str(tokend.make_url("/.well-known/jwks.json")),
        "TOKEND_ISSUER": ISSUER,
        "TOKEND_AUDIENCE": "tokend",
        "TOKEND_JWKS_MIN_REFETCH": "0",
    }


@pytest.fixture
def make_app(config: dict[str, str]) -> Iterator[App]:
    """``make_app(subscriber=None, **config)``: a protected Flask app; its listener is
    stopped afterwards."""
    made: list[Subscriber] = []

    def make(subscriber: Subscriber | None = None, **overrides: Any) -> Flask:
        app = Flask("tokend-test")
        app.config.update(config, **overrides)
        tokend = Tokend(subscriber=subscriber)
        tokend.init_app(app)  # the factory way; Tokend(app) does the same
        made.append(app.extensions["tokend"])

        @app.get("/claims")
        def claims() -> Any:
            return {"claims": g.tokend, "same": current_claims() is g.tokend}

        @app.get("/protected")
        @tokend.required
        def protected() -> Any:
            return current_claims()

        @app.get("/orders")
        @tokend.required(scope="orders:read")
        def orders() -> Any:
            return {"orders": [], "sub": (current_claims() or {})["sub"]}

        @app.get("/open")
        def open_() -> Any:
            return {"open": True}

        return app

    yield make
    for subscriber in made:
        if isinstance(subscriber.listener, BackgroundListener):
            subscriber.listener.stop()


async def get(app: Flask, path: str, headers: Any = None, **query: str) -> TestResponse:
    """A request through Flask's test client, in a thread."""
    return await asyncio.to_thread(
        lambda: app.test_client().get(path, headers=headers, query_string=query)
    )


async def scoped_token(tokend: Any, scope: str) -> str:
    """An access token of alice with ``scope``, from the public client's password grant."""
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    resp = await tokend.post("/oauth/token", data={**form, "client_id": "cli", "scope": scope})
    assert resp.status == 200, await resp.text()
    token: str = (await resp.json())["access_token"]
    assert unverified(token)[1]["scope"] == scope
    return token


async def test_a_valid_token_puts_its_claims_in_g(tokend: Any, make_app: App) -> None:
    app = make_app()
    tokens = await register_and_login(tokend)
    claims = unverified(tokens["access_token"])[1]
    resp = await get(app, "/claims", bearer(tokens["access_token"]))
    assert resp.status_code == 200
    assert resp.json == {"claims": claims, "same": True}
    resp = await get(app, "/protected", bearer(tokens["access_token"]))
    assert (resp.status_code, resp.json) == (200, claims)


async def test_no_credentials_leaves_g_empty_and_required_answers_401(make_app: App) -> None:
    app = make_app(TOKEND_REALM="orders")
    resp = await get(app, "/claims")
    assert (resp.status_code, resp.json) == (200, {"claims": None, "same": True})
    resp = await get(app, "/protected")
    assert resp.status_code == 401
    assert resp.json == {"error": "unauthorized", "error_description": "authentication required"}
    assert (
        resp.headers["WWW-Authenticate"]
        == 'Bearer realm="orders", DPoP algs="ES256 EdDSA RS256 PS256"'
    )
    assert resp.headers["Cache-Control"] == "no-store"


async def test_tokend_require_refuses_no_credentials_except_exempt_paths(make_app: App) -> None:
    app = make_app(TOKEND_REQUIRE="true", TOKEND_EXEMPT="/open, /healthz")
    resp = await get(app, "/claims")
    assert resp.status_code == 401
    assert (
        resp.headers["WWW-Authenticate"]
        == 'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"'
    )
    assert (await get(app, "/open")).status_code == 200
    assert (await get(app, "/open", {"Authorization": "Basic x"})).status_code == 200


@pytest.mark.parametrize(
    ("headers", "query", "why"),
    [
        (
            [("Authorization", "Basic YWxpY2U6cHc=")],
            {},
            "Authorization must use the Bearer or DPoP scheme",
        ),
        ([("Authorization", "Bearer")], {}, "Bearer scheme without a token"),
        ([("Authorization", "Bearer a b")], {}, "Authorization must be 'Bearer <one token>'"),
        ([("Authorization", "Bearer a,b")], {}, "Authorization must be 'Bearer <one token>'"),
        (
            [("Authorization", "Bearer abc"), ("Authorization", "Bearer abc")],
            {},
            "more than one Authorization header",
        ),
        (
            [],
            {"access_token": "abc"},
            "tokens in the URL are not accepted; use the Authorization header",
        ),
    ],
    ids=["basic", "no-token", "two-tokens", "comma", "duplicate-header", "query-token"],
)
async def test_malformed_credentials_are_400(
    make_app: App, headers: Any, query: dict[str, str], why: str
) -> None:
    app = make_app()
    resp = await get(app, "/claims", headers, **query)
    assert resp.status_code == 400
    assert resp.json == {"error": "invalid_request", "error_description": why}
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="tokend", error="invalid_request", error_description="{why}"'
    )
    assert resp.headers["Cache-Control"] == "no-store"


async def test_invalid_tokens_are_401_invalid_token(tokend: Any, make_app: App) -> None:
    app = make_app()
    tokens = await register_and_login(tokend)
    for token, why in (
        ("abc.def.ghi", "malformed token"),
        (tokens["refresh_token"], "not an access token"),
    ):
        resp = await get(app, "/claims", bearer(token))
        assert resp.status_code == 401
        assert resp.json == {"error": "invalid_token", "error_description": why}
        assert resp.headers["WWW-Authenticate"] == (
            f'Bearer realm="tokend", error="invalid_token", error_description="{why}", '
            'DPoP algs="ES256 EdDSA RS256 PS256"'
        )


async def test_required_scope_is_403_insufficient_scope_without_it(
    tokend: Any, make_app: App
) -> None:
    app = make_app()
    tokens = await register_and_login(tokend)  # no scope
    resp = await get(app, "/orders", bearer(tokens["access_token"]))
    assert resp.status_code == 403
    assert resp.json == {"error": "insufficient_scope", "error_description": "token lacks scope"}
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="tokend", error="insufficient_scope", '
        'error_description="token lacks scope", scope="orders:read"'
    )
    assert (await get(app, "/orders")).status_code == 401
    token = await scoped_token(tokend, "profile orders:read")
    resp = await get(app, "/orders", bearer(token))
    assert (resp.status_code, resp.json) == (
        200,
        {"orders": [], "sub": unverified(token)[1]["sub"]},
    )
    assert (
        await get(app, "/orders", bearer(await scoped_token(tokend, "orders")))
    ).status_code == 403


async def test_a_logout_at_tokend_is_refused_within_a_second(tokend: Any, make_app: App) -> None:
    app = make_app()
    tokens = await register_and_login(tokend)
    headers = bearer(tokens["access_token"])
    assert (await get(app, "/protected", headers)).status_code == 200
    assert (await tokend.post("/auth/logout", headers=headers)).status == 204
    sent = time.monotonic()
    while (resp := await get(app, "/protected", headers)).status_code == 200:
        assert time.monotonic() - sent < 1, "the logout did not arrive within a second"
        await asyncio.sleep(0.005)
    assert resp.status_code == 401
    assert resp.json == {"error": "invalid_token", "error_description": "token revoked"}
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="tokend", error="invalid_token", error_description="token revoked", '
        'DPoP algs="ES256 EdDSA RS256 PS256"'
    )


async def test_no_replayed_deny_list_yet_is_503(
    tokend: Any, make_app: App, config: dict[str, str]
) -> None:
    # nothing listens on this port: the listener never gets to replay
    settings = SubscriberSettings.from_env(
        {**config, "TOKEND_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    subscriber = Subscriber(settings, threaded=True)
    assert isinstance(subscriber.listener, BackgroundListener)
    subscriber.listener.first_wait = 0.2
    app = make_app(subscriber)
    tokens = await register_and_login(tokend)
    resp = await get(app, "/protected", bearer(tokens["access_token"]))
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.json == {
        "error": "temporarily_unavailable",
        "error_description": "revocation list not loaded yet",
    }
    assert subscriber.health() == (503, {"status": "starting"})


# -- examples/flask_service.py behind gunicorn ----------------------------------------


async def fetch(
    http: aiohttp.ClientSession, port: int, path: str, token: str | None = None
) -> tuple[int, int, Any]:
    """(status, X-Worker-Pid, JSON body) of one request to the example service."""
    headers = bearer(token) if token else {}
    async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, int(resp.headers["X-Worker-Pid"]), body


async def answers_by_pid(
    http: aiohttp.ClientSession, port: int, path: str, token: str | None, want: int, log: Path
) -> dict[int, list[int]]:
    """Statuses by worker pid of concurrent requests, until both workers answered ``want``."""
    seen: dict[int, list[int]] = {}
    deadline = time.monotonic() + START_TIMEOUT
    while sum(want in statuses for statuses in seen.values()) < 2:
        assert time.monotonic() < deadline, (seen, log.read_text())
        for status, pid, _ in await asyncio.gather(
            *(fetch(http, port, path, token) for _ in range(8))
        ):
            seen.setdefault(pid, []).append(status)
    return seen


@pytest.mark.parametrize("preload", ["0", "1"], ids=["fork-then-load", "preload"])
async def test_the_example_under_gunicorn_follows_revocations_in_every_worker(
    tokend: Any, config: dict[str, str], tmp_path: Path, preload: str
) -> None:
    port = free_port()
    log = tmp_path / "flask_service.log"
    env = {**os.environ, **config, "PORT": str(port), "WORKERS": "2", "PRELOAD": preload}
    tokens = await register_and_login(tokend)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), env=env, cwd=str(ROOT), stdout=out, stderr=out
        )
    pids: set[int] = set()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            deadline = time.monotonic() + START_TIMEOUT
            while True:  # until gunicorn listens
                assert proc.returncode is None, log.read_text()
                try:
                    await fetch(http, port, "/metrics")
                    break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.05)
            # a worker answers once it has replayed the deny list: 200 from the first answer
            before = await answers_by_pid(
                http, port, "/protected", tokens["access_token"], 200, log
            )
            assert len(before) == 2, before
            assert all(set(s) == {200} for s in before.values()), before
            pids = set(before)
            health = await answers_by_pid(http, port, "/healthz", None, 200, log)
            assert set(health) == pids and all(set(s) == {200} for s in health.values()), health
            resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
            assert resp.status == 204
            after = await answers_by_pid(http, port, "/protected", tokens["access_token"], 401, log)
            assert set(after) == pids
            for statuses in after.values():  # once refused, never accepted again
                assert 200 not in statuses[statuses.index(401) :], after
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, log.read_text()
    for pid in pids:  # the workers stopped with their master
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
