"""Noticing that tokend's Redis lost data or went back to an older snapshot.

tokend keeps the position of its Redis data in two keys: ``<prefix>:epoch`` (a new
one each time tokend fences a Redis that lost data) and ``<prefix>:gen`` (raised by
every revocation). A Redis whose position is below the one seen before, or that has
no epoch marker, may have lost revocations that tokend has not fenced yet: the
listener keeps retrying (and reports not ready) until tokend has fenced it and
published ``all.revoked``, which the replay then applies. A missing marker counts
even at the listener's first start (it cannot tell a Redis that lost its data from a
new one): tokend sets ``<prefix>:epoch`` when it starts, so a subscriber becomes ready
once a tokend has started on that Redis and prefix.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ._keys import ClientKeys

__all__ = ["PositionWatch", "RedisBehind"]


class RedisBehind(RedisError):
    """tokend's Redis is behind a position seen before and tokend has not fenced it yet."""


class PositionWatch:
    """The highest ``(epoch, gen)`` of tokend's Redis seen at a (re)connect."""

    def __init__(self, prefix: str) -> None:
        keys = ClientKeys(prefix)
        self.keys = (keys.epoch, keys.gen)
        self.seen: tuple[int, int] | None = None

    async def check(self, client: aioredis.Redis) -> None:
        """Record the position, or raise RedisBehind when it went back."""
        epoch, gen = cast(list[str | None], await client.mget(*self.keys))
        if epoch is None:
            if self.seen is not None:
                raise RedisBehind("tokend's Redis lost its data; waiting for tokend's fence")
            # Never marked, or lost its data before we first looked: both look the same.
            raise RedisBehind(
                f"{self.keys[0]} is missing: no tokend has marked this Redis yet, or it "
                "lost its data; waiting for tokend"
            )
        position = (int(epoch), int(gen or 0))
        if self.seen is not None and position < self.seen:
            raise RedisBehind("tokend's Redis went back to older data; waiting for its fence")
        self.seen = position
