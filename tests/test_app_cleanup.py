"""Stopping the application or the workers gives back every connection it opened to Redis: a process
that builds and stops apps (a test suite, an embedding service) must not pile them up
until Redis refuses new clients (``max number of clients reached``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from service.app import create_app
from tests.support.http import TokendTestServer, forget_stopped_apps
from tests.support.poll import until
from workers.main import run_workers


async def _others(admin: aioredis.Redis) -> int:
    """Clients of the private Redis besides ``admin`` itself."""
    return len(await admin.client_list()) - 1


async def test_a_stopped_app_leaves_no_redis_connection(make_settings: Any, private_redis) -> None:
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        for _ in range(3):
            client: TestClient[Any, Any] = TestClient(
                TokendTestServer(create_app(make_settings(TOKEND_REDIS_URL=private_redis.url)))
            )
            await client.start_server()
            resp = await client.get("/readyz")
            assert resp.status == 200
            assert await _others(admin) > 0  # the running app holds connections
            await client.close()

        async def none_left() -> bool:
            return await _others(admin) == 0

        # a closed socket is seen by Redis a moment later: a deadline, not a retry
        await until(none_left, 5, "every connection of the stopped apps closed")
    finally:
        await admin.aclose()


async def test_stopped_workers_leave_no_redis_connection(make_settings: Any, private_redis) -> None:
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        settings = make_settings(TOKEND_REDIS_URL=private_redis.url)
        task = asyncio.create_task(run_workers(settings, handle_signals=False))

        async def connected() -> bool:
            return await _others(admin) > 0

        await until(connected, 10, "the workers connected to Redis")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        async def none_left() -> bool:
            return await _others(admin) == 0

        await until(none_left, 5, "every connection of the stopped workers closed")
    finally:
        await admin.aclose()


async def test_a_stopped_app_is_garbage(make_settings: Any) -> None:
    """Once stopped, an app that served requests is collected (the suite relies on it: a
    heap of every app it ran made full collections stop the event loop for seconds)."""
    app = create_app(make_settings())
    client: TestClient[Any, Any] = TestClient(TokendTestServer(app))
    await client.start_server()
    for path in ("/readyz", "/auth/me", "/.well-known/jwks.json"):
        await (await client.get(path)).read()
    await client.close()
    gone = weakref.ref(app)
    del app, client
    forget_stopped_apps()
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
