"""Test helpers: a test server with tokend's runner, users and logins over HTTP."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.http.errors import TokendRunner

PASSWORD = "correct horse battery"


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


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT without verifying it."""
    head, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
    )


class PrivateRedis:
    """A redis-server of the test's own (never the shared one) on a free port.

    ``kill()`` is SIGKILL; ``start()`` again reuses the port and the directory, so a
    ``dump.rdb`` or AOF left there is loaded. ``extra`` are more redis-server options
    (persistence, output buffer limits).
    """

    def __init__(self, directory: str | Path, *extra: str) -> None:
        from service.devredis import free_port

        self.port = free_port()
        self.directory = Path(directory)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from service.devredis import answers

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers(self.url, timeout=0.2):
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
