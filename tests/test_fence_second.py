"""A fence denies every access token with ``iat`` up to its time, and tokens carry whole
seconds: a token issued just after a fence, in its second, must still be good. tokend
issues it at the second after the fence (create.lua reports the partition's fence)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from service.http.appkeys import SETTINGS
from service.keyspace import Keyspace
from tests.support import bearer, login, register, register_and_login, unverified


async def test_the_login_that_runs_a_fence_gets_a_token_that_is_good(
    make_client: Any, private_redis: Any
) -> None:
    tokend = await make_client(TOKEND_REDIS_URL=private_redis.url)
    await register_and_login(tokend, "alice")
    private_redis.kill()
    await asyncio.to_thread(private_redis.start)  # empty: this login finds it behind
    tokens = await login(tokend, "alice")
    resp = await tokend.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200, await resp.text()


async def test_a_login_in_the_second_of_another_process_fence_gets_a_good_token(
    make_client: Any, redis_client: Any
) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    prefix = tokend.server.app[SETTINGS].redis_prefix
    alice = unverified((await login(tokend, "alice"))["access_token"])[1]["sub"]
    fence_key = Keyspace(prefix).of(alice).fence
    # another process fenced alice's partition just now, in this very second
    fenced_at = time.time()
    await redis_client.set(fence_key, f"{fenced_at:.6f}", ex=600)
    tokens = await login(tokend, "alice")
    claims = unverified(tokens["access_token"])[1]
    assert claims["iat"] > fenced_at  # issued after the fence's second, not in it
    assert claims["iat"] - fenced_at <= 1.0
    resp = await tokend.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200, await resp.text()


async def test_a_refresh_in_the_second_of_a_fence_gets_a_good_token(
    make_client: Any, redis_client: Any
) -> None:
    tokend = await make_client()
    tokens = await register_and_login(tokend, "alice")
    sub = unverified(tokens["access_token"])[1]["sub"]
    fence_key = Keyspace(tokend.server.app[SETTINGS].redis_prefix).of(sub).fence
    fenced_at = time.time()
    await redis_client.set(fence_key, f"{fenced_at:.6f}", ex=600)
    resp = await tokend.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 200, await resp.text()
    access = (await resp.json())["access_token"]
    assert unverified(access)[1]["iat"] > fenced_at
    resp = await tokend.get("/auth/me", headers=bearer(access))
    assert resp.status == 200, await resp.text()
