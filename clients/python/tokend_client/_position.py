"""Noticing that tokend's Redis lost data or went back to an older snapshot.

tokend keeps the position of each partition of its Redis data in two keys:
``<prefix>:{T}:epoch`` (a new one each time tokend fences a partition that lost data)
and ``<prefix>:{T}:gen`` (raised by every revocation), and the partition count in
``<prefix>:partitions``. A Redis whose position is below the one seen before, or that has
no epoch marker, may have lost revocations that tokend has not fenced yet: the
listener keeps retrying (and reports not ready) until tokend has fenced it and
published ``all.revoked``, which the replay then applies. A missing marker counts
even at the listener's first start (it cannot tell a Redis that lost its data from a
new one): tokend sets the layout and epochs when it starts, so a subscriber becomes ready
once a tokend has started on that Redis and prefix.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .partitions import ClientKeys, PartitionKeys

__all__ = ["PositionWatch", "RedisBehind"]


class RedisBehind(RedisError):
    """tokend's Redis is behind a position seen before and tokend has not fenced it yet."""


class PositionWatch:
    """The highest ``(epoch, gen)`` of each partition of tokend's Redis seen at a
    (re)connect, and the partition count."""

    def __init__(self, prefix: str) -> None:
        self.keys = ClientKeys(prefix)
        self.seen: dict[int, tuple[int, int]] = {}
        self.partitions: tuple[PartitionKeys, ...] = ()

    async def layout(self, client: aioredis.Redis) -> tuple[PartitionKeys, ...]:
        """The deployment's partitions, or RedisBehind when no tokend has marked it."""
        raw = await client.get(self.keys.layout)
        if raw is None:
            raise RedisBehind(
                f"{self.keys.layout} is missing: no tokend has marked this Redis yet, or it "
                "lost its data; waiting for tokend"
            )
        count = int(raw)
        if len(self.partitions) != count:
            self.partitions = self.keys.partitions(count)
            self.seen = {}
        return self.partitions

    async def check(self, client: aioredis.Redis) -> None:
        """Record every partition's position, or raise RedisBehind when one went back."""
        async with client.pipeline(transaction=False) as pipe:
            for part in self.partitions:
                pipe.execute_command("MGET", part.epoch, part.gen)
            rows = cast(list[list[str | None]], await pipe.execute())
        positions: dict[int, tuple[int, int]] = {}
        for part, (epoch, gen) in zip(self.partitions, rows, strict=True):
            seen = self.seen.get(part.index)
            if epoch is None:
                if seen is not None:
                    raise RedisBehind(
                        f"tokend's Redis lost partition {part.index}; waiting for tokend's fence"
                    )
                # Never marked, or lost its data before we first looked: both look the same.
                raise RedisBehind(
                    f"{part.epoch} is missing: no tokend has marked this Redis yet, or it "
                    "lost its data; waiting for tokend"
                )
            position = (int(epoch), int(gen or 0))
            if seen is not None and position < seen:
                raise RedisBehind(
                    f"tokend's Redis partition {part.index} went back to older data; "
                    "waiting for its fence"
                )
            positions[part.index] = position
        self.seen.update(positions)
