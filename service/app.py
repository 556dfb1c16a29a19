"""The application factory: builds every part from explicit settings, no globals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import async_sessionmaker

from tokend_client.redis_target import initialized
from tokend_client.tasks import stop_tasks

from .auth import Authenticator
from .clock import Clock, system_clock
from .crypto import Sealer
from .db import make_engine
from .dpop import DPoPServer, Nonces, derive_nonce_key
from .errors import TokendError
from .fence import RedisFence
from .http import auth_routes, health, oauth_routes, oidc_routes, openapi, pages, static, wellknown
from .http.appkeys import (
    AUTH,
    CLOCK,
    DPOP,
    ENGINE,
    FENCE,
    KEYRING,
    KEYSTORE,
    METRICS,
    REDIS,
    SETTINGS,
)
from .http.cors import cors_middleware
from .http.dpop import nonce_middleware
from .http.errors import error_middleware, header_size_middleware
from .http.request import MAX_BODY
from .kek import resolve_kek
from .keys import KeyRing, SqlKeyStore, ensure_signing_key
from .keyspace import Keyspace
from .metrics import Metrics
from .passwords import PasswordHasher
from .positions import PositionStore
from .ratelimit import AuthLimits
from .redisconn import close_redis, make_redis
from .sessions import SessionStore
from .settings import Settings
from .tokens import TokenService, derive_refresh_key
from .users import SqlUserStore

log = logging.getLogger("tokend")

KEY_RELOAD_INTERVAL = 30.0


@web.middleware
async def metrics_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].requests.labels(route, str(status)).observe(
            time.perf_counter() - started
        )


def setup_database(app: web.Application, settings: Settings) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        app[ENGINE] = engine
        yield
        await engine.dispose()

    app.cleanup_ctx.append(ctx)


def setup_redis(app: web.Application, settings: Settings) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = make_redis(
            settings.redis,
            pool_size=settings.redis_pool_size,
            pool_timeout=settings.redis_pool_timeout,
        )
        with contextlib.suppress(RedisError):  # a Redis down at start: checked on first use
            await initialized(client)
        app[REDIS] = client
        yield
        await close_redis(client)

    app.cleanup_ctx.append(ctx)


def setup_fence(app: web.Application, settings: Settings) -> None:
    """Detect a Redis that lost data or was rolled back, and fence it (see fence.py)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        fence = RedisFence.from_settings(
            app[REDIS], settings, PositionStore(async_sessionmaker(app[ENGINE])), app[CLOCK]
        )
        await fence.start()
        app[FENCE] = fence
        task = asyncio.create_task(fence.run())
        yield
        await stop_tasks([task])
        try:
            await fence.checkpoint()
        except TokendError as exc:
            log.warning("could not record the Redis position at shutdown: %s", exc)
        if fence.replicated is not None:
            await fence.replicated.aclose()

    app.cleanup_ctx.append(ctx)


def setup_keys(app: web.Application, settings: Settings, kek: bytes) -> None:
    """Load the signing keys (creating the first one) and reload them periodically."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = SqlKeyStore(async_sessionmaker(app[ENGINE]), Sealer(kek))
        ring = KeyRing(access_ttl=settings.access_ttl, leeway=settings.leeway)
        await ensure_signing_key(store, ring, settings.signing_alg, app[CLOCK]())
        app[KEYSTORE] = store
        app[KEYRING] = ring
        # The subscription holds a connection for good: keep it out of the request pool.
        subscriber = make_redis(settings.redis, pool_size=2, pool_timeout=5.0)
        tasks = [
            asyncio.create_task(_reload_keys(store, ring)),
            asyncio.create_task(
                _watch_key_events(subscriber, settings, store, ring), name="tokend-key-events"
            ),
        ]
        yield
        await stop_tasks(tasks)
        await close_redis(subscriber)

    app.cleanup_ctx.append(ctx)


async def _reload_keys(store: SqlKeyStore, ring: KeyRing) -> None:
    while True:
        await asyncio.sleep(KEY_RELOAD_INTERVAL)
        try:
            ring.replace(await store.load())
        except TokendError as exc:
            log.warning("key reload failed, keeping the current keys: %s", exc)


# A key.rotated message is a few hundred bytes; anything much larger is not tokend's.
MAX_KEY_EVENT = 4096
StreamId = tuple[int, int]


async def _watch_key_events(
    redis: Redis, settings: Settings, store: SqlKeyStore, ring: KeyRing
) -> None:
    """Reload the key ring as soon as a worker announces key.rotated.

    The channel is not trusted (anyone who may PUBLISH can write to it): a message only
    names a stream entry, and the keys are reloaded from SQL when that entry is in the
    stream, is a key.rotated, and is newer than the last one reloaded for. Junk and
    forged messages cost at most one XRANGE each, never a SQL query.
    """
    # key.rotated goes to partition 0, whose stream's name is also its channel's; the
    # subscription is a plain connection (on a cluster: to any node, see RedisTarget)
    stream = Keyspace(settings.redis_prefix, settings.redis_partitions).partition(0).events
    channel = stream
    backoff = 0.5
    last: StreamId | None = None
    subscribed_before = False
    while True:
        try:
            listening = await settings.redis.subscriber(socket_connect_timeout=2)
            async with listening, listening.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                # Rotations before now are in the keys already loaded: only a newer entry
                # is worth a reload. After a lost subscription, reload once for any missed.
                top = await redis.xrevrange(stream, count=1)
                if top:
                    last = max(last or (0, 0), _stream_id(top[0][0]) or (0, 0))
                if subscribed_before:
                    ring.replace(await store.load())
                subscribed_before = True
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    claimed = None if message is None else _claimed_rotation(message["data"])
                    if claimed is None or (last is not None and claimed[1] <= last):
                        continue
                    entries = await redis.xrange(stream, min=claimed[0], max=claimed[0], count=1)
                    if not entries or not _is_key_rotated((entries[0][1] or {}).get("event")):
                        log.debug("ignoring a key.rotated message for no such stream entry")
                        continue
                    last = claimed[1]
                    ring.replace(await store.load())
                    log.info("signing keys reloaded after key.rotated %s", claimed[0])
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, TokendError) as exc:
            log.warning("key event subscription lost, retrying in %.1fs: %s", backoff, exc)
        except Exception:  # a bug must not end the watcher for good
            log.exception("key event watcher failed, retrying in %.1fs", backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def _stream_id(value: object) -> StreamId | None:
    """A stream entry id ``"<ms>-<seq>"`` as ``(ms, seq)``; None for anything else."""
    if not isinstance(value, str) or len(value) > 41:
        return None
    ms, sep, seq = value.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def _event(text: object) -> dict[str, object] | None:
    if not isinstance(text, str) or len(text) > MAX_KEY_EVENT or '"key.rotated"' not in text:
        return None
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _claimed_rotation(data: object) -> tuple[str, StreamId] | None:
    """The stream id a key.rotated channel message names; None for any other message."""
    event = _event(data)
    if event is None or event.get("type") != "key.rotated":
        return None
    entry_id = event.get("id")
    position = _stream_id(entry_id)
    return None if position is None else (str(entry_id), position)


def _is_key_rotated(data: object) -> bool:
    event = _event(data)
    return event is not None and event.get("type") == "key.rotated"


def setup_auth(app: web.Application, settings: Settings, kek: bytes) -> None:
    """The authenticator and the executor that hashes passwords off the event loop."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(
            max_workers=settings.hash_workers, thread_name_prefix="argon2"
        )
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            executor=executor,
        )
        await hasher.warm_up()
        redis = app[REDIS]
        app[AUTH] = Authenticator(
            users=SqlUserStore(async_sessionmaker(app[ENGINE], expire_on_commit=False)),
            hasher=hasher,
            limits=AuthLimits.from_settings(redis, settings),
            registration_open=settings.registration_open,
            sessions=SessionStore.from_settings(redis, settings, app[FENCE]),
            tokens=TokenService(
                app[KEYRING],
                refresh_key=derive_refresh_key(kek),
                issuer=settings.issuer,
                audience=settings.audience,
                access_ttl=settings.access_ttl,
                leeway=settings.leeway,
            ),
            clock=app[CLOCK],
            metrics=app[METRICS],
        )
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(ctx)


def setup_dpop(app: web.Application, settings: Settings, kek: bytes) -> None:
    """The DPoP proof checks: replay cache in Redis, nonces from the KEK (service/dpop.py)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[DPOP] = DPoPServer(
            redis=app[REDIS],
            keys=Keyspace(settings.redis_prefix, settings.redis_partitions),
            clock=app[CLOCK],
            nonces=Nonces(derive_nonce_key(kek)) if settings.dpop_nonce else None,
        )
        yield

    app.cleanup_ctx.append(ctx)


def create_app(settings: Settings, *, clock: Clock = system_clock) -> web.Application:
    """Build the tokend API application from settings."""
    kek = resolve_kek(settings)
    app = web.Application(
        middlewares=[
            metrics_middleware,
            cors_middleware,
            nonce_middleware,
            error_middleware,
            header_size_middleware,
        ],
        client_max_size=MAX_BODY,
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[METRICS] = Metrics()
    setup_database(app, settings)
    setup_redis(app, settings)
    setup_fence(app, settings)
    setup_keys(app, settings, kek)
    setup_auth(app, settings, kek)
    setup_dpop(app, settings, kek)
    oidc_routes.setup_oidc(app, settings)
    app.router.add_routes(health.routes)
    app.router.add_routes(wellknown.routes)
    app.router.add_routes(auth_routes.routes)
    app.router.add_routes(oauth_routes.routes)
    app.router.add_routes(oidc_routes.routes)
    app.router.add_routes(openapi.routes)
    app.router.add_routes(pages.routes)
    app.router.add_routes(static.routes)
    return app
