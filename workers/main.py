"""Entry point of the worker process: build the workers from settings and run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from service.clock import Clock, system_clock
from service.redisconn import make_redis
from service.settings import Settings

from .base import Worker, WorkerRunner, heartbeat_fresh

log = logging.getLogger("tokend.workers")


def build_workers(settings: Settings, clock: Clock) -> list[Worker]:
    """The background workers tokend runs (expiry and key rotation join here)."""
    return []


async def run_workers(settings: Settings, *, clock: Clock = system_clock) -> None:
    """Run the workers until SIGTERM or SIGINT, finishing the current batch first."""
    redis = make_redis(settings.redis_url, pool_size=8, pool_timeout=5.0)
    runner = WorkerRunner(
        redis=redis,
        prefix=settings.redis_prefix,
        workers=build_workers(settings, clock),
        clock=clock,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(runner.close()))
    log.info("workers started: %s", ", ".join(w.name for w in runner.workers) or "heartbeat only")
    try:
        await runner.run()
    finally:
        await redis.aclose()


async def check(settings: Settings, max_age: float = 30.0) -> bool:
    """Whether this host's workers have a fresh heartbeat."""
    redis = make_redis(settings.redis_url, pool_size=1, pool_timeout=2.0)
    try:
        return await heartbeat_fresh(redis, settings.redis_prefix, system_clock(), max_age)
    finally:
        await redis.aclose()
