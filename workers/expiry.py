"""Refresh-session expiry: sweep due sessions from the sharded deadline index."""

from __future__ import annotations

from service.clock import Clock
from service.keyspace import EXPIRY_SHARDS
from service.sessions import SessionStore


class ExpiryWorker:
    """Ends sessions past their idle or absolute deadline and publishes session.expired.

    Each batch is one Lua script per shard (atomic), so several workers can sweep at
    once without double events, and a killed worker leaves no half-done batch. The cost
    is O(log n + due) per shard: live sessions that are not due are never touched.
    """

    name = "expiry"

    def __init__(
        self, *, sessions: SessionStore, clock: Clock, batch: int = 500, interval: float = 1.0
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.batch = batch
        self.interval = interval
        self.expired_total = 0

    async def step(self) -> int:
        """Sweep one batch from every shard; how many sessions ended."""
        now = self.clock()
        total = 0
        for shard in range(EXPIRY_SHARDS):
            total += await self.sessions.sweep_expired(shard=shard, now=now, batch=self.batch)
        self.expired_total += total
        return total
