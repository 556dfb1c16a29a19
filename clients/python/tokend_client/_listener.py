"""Following tokend's revocation events into an in-memory deny list.

tokend's data is split into partitions (``<prefix>:partitions`` says how many; see
tokend_client/partitions.py). tokend writes every revocation to its user's partition's
stream ``<prefix>:{T}:events`` and publishes a wake-up on the pub/sub channel of the
same name in one atomic step (classic pub/sub: on a Redis Cluster every node carries
every channel). Pub/sub alone is at-most-once, so the listener's one background task
does, on every (re)connect:

1. read the partition count, SUBSCRIBE to every partition's channel and wait for the
   confirmations, so nothing published from now on can be missed;
2. XRANGE each partition's stream from its last applied entry id (exclusive; ``-`` at
   first start), which holds everything published before the subscription took effect;
3. take every channel message as a wake-up only: read that partition's stream after
   its last applied entry again (one XRANGE for all the messages that arrived meanwhile).

Ids, events and the positions in the streams come from the streams alone, never from a
message's payload: anyone who may PUBLISH on a channel can wake the listener up but
cannot move its position past real events or put entries into its deny list.

Between 1 and 2 it compares each partition's position with the one seen before
(``_position.py``): a Redis without tokend's epoch marker (not marked yet, or it lost
its data) or behind a position seen before is not trusted until tokend has marked or
fenced it, and the deny list is never cleared (entries from before a Redis restart
still hold).

Any Redis error ends the round: the task backs off (0.1 s doubling to 5 s),
reconnects and starts again at step 1. Deny entries live until their event's
``until`` and are pruned lazily and periodically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter as TypeCounter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ._denylist import DenyList
from ._events import EVENTS, problem
from ._listener_metrics import make_metrics, new_registry
from ._position import PositionWatch, RedisBehind
from .partitions import PartitionKeys
from .redis_target import RedisTarget
from .tasks import stop_tasks

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["RevocationListener"]

log = logging.getLogger("tokend_client.listener")

EVENT_TYPES = tuple(EVENTS)
REPLAY_BATCH = 500
# At most this many channel messages already received are folded into one stream read,
# so a flood of publishes cannot postpone the read indefinitely.
COALESCE_MAX = 10_000
Clock = Callable[[], float]
StreamId = tuple[int, int]
EventCallback = Callable[[dict[str, Any]], object]


def parse_stream_id(value: str) -> StreamId:
    """A stream entry id ``"<ms>-<seq>"`` as a comparable ``(ms, seq)`` tuple."""
    ms, sep, seq = value.partition("-")
    if not sep:
        raise ValueError(f"not a stream id: {value!r}")
    return int(ms), int(seq)


class RevocationListener:
    """Keeps a deny list of revoked sessions, users and tokens fed by tokend's events.

    ``start()`` (or ``async with``) runs the background task, ``close()`` stops it;
    ``wait_ready()`` returns once the first replay is done. ``on_event`` is called
    with every newly applied event (for example the verifier's ``request_refresh``
    on ``key.rotated``); it must not block. Metrics go to ``registry`` (its own
    when none is given). ``retention_margin`` keeps deny entries that many seconds
    past ``until``: set it when your verifier's leeway exceeds tokend's. The other
    keywords tune the reconnect backoff, the prune period and the liveness ping.
    """

    def __init__(
        self,
        redis: str | RedisTarget,
        *,
        prefix: str = "tokend",
        clock: Clock = time.time,
        registry: CollectorRegistry | None = None,
        on_event: EventCallback | None = None,
        retention_margin: float = 0.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        prune_interval: float = 30.0,
        ping_interval: float = 5.0,
    ) -> None:
        #: Where tokend's Redis is: a URL (one server) or a RedisTarget (any mode).
        self.target = redis if isinstance(redis, RedisTarget) else RedisTarget(url=redis)
        self.prefix = prefix
        self.on_event = on_event
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.prune_interval = prune_interval
        self.ping_interval = ping_interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._last_id: dict[int, StreamId] = {}  # partition → last applied entry
        self._last_applied: str | None = None
        self._last_at: float | None = None
        self._last_prune = clock()
        self._live = False
        self._position = PositionWatch(prefix)
        self._behind = False
        #: The deny list itself (sessions, users, tokens).
        self.deny_list = DenyList(clock, retention_margin)
        #: Events applied, by type (each stream entry at most once).
        self.applied: TypeCounter[str] = TypeCounter()
        #: Messages skipped because their id was already applied.
        self.skipped = 0
        #: Stream entries that were not valid v1 events (ignored).
        self.invalid = 0
        #: Channel messages received (each only a wake-up: its payload is not trusted).
        self.wakeups = 0
        #: Stream reads those wake-ups caused (a burst of messages costs one read).
        self.wakeup_reads = 0
        #: Completed stream replays (one per successful (re)connect).
        self.replays = 0
        #: Reconnect attempts after a Redis error.
        self.reconnects = 0
        #: Seconds from an event's ``at`` to its application, for the last applied event.
        self.last_propagation: float | None = None
        #: Where the metrics are (None without prometheus-client installed).
        self.registry = registry if registry is not None else new_registry()
        self._metrics = make_metrics(self.registry, self.deny_list, lambda: self.lag)
        for event_type in EVENT_TYPES:
            self._metrics.applied.labels(event_type)

    # lifecycle

    async def __aenter__(self) -> RevocationListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the background task (idempotent); see ``wait_ready``."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"tokend-listener:{self.prefix}")

    async def close(self) -> None:
        """Stop the background task and close its connection. A closed listener is not
        ready (the integrations answer 503): its deny list no longer follows revocations.
        ``start()`` again replays before it is ready again."""
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None
        self._ready.clear()
        self._live = False
        self._metrics.connected.set(0)

    async def wait_ready(self) -> None:
        """Return once the first replay is done (wrap it in ``asyncio.timeout`` to bound it)."""
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """Whether the deny list has been replayed from the stream at least once, and
        tokend's Redis is not known to have lost revocations that tokend has not fenced."""
        return self._ready.is_set() and not self._behind

    @property
    def last_id(self) -> str | None:
        """The stream id of the last applied event (of whichever partition)."""
        return self._last_applied

    def _after(self, part: int) -> str:
        """XRANGE's start: after the partition's last applied entry, or its beginning."""
        last = self._last_id.get(part)
        return "-" if last is None else f"({last[0]}-{last[1]}"

    @property
    def lag(self) -> float | None:
        """Seconds since the ``at`` of the last applied event (None before any)."""
        return None if self._last_at is None else max(0.0, self._clock() - self._last_at)

    @property
    def deny_list_size(self) -> int:
        """Entries in the deny list (sessions, users and tokens), expired ones included
        until they are pruned."""
        return len(self.deny_list)

    # the deny list

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether verified access-token claims are denied by an applied event."""
        return self.deny_list.is_revoked(claims)

    async def settle(self) -> None:
        """Nothing to wait for: this listener runs on the caller's loop (see ``ready``)."""

    def outlive(self, seconds: float) -> None:
        """Keep deny entries at least ``seconds`` past their ``until``: a verifier that
        accepts a token that long after its ``exp`` must still find it denied."""
        self.deny_list.margin = max(self.deny_list.margin, seconds)

    def prune(self) -> int:
        """Drop every deny entry whose ``until`` has passed; how many were dropped."""
        self._last_prune = self._clock()
        return self.deny_list.prune()

    def _apply(self, part: int, entry_id: str, event: Any, source: str) -> None:
        """Apply one event once; ``entry_id`` orders it in its partition's stream."""
        try:
            position = parse_stream_id(entry_id)
        except ValueError:
            self._invalid(entry_id, "bad id")
            return
        last = self._last_id.get(part)
        if last is not None and position <= last:
            self.skipped += 1
            self._metrics.skipped.inc()
            return
        self._last_id[part] = position
        self._last_applied = entry_id
        why = problem(event)
        if why is not None:
            self._invalid(entry_id, why)
            return
        kind, at, until = event["type"], event["at"], event["until"]
        now = self._clock()
        self.deny_list.add(kind, event, float(at), float(until))
        self._last_at = float(at)
        self.last_propagation = now - float(at)
        self._metrics.propagation.labels(source).observe(max(0.0, self.last_propagation))
        self.applied[kind] += 1
        self._metrics.applied.labels(kind).inc()
        if self.on_event is not None:
            try:
                self.on_event({**event, "id": entry_id})
            except Exception:
                log.exception("on_event callback failed for %s", entry_id)

    def _invalid(self, entry_id: str, why: str) -> None:
        self.invalid += 1
        self._metrics.invalid.inc()
        log.warning("ignoring revocation stream entry %s: %s", entry_id, why)

    # the background task

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            self._live = False
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RedisError, OSError, or a bug: back off and go on
                level = logging.WARNING if isinstance(exc, RedisError | OSError) else logging.ERROR
                if self._live:  # the connection worked: start the backoff afresh
                    delay = self.backoff_initial
                log.log(level, "revocation listener: %r; reconnecting in %.1fs", exc, delay)
            self._metrics.connected.set(0)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
            self.reconnects += 1
            self._metrics.reconnects.inc()

    async def _follow(self) -> None:
        """One connection's life: subscribe, replay, then apply live messages."""
        options: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": max(10.0, 2 * self.ping_interval),
            "socket_keepalive": True,
            # No transparent reconnect: every reconnect must go through the replay.
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"tokend-listener:{self.prefix}",
        }
        client = self.target.client(max_connections=4, **options)
        subscriber: aioredis.Redis | None = None
        pubsub: aioredis.client.PubSub | None = None
        try:
            try:
                parts = await self._position.layout(client)
            except RedisBehind:
                self._behind = True  # fail closed (not ready) until tokend has marked it
                raise
            self.deny_list.partitions = len(parts)
            channels = {p.events: p.index for p in parts}
            # RESP2: Redis files a RESP2 subscriber under the pubsub output-buffer class,
            # whose limit guards it against a subscriber that falls behind (a RESP3 one
            # counts as a normal client, unlimited by default)
            subscriber = await self.target.subscriber(protocol=2, **options)
            pubsub = subscriber.pubsub()
            await pubsub.subscribe(*channels)
            await self._confirm_subscription(pubsub, len(channels))
            try:
                await self._position.check(client)
            except RedisBehind:
                self._behind = True  # fail closed (not ready) until tokend has fenced
                raise
            for part in parts:
                await self._check_reset(client, part)
            await self._replay(client, parts)
            # Only now: a Redis that was behind is trusted again once the replay has
            # applied its fence's all.revoked, not from the moment its epoch is back.
            self._behind = False
            self._live = True
            self._metrics.connected.set(1)
            self._ready.set()
            await self._consume(pubsub, client, channels)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            for each in (subscriber, client):
                if each is not None:
                    with contextlib.suppress(Exception):
                        await each.aclose()

    async def _confirm_subscription(self, pubsub: aioredis.client.PubSub, count: int) -> None:
        confirmed = 0
        async with asyncio.timeout(max(5.0, self.ping_interval)):
            while confirmed < count:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1

    async def _check_reset(self, client: aioredis.Redis, part: PartitionKeys) -> None:
        # A stream that is empty or ends before our last id was recreated (a Redis
        # restart without persistence, a restore): its ids start afresh.
        last = self._last_id.get(part.index)
        if last is None:
            return
        top = cast(
            list[tuple[str, dict[str, str]]],
            await client.xrevrange(part.events, max="+", min="-", count=1),
        )
        if not top or parse_stream_id(top[0][0]) < last:
            log.warning("revocation stream %s was reset; replaying it whole", part.events)
            del self._last_id[part.index]

    async def _replay(self, client: aioredis.Redis, parts: tuple[PartitionKeys, ...]) -> None:
        """Apply every stream entry after the last applied one, of every partition."""
        for part in parts:
            await self._read_stream(client, part, "replay")
        self.replays += 1
        self._metrics.replays.inc()

    async def _read_stream(self, client: aioredis.Redis, part: PartitionKeys, source: str) -> None:
        """Apply a partition's entries after the last applied one, in batches."""
        while True:
            entries = cast(
                list[tuple[str, dict[str, str]]],
                await client.xrange(
                    part.events, min=self._after(part.index), max="+", count=REPLAY_BATCH
                ),
            )
            for entry_id, fields in entries:
                self._apply(part.index, entry_id, _loads(fields.get("event")), source)
            if len(entries) < REPLAY_BATCH:
                break

    async def _wake_up(
        self,
        first: int,
        pubsub: aioredis.client.PubSub,
        client: aioredis.Redis,
        channels: dict[str, int],
    ) -> None:
        """A channel message arrived: fold in those already received, then read the
        streams of the partitions they woke (once each).

        The messages' payloads are ignored: only the streams say what happened.
        """
        self.wakeups += 1
        woken = {first}
        for _ in range(COALESCE_MAX):
            message = await pubsub.get_message(timeout=0.0)
            if message is None:
                break
            if message["type"] == "message" and message["channel"] in channels:
                self.wakeups += 1
                woken.add(channels[message["channel"]])
        parts = self._position.partitions
        for index in sorted(woken):
            self.wakeup_reads += 1
            await self._read_stream(client, parts[index], "live")

    async def _consume(
        self, pubsub: aioredis.client.PubSub, client: aioredis.Redis, channels: dict[str, int]
    ) -> None:
        # After ping_interval of silence, a ping; no answer within another interval
        # means the connection is dead even if TCP has not noticed (a frozen server).
        poll = min(1.0, self.ping_interval / 2)
        last_heard = time.monotonic()
        pinged_at: float | None = None
        while True:
            # Every reply counts as a sign of life (a ping's reply has no stable shape
            # across protocol versions), so subscribe messages are not filtered out.
            message = await pubsub.get_message(timeout=poll)
            now = time.monotonic()
            if message is not None:
                last_heard, pinged_at = now, None
                if message["type"] == "message" and message["channel"] in channels:
                    await self._wake_up(channels[message["channel"]], pubsub, client, channels)
            elif pinged_at is None and now - last_heard >= self.ping_interval:
                await pubsub.ping()
                pinged_at = now
            elif pinged_at is not None and now - pinged_at >= self.ping_interval:
                raise TimeoutError("no answer from Redis to a ping")
            if self._clock() - self._last_prune >= self.prune_interval:
                self.prune()


def _loads(data: Any) -> Any:
    if not isinstance(data, str | bytes):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None
