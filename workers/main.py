"""Entry point of the worker process: build the workers from settings and run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.app import resolve_kek
from service.clock import Clock, system_clock
from service.crypto import Sealer
from service.db import make_engine
from service.keys import SqlKeyStore
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.settings import Settings

from .base import Worker, WorkerRunner, heartbeat_fresh
from .expiry import ExpiryWorker
from .rotation import KeyRotationWorker

log = logging.getLogger("tokend.workers")


def build_workers(
    settings: Settings, *, redis: aioredis.Redis, keys: SqlKeyStore, clock: Clock
) -> list[Worker]:
    """The background workers tokend runs."""
    sessions = SessionStore.from_settings(redis, settings)
    return [
        ExpiryWorker(sessions=sessions, clock=clock),
        KeyRotationWorker(
            store=keys,
            sessions=sessions,
            clock=clock,
            alg=settings.signing_alg,
            period=settings.key_rotation_period,
            publish_delay=settings.key_publish_delay,
            keep_retired=settings.refresh_absolute_ttl + settings.access_ttl + settings.leeway,
        ),
    ]


async def run_workers(settings: Settings, *, clock: Clock = system_clock) -> None:
    """Run the workers until SIGTERM or SIGINT, finishing the current batch first."""
    redis = make_redis(settings.redis_url, pool_size=8, pool_timeout=5.0)
    engine = make_engine(settings.database_url)
    keys = SqlKeyStore(async_sessionmaker(engine), Sealer(resolve_kek(settings)))
    runner = WorkerRunner(
        redis=redis,
        prefix=settings.redis_prefix,
        workers=build_workers(settings, redis=redis, keys=keys, clock=clock),
        clock=clock,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(runner.close()))
    log.info("workers started: %s", ", ".join(w.name for w in runner.workers))
    try:
        await runner.run()
    finally:
        await redis.aclose()
        await engine.dispose()


async def check(settings: Settings, max_age: float = 30.0) -> bool:
    """Whether this host's workers have a fresh heartbeat."""
    redis = make_redis(settings.redis_url, pool_size=1, pool_timeout=2.0)
    try:
        return await heartbeat_fresh(redis, settings.redis_prefix, system_clock(), max_age)
    finally:
        await redis.aclose()
