"""How long the event streams keep their entries: the longest that any deliverer needs.

Every process that writes an event trims that partition's stream to its own retention
(``XADD ... MINID now - retention``, ``emit`` in lua/common.lua); the workers never trim.
A ``tokend work`` with webhook or back-channel endpoints needs the streams kept for
``TOKEND_WEBHOOK_RETENTION``, but an API (or a CLI command) started without those settings
would trim them to about twenty minutes and the worker would report the rest lost.

So a deliverer advertises the retention it needs in Redis (``P:retention``, expiring after
that retention: when no deliverer has run for that long, nothing it could still deliver is
kept anyway), and every writer trims to no less than what it last read there, read again at
most every ``REFRESH`` seconds. The advertisement can only make streams longer, never
shorter than a writer's own setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

log = logging.getLogger("tokend.retention")

REFRESH = 30.0
# seconds a read may take before the last value is kept
READ_TIMEOUT = 1.0
# An advertised value above this is not tokend's (a year and a month, in seconds).
MAX_RETENTION = 400 * 86_400


class StreamRetention:
    """The retention (seconds) this process trims the event streams to."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        configured: int,
        *,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.configured = configured
        self.refresh_interval = refresh
        self._clock = clock
        self._advertised = 0
        self._due = 0.0

    @property
    def seconds(self) -> int:
        """This process's own retention, or the advertised one when that is longer."""
        return max(self.configured, self._advertised)

    async def refresh(self) -> None:
        """Read the advertised retention again when the last read is ``refresh`` old.

        A failed or slow read keeps the last value: the write that follows meets the same
        fault and reports it."""
        now = self._clock()
        if now < self._due:
            return
        self._due = now + self.refresh_interval
        try:
            # bounded: on a cluster the key's node may be the one failing over
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await self.redis.get(self.key)
        except Exception as exc:  # any client failure: keep the last value
            log.debug("could not read the advertised stream retention: %r", exc)
            return
        advertised = _parse(raw)
        if advertised > self.configured and advertised != self._advertised:
            log.warning(
                "a deliverer needs the event streams kept %d s; this process was configured "
                "for %d s and keeps them %d s (set TOKEND_WEBHOOKS and the back-channel "
                "clients here as for tokend work)",
                advertised,
                self.configured,
                advertised,
            )
        self._advertised = advertised


def _parse(raw: object) -> int:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        return 0
    value = int(raw)
    return value if value <= MAX_RETENTION else 0


async def advertise(redis: aioredis.Redis, key: str, seconds: int) -> None:
    """Tell every writer that a deliverer needs the streams kept ``seconds``."""
    await redis.set(key, str(seconds), ex=seconds)
