"""Signed webhooks with durable delivery (docs/webhooks.md).

For every configured endpoint and every partition, one task (``_Pair``) takes the pair's
lease (one deliverer across all worker processes), reads the partition's event stream
after the endpoint's position and POSTs each event in order, one at a time, advancing
the position after each success. A failure is retried with exponential backoff and
jitter (or the receiver's Retry-After) up to TOKEND_WEBHOOK_MAX_ATTEMPTS, then the event
becomes a dead letter and the position moves on. A crash before the position advances
means the event is delivered again: at-least-once, ordered per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from service.keyspace import Keyspace, Partition
from service.retention import REFRESH, advertise
from service.settings import Settings

from .metrics import WorkerMetrics
from .wakeup import ChannelWake
from .webhooks_store import Target, WebhookStore, WebhookTarget, message_id

log = logging.getLogger("tokend.webhooks")

BATCH = 100
MAX_BACKOFF = 300.0
# A Retry-After longer than this is cut to it.
MAX_RETRY_AFTER = 3600.0
# the retention is told again this often: twice per writer's read (service/retention.py)
ADVERTISE_EVERY = REFRESH / 2


def backoff(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: the receiver's Retry-After when it gave
    one, else base * 2^(attempt-1), capped, with full jitter over its upper half."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    delay: float = min(MAX_BACKOFF, base * 2.0 ** (attempt - 1))
    jitter: float = random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
    return delay * jitter


class _Stopped(Exception):
    """The worker is closing, or the lease was lost: leave the event for later."""


class _Pair:
    """The deliverer of one (endpoint, partition)."""

    def __init__(self, worker: WebhookWorker, endpoint: Target, part: Partition):
        self.w = worker
        self.endpoint = endpoint
        self.part = part
        self.token = f"{worker.instance}:{endpoint.id}:{part.index}"
        self.woken = worker.wakeups.event(part.index)  # set when the partition publishes

    async def run(self) -> None:
        w = self.w
        idle = 0.05
        while not w.stopping.is_set():
            try:
                if not await w.store.hold(self.part, self.endpoint.id, self.token, w.lease_ms):
                    await w.sleep(w.lease_ms / 3000)
                    continue
                self.woken.clear()  # before reading: a publication during the batch counts
                handled = await self.batch()
                idle = 0.05 if handled else min(idle * 2, w.poll_interval)
                if not handled:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.woken.wait(), idle)
            except _Stopped:
                continue
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("webhook %s partition %d: %s", self.endpoint.id, self.part.index, exc)
                await w.sleep(1.0)
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await w.store.release(self.part, self.endpoint.id, self.token)

    async def batch(self) -> int:
        """Deliver what follows the position (at most BATCH); how many entries it passed."""
        w, ep = self.w, self.endpoint
        pos, n = await w.store.position(self.part, ep.id)
        _, added, length = await w.store.stream_info(self.part)
        trimmed = added - length
        if trimmed > n:
            lost = trimmed - n
            if await w.store.mark_lost(self.part, ep.id, self.token, lost, trimmed):
                log.error(
                    "webhook %s lost %d events of partition %d: trimmed from the stream "
                    "before delivery (older than the retention); continuing after them",
                    ep.id,
                    lost,
                    self.part.index,
                )
                w.metrics.webhook_lost_events.labels(ep.id).inc(lost)
            n = trimmed
        entries = cast(
            list[tuple[str, dict[str, str]]],
            await w.redis.xrange(self.part.events, min=f"({pos}", count=BATCH),
        )
        skipped: tuple[str, int] | None = None
        for entry_id, fields in entries:
            n += 1
            body = fields.get("event", "")
            try:
                event = json.loads(body)
            except (ValueError, RecursionError):
                event = None
            if not isinstance(event, dict) or not ep.wants(event):
                skipped = (entry_id, n)
                continue
            await self.deliver(entry_id, n, body)
            skipped = None
        if skipped is not None:
            await self.advance(*skipped)
        return len(entries)

    async def advance(
        self, entry_id: str, n: int, dead: tuple[str, str, int] | None = None
    ) -> None:
        ok = await self.w.store.advance(
            self.part, self.endpoint.id, self.token, self.w.lease_ms, entry_id, n, dead
        )
        if not ok:
            raise _Stopped()  # another deliverer has the pair now

    async def deliver(self, entry_id: str, n: int, body: str) -> None:
        w, ep = self.w, self.endpoint
        attempt = 0
        while True:
            attempt += 1
            if w.stopping.is_set():
                raise _Stopped()
            if not await w.store.hold(self.part, ep.id, self.token, w.lease_ms):
                raise _Stopped()
            msg_id = message_id(ep.id, self.part.index, entry_id)
            result = await ep.send(w.http[ep.id], msg_id, body, w.timeout)
            if result.ok:
                w.metrics.webhook_delivered.labels(ep.id).inc()
                await self.advance(entry_id, n)
                return
            w.metrics.webhook_failures.labels(ep.id).inc()
            await w.store.failed(self.part, ep.id, result.error)
            if attempt >= w.max_attempts:
                log.warning(
                    "webhook %s: event %s dead-lettered after %d attempts: %s",
                    ep.id,
                    entry_id,
                    attempt,
                    result.error,
                )
                await self.advance(entry_id, n, (body, result.error, attempt))
                return
            await self.wait(backoff(attempt, w.backoff_base, result.retry_after))

    async def wait(self, seconds: float) -> None:
        """Sleep, keeping the lease; _Stopped when closing or the lease is gone."""
        w = self.w
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await w.sleep(min(left, w.lease_ms / 3000))
            if w.stopping.is_set():
                raise _Stopped()
            if not await w.store.hold(self.part, self.endpoint.id, self.token, w.lease_ms):
                raise _Stopped()


class WebhookWorker:
    """Delivers the partitions' events to TOKEND_WEBHOOKS; ``step`` (run by WorkerRunner)
    starts the per-pair tasks and refreshes the metrics; ``close`` stops the tasks."""

    name = "webhooks"
    interval = 2.0

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        settings: Settings,
        metrics: WorkerMetrics | None = None,
        poll_interval: float = 1.0,
        targets: Sequence[Target] | None = None,
        wake: bool = True,
    ) -> None:
        self.redis = redis
        # the endpoints of every kind (default: TOKEND_WEBHOOKS; workers/backchannel.py
        # adds the clients' back-channel logout URIs)
        self.endpoints: tuple[Target, ...] = (
            tuple(targets)
            if targets is not None
            else tuple(WebhookTarget(e) for e in settings.webhooks)
        )
        self.keys = Keyspace(settings.redis_prefix, settings.redis_partitions)
        self.store = WebhookStore(redis, self.keys)
        # an idle pair is woken by its partition's channel; the poll is the backstop
        # (wake=False: poll only, the benchmark's baseline)
        self.wakeups = ChannelWake(settings.redis, self.keys.all)
        self.wake = wake
        self.metrics = metrics or WorkerMetrics()
        self.max_attempts = settings.webhook_max_attempts
        self.timeout = settings.webhook_timeout
        self.backoff_base = settings.webhook_backoff
        self.poll_interval = poll_interval
        # how long the streams must keep events for these endpoints, told to every writer
        self.retention = settings.stream_retention
        self._advertised_at: float | None = None
        # the lease outlives one attempt (renewed before each and during backoff)
        self.lease_ms = int(max(3.0, 2 * self.timeout) * 1000)
        self.instance = uuid.uuid4().hex[:12]
        self.stopping = asyncio.Event()
        self.http: dict[str, aiohttp.ClientSession] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _start(self) -> None:
        if self.stopping.is_set():
            return
        if self.wake:
            self.wakeups.start()
        if not self.http:
            # A session per endpoint: a receiver holding its connections never starves another.
            self.http = {
                ep.id: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                for ep in self.endpoints
            }
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(_Pair(self, ep, part).run(), name=f"webhook:{ep.id}:{i}")
                for ep in self.endpoints
                for i, part in enumerate(self.keys.all)
            ]
        for i, task in enumerate(self._tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error(
                    "webhook task %s crashed: %r; restarting", task.get_name(), task.exception()
                )
                ep = self.endpoints[i // len(self.keys.all)]
                part = self.keys.all[i % len(self.keys.all)]
                self._tasks[i] = asyncio.create_task(
                    _Pair(self, ep, part).run(), name=task.get_name()
                )

    async def step(self) -> int:
        self._start()
        clock = time.monotonic()
        if self._advertised_at is None or clock - self._advertised_at >= ADVERTISE_EVERY:
            await advertise(self.redis, self.keys.retention, self.retention)
            self._advertised_at = clock
        now = time.time()
        for ep in self.endpoints:
            status = await self.store.status(ep, now)
            self.metrics.webhook_lag.labels(ep.id).set(status["lag"])
            self.metrics.webhook_lost.labels(ep.id).set(
                sum(1 for p in status["partitions"] if p["lost"])
            )
            self.metrics.webhook_dead.labels(ep.id).set(status["dead"])
        return 0

    async def run(self) -> None:
        """Deliver until close() (when run on its own, without a WorkerRunner)."""
        while not self.stopping.is_set():
            try:
                await self.step()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("webhooks: %s", exc)
            await self.sleep(self.interval)
        await self.close()

    async def close(self) -> None:
        """Stop: an attempt in flight finishes (bounded by the timeout), leases are released."""
        self.stopping.set()
        await self.wakeups.close()  # wakes the idle pairs, which see stopping
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.timeout + 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for session in self.http.values():
            await session.close()


async def redeliver_dead_letters(
    redis: aioredis.Redis,
    settings: Settings,
    endpoint_id: str,
    targets: Sequence[Target] | None = None,
) -> dict[str, Any]:
    """`tokend webhooks retry`: one attempt per dead letter; each delivered one is removed."""
    if targets is None:
        targets = [WebhookTarget(e) for e in settings.webhooks]
    endpoint = next((e for e in targets if e.id == endpoint_id), None)
    if endpoint is None:
        from service.errors import TokendError

        known = ", ".join(e.id for e in targets) or "none configured"
        raise TokendError(f"webhooks retry: no endpoint {endpoint_id!r} (known: {known})")
    keys = Keyspace(settings.redis_prefix, settings.redis_partitions)
    store = WebhookStore(redis, keys)
    done = failed = 0
    errors: list[str] = []
    async with aiohttp.ClientSession() as http:
        for part in keys.all:
            for letter_id, fields in await store.dead_letters(part, endpoint.id):
                msg_id = message_id(endpoint.id, part.index, fields["id"])
                result = await endpoint.send(
                    http, msg_id, fields["event"], settings.webhook_timeout
                )
                if result.ok:
                    await store.drop_dead_letter(part, endpoint.id, letter_id)
                    done += 1
                else:
                    failed += 1
                    errors.append(f"{fields['id']}: {result.error}")
    return {"endpoint": endpoint.id, "redelivered": done, "failed": failed, "errors": errors[:10]}
