"""The fixtures that follow ``redis_mode`` (tests/conftest.py): a test marked
``redis_modes`` really runs on standalone, on the session's cluster and on its Sentinel
primary, and its prefix's keys are deleted from every primary of a cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from service.keyspace import Keyspace
from tests.support.redisdata import wipe

pytestmark = pytest.mark.redis_modes()


async def test_settings_and_client_follow_the_mode(
    redis_mode: str, make_settings: Any, redis_client: Any, request: pytest.FixtureRequest
) -> None:
    settings = make_settings()
    assert settings.redis.mode == redis_mode
    assert isinstance(redis_client, RedisCluster) is (redis_mode == "cluster")
    if redis_mode == "sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        primary_port = sentinel.primary.port
        info = await redis_client.info("server")
        assert info["tcp_port"] == primary_port


async def test_wipe_reaches_every_primary(
    redis_mode: str, redis_client: Any, redis_prefix: str, request: pytest.FixtureRequest
) -> None:
    keys = Keyspace(redis_prefix)
    names = [p.epoch for p in keys.all] + [keys.layout, keys.heartbeat]
    for name in names:
        await redis_client.set(name, 1)
    if redis_mode == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        owners = {cluster.primary_for_key(name).port for name in names}
        assert len(owners) == len(cluster.primaries())  # the keys are on every primary
    assert await wipe(redis_client, redis_prefix) == len(names)
    left = [k async for k in redis_client.scan_iter(match=keys.pattern)]
    assert left == []
    if redis_mode == "cluster":
        for primary in request.getfixturevalue("redis_cluster").primaries():
            assert primary.cmd("KEYS", keys.pattern) == []
