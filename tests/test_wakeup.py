"""The deliverers' wake-ups (workers/wakeup.py): a message on a partition's channel wakes
that partition's waiters, and a subscription that fails in any way comes back."""

from __future__ import annotations

import asyncio
from typing import Any

from service.keyspace import Keyspace
from tests.support.poll import until
from tokend_client.redis_target import RedisTarget
from workers.wakeup import ChannelWake


async def test_a_failing_subscription_comes_back_and_wakes_the_partitions_waiters(
    redis_target: RedisTarget, redis_prefix: str, redis_client: Any
) -> None:
    keys = Keyspace(redis_prefix)
    wake = ChannelWake(redis_target, keys.all)
    calls = 0
    real = redis_target.subscriber

    async def flaky(**options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # what redis-py was seen raising during a cluster failover
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await real(**options)

    wake.target = type("Flaky", (), {"subscriber": staticmethod(flaky)})()  # type: ignore[assignment]
    first, other = wake.event(keys.partition(0).index), wake.event(keys.partition(1).index)
    wake.start()
    try:
        await until(lambda: wake.subscriptions == 1, 10, "the second subscription")
        assert calls == 2
        await redis_client.publish(keys.partition(0).events, "{}")
        await asyncio.wait_for(first.wait(), 5)
        assert not other.is_set()  # another partition's waiters sleep on
    finally:
        await wake.close()
    assert other.is_set()  # close wakes everyone
