"""Signing-key rotation: publish the next key early, switch later, purge when unused."""

from __future__ import annotations

import logging

from service.clock import Clock
from service.events import key_rotated
from service.keys import SqlKeyStore, rotate
from service.sessions import SessionStore

log = logging.getLogger("tokend.workers.rotation")


async def rotate_and_announce(
    store: SqlKeyStore,
    sessions: SessionStore,
    *,
    alg: str,
    now: float,
    publish_delay: int,
    reason: str,
    after: int | None = None,
) -> int | None:
    """Create the next key and publish key.rotated; None when another process won the race."""
    generation = await rotate(store, alg, now, publish_delay, after)
    if generation is None:
        return None
    kid = next(k.kid for k in await store.load() if k.generation == generation)
    await sessions.publish(
        key_rotated(reason=reason, at=now, kid=kid, activates_at=now + publish_delay)
    )
    log.info("key generation %d (%s) published, signs from +%ds", generation, kid, publish_delay)
    return generation


class KeyRotationWorker:
    """Rotates on a period (or when the algorithm setting changed) and purges dead keys.

    A key is published in the JWKS as soon as it exists and signs only after
    ``publish_delay`` (at least the JWKS cache lifetime of subscribers). A retired key
    is purged ``keep_retired`` seconds after it stopped signing.
    """

    name = "key-rotation"

    def __init__(
        self,
        *,
        store: SqlKeyStore,
        sessions: SessionStore,
        clock: Clock,
        alg: str,
        period: int,
        publish_delay: int,
        keep_retired: int,
        interval: float = 30.0,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.clock = clock
        self.alg = alg
        self.period = period
        self.publish_delay = publish_delay
        self.keep_retired = keep_retired
        self.interval = interval

    async def step(self) -> int:
        """Rotate when due; purge keys retired longer than ``keep_retired``. 0 when idle."""
        now = self.clock()
        keys = await self.store.load()
        handled = 0
        newest = keys[-1] if keys else None
        if newest is None:
            handled += await self.store.create(1, self.alg, activates_at=now, now=now)
        elif newest.alg != self.alg or newest.created_at + self.period <= now:
            reason = "scheduled" if newest.alg == self.alg else "algorithm_changed"
            rotated = await rotate_and_announce(
                self.store,
                self.sessions,
                alg=self.alg,
                now=now,
                publish_delay=self.publish_delay,
                reason=reason,
                after=newest.generation,
            )
            handled += rotated is not None
        purged = await self.store.purge(now - self.keep_retired)
        if purged:
            log.info("purged %d retired signing keys", purged)
        return handled + purged
