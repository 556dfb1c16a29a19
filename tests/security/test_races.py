"""1,000 concurrent refreshes of one refresh token released by a barrier (as Ory Hydra's own
stress test does): one rotation, one successor for everyone, and a replay after the grace
revokes the session."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from service.http.appkeys import METRICS, SETTINGS
from service.keyspace import Keyspace
from tests.support import bearer, register_and_login, unverified
from tests.support.redisdata import stream_events

pytestmark = pytest.mark.security

CONCURRENT = 1000


async def test_a_thousand_concurrent_refreshes_of_one_token(
    make_client, clock, redis_client
) -> None:
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    tokens = await register_and_login(client)
    original = unverified(tokens["refresh_token"])[1]
    url = str(client.make_url("/auth/refresh"))
    barrier = asyncio.Event()
    waiting = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        # one connection each, opened before the barrier, so the requests leave together
        async def one() -> tuple[int, dict[str, Any]]:
            nonlocal waiting
            async with http.get(str(client.make_url("/healthz"))) as resp:
                await resp.read()
            waiting += 1
            await barrier.wait()
            async with http.post(url, headers=bearer(tokens["refresh_token"])) as resp:
                return resp.status, await resp.json()

        tasks = [asyncio.create_task(one()) for _ in range(CONCURRENT)]
        async with asyncio.timeout(60):
            while waiting < CONCURRENT:
                await asyncio.sleep(0.01)
        barrier.set()
        results = await asyncio.gather(*tasks)

    statuses = [status for status, _ in results]
    assert statuses == [200] * CONCURRENT, sorted(set(statuses))
    successors = {unverified(body["refresh_token"])[1]["jti"] for _, body in results}
    assert len(successors) == 1  # one chain: everyone got the same successor
    successor = successors.pop()
    access = {unverified(body["access_token"])[1]["jti"] for _, body in results}
    assert len(access) == CONCURRENT
    metrics = client.app[METRICS].registry
    assert metrics.get_sample_value("tokend_refreshes_total", {"result": "rotated"}) == 1
    assert metrics.get_sample_value("tokend_refreshes_total", {"result": "grace"}) == 999

    prefix = client.app[SETTINGS].redis_prefix
    part = Keyspace(prefix).of(original["sub"])
    state = await redis_client.hgetall(part.session(original["sid"]))
    assert state["cur"] == successor and state["prev"] == original["jti"]

    # after the grace, replaying the original is reuse: the whole session is revoked
    clock.advance(11)
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 401
    assert (await resp.json())["error_description"].startswith("refresh token reuse detected")
    current = results[0][1]["refresh_token"]
    assert (await client.post("/auth/refresh", headers=bearer(current))).status == 401
    for _, body in results[:50]:
        resp = await client.get("/auth/me", headers=bearer(body["access_token"]))
        assert resp.status == 401
    assert await redis_client.exists(part.session(original["sid"])) == 0
    reasons = [e["reason"] for e in await stream_events(redis_client, prefix)]
    assert reasons == ["refresh_token_reuse"]
