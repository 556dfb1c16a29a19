"""Entry point of the worker process: build the workers from settings and run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.clock import Clock, system_clock
from service.crypto import Sealer
from service.db import make_engine
from service.errors import Unavailable
from service.kek import resolve_kek
from service.keys import SqlKeyStore
from service.redisconn import close_redis, make_redis, redis_errors
from service.sessions import SessionStore
from service.settings import Settings
from tokend_client.redis_target import initialized

from .backchannel import LogoutSigner, delivery_targets
from .base import Worker, WorkerRunner, heartbeat_fresh
from .expiry import ExpiryWorker
from .metrics import WorkerMetrics
from .rotation import KeyRotationWorker
from .webhooks import WebhookWorker

log = logging.getLogger("tokend.workers")


def build_workers(
    settings: Settings,
    *,
    redis: aioredis.Redis,
    keys: SqlKeyStore,
    clock: Clock,
    metrics: WorkerMetrics | None = None,
) -> list[Worker]:
    """The background workers tokend runs (webhook delivery when TOKEND_WEBHOOKS is set
    or an OAuth client has a backchannel_logout_uri)."""
    sessions = SessionStore.from_settings(redis, settings)
    workers: list[Worker] = [
        ExpiryWorker(sessions=sessions, clock=clock),
        KeyRotationWorker(
            store=keys,
            sessions=sessions,
            clock=clock,
            alg=settings.signing_alg,
            period=settings.key_rotation_period,
            publish_delay=settings.key_publish_delay,
            # Only access tokens are signed with these keys (refresh tokens are MACed):
            # a retired key is kept an hour past its last access token's expiry.
            keep_retired=settings.access_ttl + settings.leeway + 3600,
        ),
    ]
    targets = delivery_targets(settings, LogoutSigner(keys, settings))
    if targets:
        workers.append(
            WebhookWorker(redis=redis, settings=settings, metrics=metrics, targets=targets)
        )
    return workers


async def run_workers(
    settings: Settings, *, clock: Clock = system_clock, handle_signals: bool = True
) -> None:
    """Run the workers until SIGTERM or SIGINT, finishing the current batch first.

    Inside another command (``tokend dev``) that owns the signals, pass
    ``handle_signals=False`` and cancel the task instead: a loop has one handler per signal.
    """
    # webhook deliverers (one task per endpoint and partition) share the pool too
    pool = 8 + 8 * len(delivery_targets(settings, None))
    redis = make_redis(settings.redis, pool_size=min(pool, 64), pool_timeout=5.0)
    with contextlib.suppress(RedisError):  # a Redis down at start: the workers retry
        await initialized(redis)
    engine = make_engine(settings.database_url)
    keys = SqlKeyStore(async_sessionmaker(engine), Sealer(resolve_kek(settings)))
    metrics = WorkerMetrics()
    runner = WorkerRunner(
        redis=redis,
        prefix=settings.redis_prefix,
        workers=build_workers(settings, redis=redis, keys=keys, clock=clock, metrics=metrics),
        clock=clock,
        metrics=metrics,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if handle_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(runner.close()))
    log.info("workers started: %s", ", ".join(w.name for w in runner.workers))
    port = settings.worker_metrics_port
    metrics_site = await _serve_metrics(runner.metrics, settings.host, port) if port else None
    try:
        await runner.run()
    finally:
        for worker in runner.workers:
            if isinstance(worker, WebhookWorker):
                await worker.close()
        if metrics_site is not None:
            await metrics_site.cleanup()
        await close_redis(redis)
        await engine.dispose()


async def _serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> web.AppRunner:
    """/metrics of the worker process on TOKEND_WORKER_METRICS_PORT."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return runner


async def check(settings: Settings, max_age: float = 30.0) -> bool:
    """Whether this host's workers have a fresh heartbeat."""
    redis = make_redis(settings.redis, pool_size=1, pool_timeout=2.0)
    try:
        with redis_errors():
            return await heartbeat_fresh(redis, settings.redis_prefix, system_clock(), max_age)
    except Unavailable as exc:
        # No Redis, no heartbeat to read: unhealthy, said in one line rather than a traceback.
        log.warning("cannot read the worker heartbeat: %s", exc)
        return False
    finally:
        await close_redis(redis)
