"""A subscriber must not trust a Redis that tokend has not marked (defect 8).

tokend keeps ``<prefix>:partitions`` (the partition count) and each partition's
``<prefix>:{T}:epoch`` in Redis (service/fence.py): set when it first starts on a Redis,
the epochs replaced by a fence after data loss. A Redis without them is new or lost its
data; a freshly started ``RevocationListener`` cannot tell which, so it stays not ready
(its middleware answers 503 with ``Retry-After``) until tokend has marked or fenced every
partition.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from service.http.appkeys import SETTINGS
from service.keyspace import Keyspace
from tests.conftest import REDIS_URL
from tests.support import bearer, register_and_login, unverified
from tokend_client import CLAIMS_KEY, RevocationListener, TokenVerifier, setup

pytestmark = pytest.mark.security

ISSUER = "http://127.0.0.1:8080"


async def claims_handler(request: web.Request) -> web.Response:
    return web.json_response(request[CLAIMS_KEY])


@pytest.fixture
async def unmarked_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    """A prefix no tokend has ever used on the shared Redis; its keys go afterwards."""
    prefix = f"tokend-unmarked-{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = [k async for k in redis_client.scan_iter(match=Keyspace(prefix).pattern)]
    if keys:
        await redis_client.delete(*keys)


async def protected(aiohttp_client: Any, tokend: Any, listener: RevocationListener) -> Any:
    verifier = TokenVerifier(
        str(tokend.make_url("/.well-known/jwks.json")),
        issuer=ISSUER,
        audience="tokend",
        min_refetch_interval=0,
    )
    app = web.Application()
    setup(app, verifier, listener)
    app.router.add_get("/protected", claims_handler)
    return await aiohttp_client(app)


async def test_not_ready_until_tokend_has_marked_the_redis(
    make_client, aiohttp_client, redis_client, unmarked_prefix
) -> None:
    tokend = await make_client()  # signs the tokens; its own prefix is marked
    tokens = await register_and_login(tokend)
    listener = RevocationListener(
        REDIS_URL, prefix=unmarked_prefix, backoff_initial=0.05, backoff_max=0.2
    )
    service = await protected(aiohttp_client, tokend, listener)
    await asyncio.sleep(1.0)  # many connection attempts
    assert not listener.ready, "ready on a Redis without tokend's epoch marker"
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"] == "temporarily_unavailable"

    # what tokend does: the layout first (still not trusted without the epochs) ...
    keys = Keyspace(unmarked_prefix)
    await redis_client.set(keys.layout, len(keys.all), nx=True)
    await asyncio.sleep(1.0)
    assert not listener.ready, "ready on a Redis without tokend's epoch markers"
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 503
    # ... then every partition's epoch
    for part in keys.all:
        await redis_client.set(part.epoch, 1, nx=True)
    async with asyncio.timeout(5):
        await listener.wait_ready()
    assert listener.ready
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 200


async def test_a_tokend_deployment_marks_its_redis(
    make_client, aiohttp_client, redis_client, redis_prefix
) -> None:
    """The fixtures' real app (tokend's start-up fence) sets the marker: subscribers get
    ready at once and let valid tokens through."""
    tokend = await make_client()
    keys = Keyspace(redis_prefix)
    assert await redis_client.get(keys.layout) == str(len(keys.all))
    assert [await redis_client.get(p.epoch) for p in keys.all] == ["1"] * len(keys.all)
    listener = RevocationListener(REDIS_URL, prefix=redis_prefix)
    started = time.monotonic()
    service = await protected(aiohttp_client, tokend, listener)
    async with asyncio.timeout(5):
        await listener.wait_ready()
    print(f"\nlistener ready {1000 * (time.monotonic() - started):.1f} ms after start")
    tokens = await register_and_login(tokend)
    resp = await service.get("/protected", headers=bearer(tokens["access_token"]))
    assert resp.status == 200


async def test_a_fresh_listener_after_data_loss_waits_for_tokends_fence(
    make_client, private_redis
) -> None:
    """Redis restarts empty; a subscriber starting right then must not be ready before
    tokend has fenced the Redis (every partition: tokend knew each one's position), and
    once ready it denies the tokens from before."""
    tokend = await make_client(TOKEND_REDIS_URL=private_redis.url)
    tokens = await register_and_login(tokend)
    claims = unverified(tokens["access_token"])[1]
    private_redis.kill()
    await asyncio.to_thread(private_redis.start)  # empty: no layout, no epoch markers
    listener = RevocationListener(
        private_redis.url,
        prefix=tokend.server.app[SETTINGS].redis_prefix,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await listener.start()
    try:
        # (a hang guard: tokend fences the partitions one after another, each waiting for
        # the second to turn, so 16 partitions take about 16 s)
        async with asyncio.timeout(45):
            while not listener.ready:
                await asyncio.sleep(0.001)
        assert listener.is_revoked(claims), "ready before tokend fenced the emptied Redis"
        partitions = len(Keyspace(listener.prefix).all)
        assert listener.applied["all.revoked"] == partitions  # one fence per partition
        assert set(listener.deny_list.fenced) == set(range(partitions))
    finally:
        await listener.close()
