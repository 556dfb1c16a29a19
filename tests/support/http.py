"""Talking to a tokend under test: its test server, users and logins, and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import aiohttp.web_app
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.http.errors import TokendRunner

PASSWORD = "correct horse battery"


def forget_stopped_apps() -> None:
    """Drop aiohttp's process-wide cache of middleware chains.

    aiohttp keeps each (handler, apps) pair it has served in an ``lru_cache`` of 1,024
    entries, so every app a test process starts stays alive with its Redis pools,
    sockets and SQL engine until evicted: over the whole suite that was ~3,000 objects
    per test, and a full garbage collection late in the run stopped the event loop for
    2 s, long enough for a 2 s Redis connect timeout to expire. One app per process, as
    tokend serves, never grows it. The cache is aiohttp's own (not public): if it is
    renamed, ``test_a_stopped_app_is_garbage`` fails."""
    cached = getattr(aiohttp.web_app, "_cached_build_middleware", None)
    if cached is not None:
        cached.cache_clear()


class LoopbackApp:
    """An aiohttp app on 127.0.0.1:``self.port`` that a test starts and stops (a webhook
    receiver, a relying party); subclasses set ``port`` and ``_runner = None`` and add
    their routes in ``routes``."""

    port: int
    _runner: web.AppRunner | None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class TokendTestServer(TestServer):
    """aiohttp's TestServer, but with the runner tokend uses in production."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return TokendRunner(self.app, **kwargs)


async def register(
    client: TestClient[Any, Any], username: str, password: str = PASSWORD
) -> dict[str, Any]:
    resp = await client.post("/auth/register", json={"username": username, "password": password})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def add_user(client: TestClient[Any, Any], username: str, password: str = PASSWORD) -> None:
    """A user written straight to the user store, as ``tokend users add`` does: for tests
    where Redis (which counts registrations) is away."""
    from service.http.appkeys import AUTH, CLOCK

    auth = client.app[AUTH]
    await auth.users.create(username, await auth.hasher.hash(password), client.app[CLOCK]())


async def login(
    client: TestClient[Any, Any], username: str, password: str = PASSWORD
) -> dict[str, Any]:
    resp = await client.post("/auth/login", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def register_and_login(
    client: TestClient[Any, Any], username: str = "alice"
) -> dict[str, Any]:
    await register(client, username)
    return await login(client, username)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: Any, token: str) -> tuple[int, dict[str, Any], Any]:
    resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers


async def refresh(client: Any, token: str) -> tuple[int, dict[str, Any], Any]:
    resp = await client.post("/auth/refresh", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers


def assert_invalid_token(status: int, body: dict[str, Any], headers: Any, token: str) -> None:
    """401 invalid_token per RFC 6750, and no part of the token echoed."""
    assert status == 401, body
    assert body["error"] == "invalid_token", body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    text = json.dumps(body) + headers["WWW-Authenticate"]
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in text


# --- raw HTTP ----------------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""
) -> bytes:
    """A raw HTTP/1.1 request, byte for byte as given (no validation, no encoding)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_exchange(port: int, request: bytes, timeout: float = 20) -> bytes:
    """Send ``request`` and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    return status, headers, body
