"""The Redis connection pool and the wrapping of redis-py errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokend_client.redis_target import RedisTarget

from .errors import Unavailable

log = logging.getLogger("tokend.redis")

# seconds a close may take before its sockets are left to the garbage collector
CLOSE_TIMEOUT = 5.0


def make_redis(target: RedisTarget, *, pool_size: int, pool_timeout: float) -> aioredis.Redis:
    """A client of ``target`` (standalone, cluster or sentinel) on a bounded pool: in
    standalone mode a burst waits up to ``pool_timeout`` for a connection."""
    client: aioredis.Redis = target.client(
        max_connections=pool_size,
        pool_timeout=pool_timeout,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        decode_responses=True,
        # After a Redis restart every pooled connection is dead: without one immediate
        # retry on a fresh connection, the first request on each of them got a 503.
        # Running a command twice is safe here: a rotation repeated within the grace
        # window returns the same successor, revocations are idempotent.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client


async def close_redis(client: aioredis.Redis) -> None:
    """Close a client of :func:`make_redis` and every connection of its pool.

    ``aclose`` leaves open a pool the client was handed (the standalone blocking pool):
    its connections would stay until the process ends, tens per stopped app, until a
    process that starts and stops many (a test suite, an embedding service) reaches
    Redis's ``maxclients``. A Redis that went away must not hang the shutdown either."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.aclose()
    pool = getattr(client, "connection_pool", None)  # RedisCluster closes its nodes
    if pool is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pool.disconnect()


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Turn any redis-py failure (down, timeout, pool exhausted) into Unavailable.

    Inside this block only redis-py runs; during a cluster failover its asyncio cluster
    client has been seen failing with AttributeError (a connection closed while another
    task was connecting it; under uvloop the same race is a RuntimeError, "unable to
    perform operation on <TCPTransport closed=True>"). Any such failure is a store fault
    too: logged with its traceback and answered 503, never 500."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise Unavailable("session store unavailable") from exc
    except (RedisError, RedisClusterException) as exc:
        # RedisClusterException (a slot no node serves, mid-failover) is not a RedisError
        raise Unavailable("session store error") from exc
    except (AttributeError, RuntimeError, TypeError, KeyError, IndexError) as exc:
        log.warning("redis client failed: %r", exc, exc_info=True)
        raise Unavailable("session store client error") from exc
