"""Faults: Redis gone or its pool exhausted → 503 with Retry-After, never an unrecorded token."""

from __future__ import annotations

import asyncio
from typing import Any

from service.devredis import free_port
from service.http.appkeys import REDIS
from tests.support import PASSWORD, add_user, bearer, register, register_and_login


async def assert_503(resp: Any) -> None:
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"].isdigit()
    body = await resp.json()
    assert body["error"] == "temporarily_unavailable"
    assert "access_token" not in body


async def test_login_refresh_logout_without_redis_are_503(make_client, private_redis) -> None:
    client = await make_client(TOKEND_REDIS_URL=private_redis.url)
    tokens = await register_and_login(client)
    private_redis.kill()
    await assert_503(
        await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    )
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    await assert_503(resp)
    assert "X-Refresh-Token" not in resp.headers
    await assert_503(await client.post("/auth/logout", headers=bearer(tokens["access_token"])))
    await assert_503(await client.get("/auth/me", headers=bearer(tokens["access_token"])))


async def test_redis_never_reached_is_503(make_client) -> None:
    client = await make_client(TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    await add_user(client, "alice")  # users live in SQL (registration counts in Redis)
    await assert_503(
        await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    )


async def test_exhausted_pool_waits_then_503(make_client) -> None:
    client = await make_client(TOKEND_REDIS_POOL_SIZE="1", TOKEND_REDIS_POOL_TIMEOUT="0.2")
    tokens = await register_and_login(client)
    redis = client.app[REDIS]
    # hold the only connection for a second
    holder = asyncio.create_task(redis.blpop(["tokend-test-never"], timeout=1))
    await asyncio.sleep(0.05)
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    await assert_503(resp)
    await holder
    # the pool is back: the same refresh token still works (nothing was consumed)
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 200


async def test_kill_during_concurrent_refreshes_then_recover(make_client, private_redis) -> None:
    client = await make_client(TOKEND_REDIS_URL=private_redis.url)
    await register(client, "alice")
    logins = [
        await (
            await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
        ).json()
        for _ in range(20)
    ]

    async def hammer(tokens: dict[str, Any]) -> list[int]:
        statuses = []
        token = tokens["refresh_token"]
        for _ in range(10):
            resp = await client.post("/auth/refresh", headers=bearer(token))
            statuses.append(resp.status)
            if resp.status == 200:
                token = (await resp.json())["refresh_token"]
        return statuses

    async def killer() -> None:
        await asyncio.sleep(0.05)
        private_redis.kill()

    results = await asyncio.gather(*(hammer(t) for t in logins), killer())
    statuses = [s for r in results[:-1] for s in r]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses
    private_redis.start()  # same port, empty data
    # sessions are gone: the refresh fails closed ...
    resp = await client.post("/auth/refresh", headers=bearer(logins[0]["refresh_token"]))
    assert resp.status == 401
    # ... and the service recovered without a restart
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 200


async def test_redis_losing_its_script_cache_is_transparent(make_client, private_redis) -> None:
    import redis.asyncio as aioredis

    client = await make_client(TOKEND_REDIS_URL=private_redis.url)
    tokens = await register_and_login(client)
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    # the batched EVALSHA gets NOSCRIPT, loads the script and runs it once
    responses = await asyncio.gather(
        *(client.post("/auth/refresh", headers=bearer(tokens["refresh_token"])) for _ in range(5))
    )
    assert [r.status for r in responses] == [200] * 5
    jtis = {(await r.json())["refresh_token"] for r in responses}
    assert len(jtis) == 1
