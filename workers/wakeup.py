"""Wake-ups from the partitions' event channels, for deliverers that poll the streams.

tokend publishes every event on the channel named like its partition's stream, in the
same script that appends it, so a message means the stream already holds the entry. A
deliverer that found nothing waits on its ``Event`` here instead of sleeping out its
poll: it is woken within milliseconds of the publication. The poll stays the backstop:
a message missed while the subscription reconnects (or one Redis dropped) only delays
that event to the next poll, never loses it, since the position lives in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from redis.exceptions import RedisClusterException, RedisError

from service.keyspace import Partition
from tokend_client.redis_target import RedisTarget

log = logging.getLogger("tokend.webhooks")

RECONNECT = 1.0  # seconds between subscription attempts while Redis is away
READ_WAIT = 0.25  # seconds a read waits for a message: how soon close() is seen


class ChannelWake:
    """One subscription to the partitions' channels; ``event(index)`` gives a waiter its
    own ``asyncio.Event``, set on each message of that partition (and at close)."""

    def __init__(self, target: RedisTarget, partitions: tuple[Partition, ...]) -> None:
        self.target = target
        self.channels = {p.events: p.index for p in partitions}
        self._waiters: defaultdict[int, list[asyncio.Event]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        #: messages that woke someone; subscriptions made (1 while it never broke)
        self.messages = 0
        self.subscriptions = 0

    def event(self, index: int) -> asyncio.Event:
        """A new Event for a waiter on partition ``index``."""
        wake = asyncio.Event()
        self._waiters[index].append(wake)
        return wake

    def start(self) -> None:
        """Follow the channels in a task (again if the last one ended)."""
        if not self._closing.is_set() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="webhook-wakeups")

    async def close(self) -> None:
        """Stop following, and wake every waiter so none sleeps out its poll."""
        self._closing.set()
        for waiters in self._waiters.values():
            for wake in waiters:
                wake.set()
        if self._task is not None:
            # it sees _closing within READ_WAIT and closes its connection itself; a
            # cancel in the middle of a redis-py read can leave the connection half-done
            done, _ = await asyncio.wait({self._task}, timeout=READ_WAIT + 2)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _run(self) -> None:
        while not self._closing.is_set():
            try:
                await self._follow()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.info("webhook wake-ups: %r; polling only, subscribing again", exc)
            except Exception as exc:  # redis-py mid-failover: AttributeError, RuntimeError
                # only a shortcut: whatever breaks it, the deliverers still poll
                log.warning("webhook wake-ups failed: %r; subscribing again", exc, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), RECONNECT)

    async def _follow(self) -> None:
        # RESP2: Redis drops a RESP2 subscriber that falls behind (the pub/sub output
        # limit), which only sends this one back to polling for a moment
        client = await self.target.subscriber(
            protocol=2, socket_connect_timeout=2, health_check_interval=30
        )
        try:
            async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(*self.channels)
                self.subscriptions += 1
                while not self._closing.is_set():
                    message = await pubsub.get_message(timeout=READ_WAIT)
                    if message is None or message.get("type") != "message":
                        continue
                    index = self.channels.get(message["channel"])
                    if index is not None:
                        self.messages += 1
                        for wake in self._waiters[index]:
                            wake.set()
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
