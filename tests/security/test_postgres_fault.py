"""PostgreSQL stopped during login, on a private cluster (never the shared one): 503 within
a bounded time, no failed-login count moves, and logins work again once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.keyspace import Keyspace
from service.migrate import upgrade_async
from tests.support import PASSWORD, PostgresServer, postgres_bin, register

pytestmark = [pytest.mark.security, pytest.mark.postgres]

BOUND = 10.0  # seconds a login may take to give up on a stopped database


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    server = PostgresServer(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


async def _counters(redis_client: Any, prefix: str) -> dict[str, str]:
    keys = [k async for k in redis_client.scan_iter(match=Keyspace(prefix).pattern_under("lf"))]
    values = await redis_client.mget(keys) if keys else []
    return {k: v for k, v in zip(keys, values, strict=True) if v not in (None, "0")}


async def _login(client: Any, password: str = PASSWORD) -> tuple[int, Any, float]:
    started = time.monotonic()
    resp = await client.post("/auth/login", json={"username": "alice", "password": password})
    await resp.read()
    return resp.status, resp.headers, time.monotonic() - started


async def test_postgres_stopped_during_login(
    make_client, postgres, redis_client, redis_prefix
) -> None:
    await upgrade_async(postgres.url)
    client = await make_client(
        TOKEND_DATABASE_URL=postgres.url,
        TOKEND_LOGIN_FAILURES_PER_USER="1000",
        TOKEND_LOGIN_FAILURES_PER_IP="1000",
    )
    await register(client, "alice")
    assert (await _login(client))[0] == 200
    assert (await _login(client, "wrong password"))[0] == 401
    before = await _counters(redis_client, redis_prefix)
    assert before  # the one failure is counted (per user and per IP)

    # stopped while logins are on their way
    logins = [asyncio.create_task(_login(client, p)) for p in [PASSWORD, "wrong password"] * 10]
    await asyncio.sleep(0.01)
    await asyncio.to_thread(postgres.stop)
    results = await asyncio.gather(*logins)
    assert {status for status, _, _ in results} <= {200, 401, 503}, results
    moved_by_the_race = await _counters(redis_client, redis_prefix)

    # stopped: every login is a 503 within the bound, and counts nothing
    for password in (PASSWORD, "wrong password"):
        for _ in range(5):
            status, headers, elapsed = await _login(client, password)
            assert status == 503
            assert headers["Retry-After"].isdigit()
            assert elapsed < BOUND, elapsed
    assert await _counters(redis_client, redis_prefix) == moved_by_the_race
    resp = await client.get("/readyz")
    assert resp.status == 503

    # back: logins work again, no restart of tokend
    await asyncio.to_thread(postgres.start)
    deadline = time.monotonic() + 20
    while (status := (await _login(client))[0]) != 200:
        assert status == 503
        assert time.monotonic() < deadline, "no recovery after PostgreSQL came back"
        await asyncio.sleep(0.2)
    assert (await client.get("/readyz")).status == 200


async def test_frozen_postgres_is_503_within_the_bound(
    make_client, postgres, redis_client, redis_prefix
) -> None:
    """A database that stops answering (not even refusing) must not hang a login."""
    await upgrade_async(postgres.url)
    client = await make_client(TOKEND_DATABASE_URL=postgres.url)
    await register(client, "alice")
    assert (await _login(client))[0] == 200
    before = await _counters(redis_client, redis_prefix)
    postgres.freeze()
    try:
        results = await asyncio.gather(*(_login(client) for _ in range(3)))
        for status, _, elapsed in results:
            assert status == 503
            assert elapsed < BOUND, elapsed
        assert await _counters(redis_client, redis_prefix) == before
    finally:
        postgres.thaw()
    deadline = time.monotonic() + 20
    while (status := (await _login(client))[0]) != 200:
        assert status == 503
        assert time.monotonic() < deadline, "no recovery after PostgreSQL came back"
        await asyncio.sleep(0.2)
