"""The worker contract and the runner that drives workers, with heartbeats and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from service.clock import Clock
from service.errors import TokendError
from service.keyspace import Keyspace

from .metrics import WorkerMetrics

log = logging.getLogger("tokend.workers")


class Worker(Protocol):
    """One background job: ``step`` does a bounded batch of work and returns."""

    name: str
    interval: float

    async def step(self) -> int:
        """Do one batch; return how many items it handled (0 = idle)."""
        ...


def heartbeat_key(prefix: str) -> str:
    return Keyspace(prefix).heartbeat


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerRunner:
    """Runs workers until ``close()``: each step finishes before shutdown, errors back off."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        prefix: str,
        workers: list[Worker],
        clock: Clock,
        heartbeat_interval: float = 5.0,
        max_backoff: float = 30.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.workers = workers
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.max_backoff = max_backoff
        self.metrics = metrics or WorkerMetrics()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Run every worker and the heartbeat until close() is called."""
        self._tasks = [asyncio.create_task(self._loop(w), name=w.name) for w in self.workers]
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()  # also when cancelled: let workers finish their step
            await self._shutdown()

    async def close(self) -> None:
        """Ask the workers to stop after their current step."""
        self._stopping.set()

    async def _shutdown(self, grace: float = 30.0) -> None:
        # Workers check _stopping between steps, so a batch in progress completes.
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await self.redis.hdel(heartbeat_key(self.prefix), _me())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _loop(self, worker: Worker) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                handled = await worker.step()
                backoff = 0.5
                if handled:
                    self.metrics.items.labels(worker.name).inc(handled)
            except asyncio.CancelledError:
                raise
            except (TokendError, RedisError, OSError) as exc:
                self.metrics.errors.labels(worker.name).inc()
                log.warning("worker %s failed, retrying in %.1fs: %s", worker.name, backoff, exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception:
                self.metrics.errors.labels(worker.name).inc()
                log.exception("worker %s crashed in a step, retrying", worker.name)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not handled:
                await self._sleep(worker.interval)

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            try:
                now = self.clock()
                await self.redis.hset(heartbeat_key(self.prefix), _me(), str(now))
                self.metrics.heartbeat.set(now)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            await self._sleep(self.heartbeat_interval)


async def heartbeat_fresh(
    redis: aioredis.Redis, prefix: str, now: float, max_age: float, host: str | None = None
) -> bool:
    """Whether a worker on ``host`` (default: this host) beat within ``max_age`` seconds."""
    host = host or socket.gethostname()
    beats = cast(dict[str, str], await redis.hgetall(heartbeat_key(prefix)))
    return any(
        field.rsplit(":", 1)[0] == host and now - float(value) <= max_age
        for field, value in beats.items()
    )
