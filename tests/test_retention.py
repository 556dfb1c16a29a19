"""The stream retention a writer trims to (service/retention.py): its own, or the longer
one a deliverer advertised in Redis, read again at most every refresh interval."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.devredis import free_port
from service.fence import RedisFence
from service.keyspace import Keyspace
from service.retention import MAX_RETENTION, READ_TIMEOUT, StreamRetention, advertise
from service.sessions import SessionStore
from service.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key(redis_prefix: str) -> str:
    return Keyspace(redis_prefix).retention


async def test_a_longer_advertised_retention_wins_and_is_read_once_per_interval(
    redis_client: Any, key: str
) -> None:
    clock = Clock()
    trim = StreamRetention(redis_client, key, 1230, refresh=30, clock=clock)
    await trim.refresh()
    assert trim.seconds == 1230  # nothing advertised: its own

    await advertise(redis_client, key, 604_800)
    await trim.refresh()
    assert trim.seconds == 1230  # read 0 s ago: not again yet
    clock.now += 30
    await trim.refresh()
    assert trim.seconds == 604_800
    assert 0 < await redis_client.ttl(key) <= 604_800  # the advertisement expires

    await redis_client.delete(key)  # the advertisement expired: its own again
    clock.now += 30
    await trim.refresh()
    assert trim.seconds == 1230


async def test_an_advertisement_never_shortens_a_writers_retention(
    redis_client: Any, key: str
) -> None:
    trim = StreamRetention(redis_client, key, 604_800, refresh=0)
    await advertise(redis_client, key, 60)
    await trim.refresh()
    assert trim.seconds == 604_800


@pytest.mark.parametrize(
    "value", ["abc", "-5", "1e9", "", str(MAX_RETENTION + 1), "9" * 20, "12.5", "²", "٣٠٠"]
)
async def test_a_value_that_is_not_a_retention_is_ignored(
    redis_client: Any, key: str, value: str
) -> None:
    trim = StreamRetention(redis_client, key, 1230, refresh=0)
    await redis_client.set(key, value)
    await trim.refresh()
    assert trim.seconds == 1230


async def test_a_redis_fault_keeps_the_last_value(redis_client: Any, key: str) -> None:
    await advertise(redis_client, key, 7200)
    clock = Clock()
    trim = StreamRetention(redis_client, key, 1230, refresh=30, clock=clock)
    await trim.refresh()
    assert trim.seconds == 7200
    gone = aioredis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nobody listens
    try:
        trim.redis = gone
        clock.now += 30
        await trim.refresh()  # no exception: the write that follows reports the fault
        assert trim.seconds == 7200
    finally:
        await gone.aclose()


async def test_a_redis_that_does_not_answer_keeps_the_last_value_within_a_second(
    redis_client: Any, key: str
) -> None:
    await advertise(redis_client, key, 7200)
    clock = Clock()
    trim = StreamRetention(redis_client, key, 1230, refresh=30, clock=clock)
    await trim.refresh()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # takes the command, never answers
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mute = aioredis.Redis(port=port, socket_timeout=30)
    try:
        trim.redis = mute
        clock.now += 30
        started = time.monotonic()
        await trim.refresh()
        assert time.monotonic() - started < READ_TIMEOUT + 0.5
        assert trim.seconds == 7200
    finally:
        await mute.aclose()
        server.close()


async def test_a_writer_below_the_advertised_retention_says_so_once(
    redis_client: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    trim = StreamRetention(redis_client, key, 1230, refresh=0)
    await advertise(redis_client, key, 604_800)
    with caplog.at_level(logging.WARNING, logger="tokend.retention"):
        await trim.refresh()
        await trim.refresh()
    warnings = [r.getMessage() for r in caplog.records if r.name == "tokend.retention"]
    assert len(warnings) == 1
    assert "604800" in warnings[0] and "TOKEND_WEBHOOKS" in warnings[0]


async def test_the_store_and_the_fence_of_a_process_trim_alike(
    redis_client: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    fence = RedisFence.from_settings(redis_client, settings, None, lambda: 0.0)
    store = SessionStore.from_settings(redis_client, settings, fence)
    assert store.trim is fence.trim
    assert fence.trim.configured == settings.stream_retention
    alone = SessionStore.from_settings(redis_client, settings)
    assert alone.trim.key == Keyspace(settings.redis_prefix).retention
    assert alone.trim.configured == settings.stream_retention
