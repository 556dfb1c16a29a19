"""Shared fixtures: real Redis and databases, one clean key prefix and database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.clock import Clock, FrozenClock, system_clock
from service.keyspace import Keyspace
from service.migrate import upgrade_async
from service.settings import Settings
from tests.support.http import TokendTestServer, forget_stopped_apps
from tests.support.redisdata import wipe
from tests.support.servers import PrivateRedis
from tests.support.settings import (  # noqa: F401 (REDIS_URL, TEST_KEK: still imported from here)
    FAST_ARGON2,
    POSTGRES_URL,
    REDIS_URL,
    TEST_KEK,
    drop_postgres_database,
    make_postgres_database,
)
from tokend_client.redis_target import RedisTarget, initialized

pytest_plugins = ["tests.support.topology"]


# --- the test's Redis: standalone, the session's cluster or its Sentinel setup ----------
#
# ``redis_mode`` (default standalone) decides which Redis "the test's Redis" is; every
# fixture below follows it (make_settings, redis_client, redis_prefix's cleanup,
# make_listener, emit_revocation). A test or module marked ``redis_modes`` runs once per
# mode; ``standalone_only`` (a private server, INFO of one server, a raw client of
# REDIS_URL) keeps a test of such a module standalone.

REDIS_MODES = ("standalone", "cluster", "sentinel")


@pytest.fixture(autouse=True)
def _forget_stopped_apps() -> Iterator[None]:
    """After each test, the apps it started can be collected (see forget_stopped_apps)."""
    yield
    forget_stopped_apps()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("redis_modes")
    if marker is None or "redis_mode" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("standalone_only") is not None:
        return
    modes = marker.args or REDIS_MODES
    unknown = set(modes) - set(REDIS_MODES)
    if unknown:
        raise pytest.UsageError(f"redis_modes: unknown mode(s) {sorted(unknown)}")
    metafunc.parametrize("redis_mode", modes, indirect=True)


@pytest.fixture
def redis_mode(request: pytest.FixtureRequest) -> str:
    """standalone (the shared Redis), cluster or sentinel (the session's topologies)."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture
def redis_env(request: pytest.FixtureRequest, redis_mode: str) -> dict[str, str]:
    """The TOKEND_REDIS_* variables of the test's Redis (for settings and subprocesses)."""
    if redis_mode == "standalone":
        return {"TOKEND_REDIS_MODE": "standalone", "TOKEND_REDIS_URL": REDIS_URL}
    topology = request.getfixturevalue(f"redis_{redis_mode}")
    env: dict[str, str] = topology.env()
    return env


@pytest.fixture
def redis_target(redis_env: dict[str, str]) -> RedisTarget:
    return RedisTarget.from_env(redis_env)


async def open_redis(target: RedisTarget, **options: Any) -> Any:
    """A client of ``target`` (decoded replies), ready for concurrent use."""
    client = target.client(**options)
    await initialized(client)  # a cluster's slot map before its first concurrent use
    return client


@pytest.fixture
async def redis_prefix(redis_target: RedisTarget) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (from every
    primary of a cluster: its SCAN asks each of them)."""
    prefix = f"tokend-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = await open_redis(redis_target)
    try:
        await wipe(client, prefix)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_client(redis_target: RedisTarget) -> AsyncIterator[Any]:
    """A client of the test's Redis: ``redis.asyncio.Redis`` (standalone; Sentinel: the
    primary's ``master_for``) or ``redis.asyncio.cluster.RedisCluster``."""
    client = await open_redis(redis_target)
    yield client
    await client.aclose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'tokend.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database: SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tokend.db'}"
        await upgrade_async(url)
        yield url
        return
    url = await make_postgres_database()
    try:
        await upgrade_async(url)
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def migrated_sqlite(sqlite_url: str) -> str:
    await upgrade_async(sqlite_url)
    return sqlite_url


@pytest.fixture
def make_settings(
    redis_prefix: str, migrated_sqlite: str, redis_env: dict[str, str]
) -> Callable[..., Settings]:
    """Settings for a test: the test's Redis (``redis_mode``), own Redis prefix, migrated
    SQLite file, fast argon2."""

    def make(**env: str) -> Settings:
        base = {
            **redis_env,
            "TOKEND_REDIS_PREFIX": redis_prefix,
            "TOKEND_DATABASE_URL": migrated_sqlite,
            "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
            # Suites register dozens of users from 127.0.0.1; the limit's own tests set it.
            "TOKEND_REGISTRATIONS_PER_IP": "10000",
            **FAST_ARGON2,
        }
        base.update(env)
        return Settings.from_env(base)

    return make


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> ClientFactory:
    """Start tokend on a real socket: ``await make_client(clock=..., **env)``."""

    async def make(
        settings: Settings | None = None, clock: Clock = system_clock, **env: str
    ) -> TestClient[Any, Any]:
        app = create_app(settings or make_settings(**env), clock=clock)
        client: TestClient[Any, Any] = await aiohttp_client(TokendTestServer(app))
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, to kill and restart (never the shared one)."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


# --- subscriber library (tokend_client) ---------------------------------------------

# XADD and PUBLISH in one step, like tokend's emit: the channel (named like the
# partition's stream) gets the stream JSON plus id.
_EMIT_LUA = """
local id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
redis.call('PUBLISH', KEYS[1], string.sub(ARGV[1], 1, -2) .. ',"id":"' .. id .. '"}')
return id
"""

EmitRevocation = Callable[..., Awaitable[str]]


@pytest.fixture
def emit_revocation(redis_client: Any, redis_prefix: str) -> EmitRevocation:
    """Write a synthetic v1 revocation event to the test prefix: ``await emit(type, **fields)``.

    It goes to the stream (and channel) of ``partition``: by default the partition of
    ``sub`` (partition 0 without one), of the default partition count, on the test's
    Redis (any mode: one key, one slot). Returns the stream id. ``client=`` sends it to
    another Redis (a private server); ``extra``
    fields are added to the event (``all.revoked``'s ``epoch``, ``partition``).
    """

    async def emit(
        type: str,
        *,
        sub: str | None = None,
        sid: str | None = None,
        jti: str | None = None,
        reason: str = "test",
        at: float | None = None,
        until: float | None = None,
        client: aioredis.Redis | None = None,
        partition: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        import json
        import time

        now = time.time() if at is None else at
        event = {
            "type": type,
            "sub": sub,
            "sid": sid,
            "jti": jti,
            "reason": reason,
            "at": now,
            "until": now + 960 if until is None else until,
            "v": 1,
            **(extra or {}),
        }
        keys = Keyspace(redis_prefix)
        if partition is None:
            part = keys.of(sub) if sub is not None else keys.partition(0)
        else:
            part = keys.partition(partition)
        target = client or redis_client
        entry_id = await target.eval(  # type: ignore[misc]
            _EMIT_LUA, 1, part.events, json.dumps(event, separators=(",", ":"))
        )
        return str(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)

    return emit


@pytest.fixture
async def make_listener(
    redis_prefix: str, redis_target: RedisTarget
) -> AsyncIterator[Callable[..., Any]]:
    """``make_listener(**kwargs)``: a started tokend_client.RevocationListener on the test
    prefix (``redis_url`` defaults to the test's Redis, in its mode); closed after the
    test."""
    from tokend_client import RevocationListener

    made: list[RevocationListener] = []

    async def make(redis_url: str | None = None, **kwargs: Any) -> RevocationListener:
        kwargs.setdefault("prefix", redis_prefix)
        listener = RevocationListener(redis_url or redis_target, **kwargs)
        made.append(listener)
        await listener.start()
        return listener

    yield make
    for listener in made:
        await listener.close()
