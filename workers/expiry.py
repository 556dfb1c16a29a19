"""Refresh-session expiry: sweep due sessions from each partition's deadline index."""

from __future__ import annotations

from service.clock import Clock
from service.sessions import SessionStore


class ExpiryWorker:
    """Ends sessions past their idle or absolute deadline and publishes session.expired.

    Each batch is one Lua script per partition (atomic), so several workers can sweep at
    once without double events, and a killed worker leaves no half-done batch. The cost
    is O(log n + due) per partition: live sessions that are not due are never touched.
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
        """Sweep one batch from every partition; how many sessions ended."""
        now = self.clock()
        total = 0
        for part in range(self.sessions.keys.partitions):
            total += await self.sessions.sweep_expired(partition=part, now=now, batch=self.batch)
        self.expired_total += total
        return total
