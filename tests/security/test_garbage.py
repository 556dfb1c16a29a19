"""Oversized and garbage requests: a JSON 400/401/413/431, the process stays up, and the
token never appears in the answer or in the logs: neither in the records of the
in-process server nor on the stderr of a real ``tokend serve`` process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.devredis import free_port
from service.migrate import upgrade_async
from tests.conftest import FAST_ARGON2, REDIS_URL, TEST_KEK
from tests.support import http_request, parse_answer, raw_exchange

pytestmark = pytest.mark.security

# Stands for a token: base64url("a token that must never be echoed or logged").
MARK = "YSB0b2tlbiB0aGF0IG11c3QgbmV2ZXIgYmUgZWNob2VkIG9yIGxvZ2dlZA"
MB = 1024 * 1024


def _bearer(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Bearer " + value)]


def _json(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Content-Type", b"application/json")]


M = MARK.encode()
# (name, request, statuses allowed)
BATTERY: list[tuple[str, bytes, set[int]]] = [
    (
        "1 MB token in the header",
        http_request("GET", "/auth/me", _bearer(M * (MB // len(M)))),
        {431},
    ),
    (
        "1 MB token in the body",
        http_request(
            "POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M * (MB // len(M)) + b'"}'
        ),
        {413},
    ),
    (
        "60 KB token in the body",
        http_request(
            "POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M * 1000 + b'"}'
        ),
        {401},
    ),
    ("9 KiB token in the header", http_request("GET", "/auth/me", _bearer(M * 160)), {431}),
    ("9 KiB refresh header", http_request("POST", "/auth/refresh", _bearer(M * 160)), {431}),
    (
        "2 MiB body",
        http_request(
            "POST",
            "/auth/login",
            _json(b""),
            b'{"username": "alice", "password": "' + M * (2 * MB // len(M)) + b'"}',
        ),
        {413},
    ),
    (
        "malformed JSON",
        http_request("POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M),
        {400},
    ),
    (
        "malformed JSON at login",
        http_request("POST", "/auth/login", _json(b""), b'{"username": "' + M + b'",,}'),
        {400},
    ),
    ("NUL in the header", http_request("GET", "/auth/me", _bearer(M + b"\x00" + M)), {400}),
    ("CR in the header", http_request("GET", "/auth/me", _bearer(M + b"\r" + M)), {400}),
    ("LF in the header", http_request("GET", "/auth/me", _bearer(M + b"\nX-" + M)), {400}),
    (
        "NUL byte in the body",
        http_request("POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M + b'\x00"}'),
        {400},
    ),
    (
        "escaped NUL in the body",
        http_request(
            "POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M + b'\\u0000"}'
        ),
        {400, 401},
    ),
    (
        "10,000 dots in the header",
        http_request("GET", "/auth/me", _bearer(M + b"." * 10_000)),
        {431},
    ),
    (
        "10,000 dots in the body",
        http_request(
            "POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M + b"." * 10_000 + b'"}'
        ),
        {401},
    ),
    ("dots only", http_request("GET", "/auth/me", _bearer(b"." * 2000 + M)), {400, 401}),
    ("non-UTF-8 header", http_request("GET", "/auth/me", _bearer(M + b"\xff\xfe" + M)), {400}),
    (
        "non-UTF-8 body",
        http_request("POST", "/auth/refresh", _json(b""), b'{"refresh_token": "' + M + b'\xff"}'),
        {400},
    ),
    ("token in the URL", http_request("GET", "/auth/me?access_token=" + MARK), {400}),
    (
        "token in the URL and the header",
        http_request("GET", "/auth/me?access_token=" + MARK, _bearer(M)),
        {400},
    ),
    ("garbage request line", b"\x01\x02 " + M + b" HTTP/1.1\r\n\r\n", {400}),
    (
        "header name of garbage",
        http_request("GET", "/auth/me", [(M + b"\x7f", b"x")]),
        {400},
    ),
    (
        "form token endpoint with garbage",
        http_request(
            "POST",
            "/oauth/token",
            [(b"Content-Type", b"application/x-www-form-urlencoded")],
            b"grant_type=refresh_token&refresh_token=" + M + b"%ff%00&client_id=x",
        ),
        {400, 401},
    ),
]


async def _check_answer(name: str, answer: bytes, allowed: set[int]) -> None:
    assert answer, f"{name}: no answer"
    status, headers, body = parse_answer(answer)
    assert status in allowed, (name, answer[:300])
    assert headers["content-type"].startswith("application/json"), (name, headers)
    error = json.loads(body)
    assert set(error) == {"error", "error_description"}, (name, error)
    assert MARK[:16].encode() not in answer, (name, answer[:300])


async def _run_battery(port: int) -> None:
    for name, request, allowed in BATTERY:
        await _check_answer(name, await raw_exchange(port, request), allowed)
        # still up after each of them
        status, _, _ = parse_answer(await raw_exchange(port, http_request("GET", "/healthz")))
        assert status == 200, name


async def test_in_process_answers_and_log_records(make_client, caplog) -> None:
    client = await make_client()
    caplog.set_level(logging.DEBUG)
    await _run_battery(client.server.port)
    # aiohttp.access is the test server's own access log; `tokend serve` runs without one
    # (the next test proves what the real process writes).
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert records, "expected at least the warnings about malformed requests"
    for record in records:
        text = record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        assert MARK[:16] not in text, (record.name, text[:300])
        assert record.levelno < logging.ERROR, (record.name, text[:300])


@pytest.fixture
async def served(tmp_path: Path, redis_prefix: str) -> AsyncIterator[tuple[int, Any, Path]]:
    """A real ``tokend serve`` process; yields (port, process, log file)."""
    database = tmp_path / "serve.db"
    await upgrade_async(f"sqlite+aiosqlite:///{database}")
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
        **FAST_ARGON2,
        "TOKEND_PORT": str(port),
        "TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "tokend"),
            "serve",
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.returncode is None, log.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
        yield port, proc, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_real_process_answers_and_stderr(served) -> None:
    port, proc, log = served
    await _run_battery(port)
    assert proc.returncode is None  # the process stayed up through all of it
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        assert await proc.wait() == 0
    written = log.read_bytes()
    assert b"rejected a malformed request" in written  # it did log, just not the token
    assert MARK[:16].encode() not in written
    assert b"Traceback" not in written
