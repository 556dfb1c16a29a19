"""Redis data loss and rollback: detected against a durable high-water mark, then fenced.

Redis holds every session's refresh-token state and every deny entry. If it comes back
empty (a restart without persistence, a new server) or from an older snapshot, consumed
refresh tokens come back to life and revoked access tokens pass again. tokend notices
and fences instead of trusting the data.

Each partition of the data (service/keyspace.py) has its own *position* ``(epoch,
gen)``, compared in that order, so a loss on one shard of a cluster fences only the
users who lived there:

    P:{T}:epoch   the epoch: 1 at first start, one more at every fence; never expires
    P:{T}:gen     the write generation: every rotation and every revocation INCRs it
    P:{T}:fence   the time of the last fence: access tokens issued up to it are denied

Each API process knows the highest position it has seen of each partition: from the
replies of its own rotations and revocations, from the deny check's reads, and from
SQL, where the positions are checkpointed every few seconds (table
``redis_positions``, one row per prefix and partition, ``<prefix>#<n>``; SQL never sits
on the refresh or ``/auth/me`` path). With replicas to wait for, only positions known
to be on the replicas count (``RedisFence``). Redis is *behind* when
its epoch is missing (data lost) or its position is below the known one (rolled back).
The hot paths check this in band, with no extra round trip: rotate.lua and create.lua
get the known position and answer ``stale``; the deny check reads the position in its
MGET. On ``stale`` the request waits for ``recover()``, which re-reads, compares with
memory and SQL and, when Redis really is behind, runs fence.lua:

- epoch := highest known + 1, gen := at least the highest known (so no other process
  mistakes the fenced Redis for a rollback); sessions carry the epoch they were created
  in, and rotate.lua ends any session of an earlier epoch: a consumed refresh token from
  a restored snapshot gets 401 and its whole session is gone;
- ``P:fence`` := now: every access token issued up to the fence is denied at tokend
  until it would have expired;
- the event ``all.revoked`` (reason ``redis_data_loss`` or ``redis_rollback``, with the
  ``partition``) goes to the partition's new stream, so subscribers deny the same tokens.

A Redis restarted with all its data (AOF with ``appendfsync always``, a clean shutdown)
is at or past the known position and is not fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis

from . import replies
from .clock import Clock
from .errors import ConfigError, LayoutMismatch, TokendError, Unavailable
from .keyspace import DEFAULT_PARTITIONS, Keyspace
from .positions import Position, PositionStore, parse_position
from .redisconn import redis_errors
from .replicated import ReplicatedWrites
from .retention import StreamRetention
from .settings import Settings

log = logging.getLogger("tokend.fence")


def _fence_script() -> str:
    lua = resources.files("service") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / "fence.lua").read_text()


class RedisFence:
    """Knows the highest position seen of each partition and fences one that fell behind.

    With ``replica_acks`` (TOKEND_REDIS_REPLICA_ACKS) above 0, only positions known to be
    on that many replicas count as seen: the replies of writes that waited for them, and
    the periodic check's ``WAIT`` after a marker write (``replicated``). A promoted
    replica is then never behind the known position, so a failover is not taken for a
    rollback; only a real loss (primary and replicas gone, an old snapshot) is fenced.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        positions: PositionStore | None,
        clock: Clock,
        deny_window: int,
        retention: int,
        partitions: int = DEFAULT_PARTITIONS,
        replicated: ReplicatedWrites | None = None,
        check_interval: float = 1.0,
        checkpoint_interval: float = 5.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.positions = positions
        self.clock = clock
        self.deny_window = deny_window
        self.retention = retention
        self.replicated = replicated
        self.check_interval = check_interval
        self.checkpoint_interval = checkpoint_interval
        self.keys = Keyspace(prefix, partitions)
        # what a fence's event trims its stream to (service/retention.py)
        self.trim = StreamRetention(redis, self.keys.retention, retention)
        #: The highest position seen of each partition (absent until read once).
        self.known: dict[int, Position] = {}
        self._durable: dict[int, Position] = {}  # last loaded from or saved to SQL
        self._locks = [asyncio.Lock() for _ in self.keys.all]
        # One SQL checkpoint at a time: fences of several partitions at once would
        # otherwise write the same table concurrently (SQLite: one writer at a time).
        self._checkpointing = asyncio.Lock()
        self._fence = redis.register_script(_fence_script())
        #: Fences this process ran (data loss or rollback detected).
        self.fences = 0

    @classmethod
    def from_settings(
        cls,
        redis: aioredis.Redis,
        settings: Settings,
        positions: PositionStore | None,
        clock: Clock,
    ) -> RedisFence:
        """The fence of ``settings``' prefix and partitions, waiting for
        ``TOKEND_REDIS_REPLICA_ACKS`` replicas when set."""
        replicated = None
        if settings.redis_replica_acks > 0:
            replicated = ReplicatedWrites(
                redis,
                settings.redis,
                acks=settings.redis_replica_acks,
                timeout_ms=settings.redis_replica_ack_timeout,
            )
        return cls(
            redis,
            prefix=settings.redis_prefix,
            positions=positions,
            clock=clock,
            deny_window=settings.access_ttl + settings.leeway + 1,
            retention=settings.stream_retention,
            partitions=settings.redis_partitions,
            replicated=replicated,
        )

    @property
    def trusts_every_write(self) -> bool:
        """Whether every reply's position counts (no replicas to wait for)."""
        return self.replicated is None

    def argv(self, part: int) -> tuple[str, str]:
        """The known position for a script's ARGV; ('', '') before it is known (no check)."""
        known = self.known.get(part)
        if known is None:
            return "", ""
        return str(known.epoch), str(known.gen)

    def observe(self, part: int, position: Position) -> None:
        """Raise the known position of a partition to one Redis answered with."""
        known = self.known.get(part)
        if known is None or position > known:
            self.known[part] = position

    def behind(self, seen: Position | None, known: Position | None) -> bool:
        """Whether Redis at ``seen`` lost or rolled back data that ``known`` saw."""
        return known is not None and (seen is None or seen < known)

    def _store_key(self, part: int) -> str:
        return f"{self.prefix}#{part}"

    # start-up, lazy initialisation and recovery

    async def start(self) -> None:
        """Check the layout, load the SQL marks, then check every partition (an
        unreachable Redis is checked lazily)."""
        if self.positions is not None:
            await self._load_durable()
        try:
            await self.check_layout()
            # together: a fence waits for the second to turn, once for all partitions
            await asyncio.gather(*(self.ensure(p) for p in range(self.keys.partitions)))
            await self.checkpoint()  # a loss right after the first start is caught too
        except LayoutMismatch as exc:
            raise ConfigError(f"TOKEND_REDIS_PARTITIONS: {exc.description}") from None
        except Unavailable as exc:
            log.warning("Redis not checked at start-up, will be on first use: %s", exc)

    async def check_layout(self) -> None:
        """Record the partition count, or refuse data laid out for another one."""
        with redis_errors():
            await self.redis.set(self.keys.layout, self.keys.partitions, nx=True)
            stored = await self.redis.get(self.keys.layout)
        if stored is not None and int(stored) != self.keys.partitions:
            raise LayoutMismatch(
                f"Redis holds tokend data in {stored!s} partitions under prefix "
                f"{self.prefix!r}; TOKEND_REDIS_PARTITIONS is {self.keys.partitions}"
            )

    async def ensure(self, part: int) -> None:
        """Check a partition once before its first use (fencing it if it is behind)."""
        if part not in self.known:
            await self.recover(part)

    async def recover(self, part: int) -> None:
        """Re-read a partition's position and fence it if it is behind the known one.

        Called when a request saw a stale position. Safe to call from many requests and
        processes at once: one fence per loss.
        """
        async with self._locks[part]:
            while True:
                seen, confirmed = await self._read_confirmed(part)
                candidates = (self.known.get(part), self._durable.get(part))
                known = max((p for p in candidates if p is not None), default=None)
                if seen is None and known is None:
                    # A fresh Redis (first start for this prefix): mark epoch 1.
                    with redis_errors():
                        await self.check_layout()
                        await self.redis.set(self.keys.partition(part).epoch, 1, nx=True)
                    continue
                if seen is not None and not self.behind(seen, known):
                    if confirmed:
                        self.observe(part, seen)
                    else:  # not on the replicas yet: check against what is known to be
                        self.known.setdefault(part, known or Position(seen.epoch, 0))
                    return
                if await self._run_fence(part, seen, known):
                    return

    async def _read_confirmed(self, part: int) -> tuple[Position | None, bool]:
        """A partition's position, and whether it counts as seen (see the class doc)."""
        if self.replicated is not None:
            return await self.replicated.position(self.keys.partition(part), self.clock())
        return await self._read(part), True

    async def _read(self, part: int) -> Position | None:
        keys = self.keys.partition(part)
        with redis_errors():
            epoch, gen = await self.redis.mget(keys.epoch, keys.gen)
        return parse_position(epoch, gen)

    async def _run_fence(self, part: int, seen: Position | None, known: Position | None) -> bool:
        assert known is not None
        reason = "redis_data_loss" if seen is None else "redis_rollback"
        now = self.clock()
        await self.trim.refresh()
        with redis_errors():
            await self.check_layout()
            result = cast(
                list[Any],
                await self._fence(
                    keys=self.keys.partition(part).head,
                    args=[
                        "",
                        "",
                        self.trim.seconds,
                        "" if seen is None else str(seen.epoch),
                        known.epoch,
                        known.gen,
                        now,
                        int(now) + self.deny_window,
                        reason,
                        part,
                    ],
                ),
            )
        fencing = replies.fencing(result)
        if fencing.status != "fenced":
            return False  # another process changed the epoch first: look again
        fenced = Position(fencing.epoch, fencing.gen)
        self.known[part] = fenced
        self.fences += 1
        log.warning(
            "Redis partition %d %s (found %s, known %s): fenced as epoch %d; its sessions "
            "and access tokens from before now are refused",
            part,
            "lost its data" if seen is None else "was rolled back",
            seen,
            known,
            fenced.epoch,
        )
        with contextlib.suppress(TokendError):
            await self.checkpoint()
        # Tokens carry whole seconds and the fence denies iat <= now: let the second
        # turn, so what this process issues next is not caught by its own fence.
        await asyncio.sleep(max(0.0, math.floor(now) + 1 - now))
        return True

    # the background task

    async def checkpoint(self) -> None:
        """Raise the SQL marks to the known positions (and learn higher ones from them)."""
        if self.positions is None:
            return
        async with self._checkpointing:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        assert self.positions is not None
        ahead = {
            self._store_key(part): known
            for part, known in self.known.items()
            if part not in self._durable or self._durable[part] < known
        }
        if not ahead:
            return
        parts = {self._store_key(p): p for p in range(self.keys.partitions)}
        stored = await self.positions.raise_all(ahead, self.clock())
        for key, position in stored.items():
            self._durable[parts[key]] = position

    async def _sync_durable(self) -> None:
        await self.checkpoint()
        if self.positions is not None:
            await self._load_durable()

    async def _load_durable(self) -> None:
        """The SQL marks of every partition (one query)."""
        assert self.positions is not None
        parts = {self._store_key(p): p for p in range(self.keys.partitions)}
        for key, position in (await self.positions.load_all(parts)).items():
            self._durable[parts[key]] = position

    async def _look(self) -> dict[int, tuple[Position | None, bool]]:
        """Every partition's position now, and whether it counts as seen: as read (no
        replicas to wait for), else as confirmed on the replicas."""
        if self.replicated is not None:
            now = self.clock()
            return {p.index: await self.replicated.position(p, now) for p in self.keys.all}
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for part in self.keys.all:
                    pipe.execute_command("MGET", part.epoch, part.gen)
                rows = await pipe.execute()
        return {i: (parse_position(*row), True) for i, row in enumerate(rows)}

    async def run(self) -> None:
        """Check Redis every ``check_interval`` and checkpoint every ``checkpoint_interval``."""
        last_checkpoint = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                behind = []
                for part, (seen, confirmed) in (await self._look()).items():
                    if self.behind(seen, self.known.get(part)) or part not in self.known:
                        behind.append(part)
                    elif seen is not None and confirmed:
                        self.observe(part, seen)
                await asyncio.gather(*(self.recover(p) for p in behind))
                if loop.time() - last_checkpoint >= self.checkpoint_interval:
                    # A cancel (shutdown) in the middle of a SQL transaction would leave
                    # its connection stuck: the transaction finishes, then run() stops.
                    job = asyncio.ensure_future(self._sync_durable())
                    try:
                        await asyncio.shield(job)
                    except asyncio.CancelledError:
                        with contextlib.suppress(Exception):
                            await job
                        raise
                    last_checkpoint = loop.time()
            except asyncio.CancelledError:
                raise
            except TokendError as exc:
                log.warning("Redis position check failed, retrying: %s", exc)


async def run_checked(
    fence: RedisFence | None, part: int, run: Callable[[tuple[str, str]], Awaitable[Any]]
) -> list[Any]:
    """Run a script of partition ``part`` given its known position (``run(argv)``) that
    answers ``['stale']`` when Redis is behind it: recover (fence) and run it once more."""
    if fence is not None:
        await fence.ensure(part)
    for _ in range(2):
        with redis_errors():
            result: list[Any] = await run(fence.argv(part) if fence is not None else ("", ""))
        if fence is None or result[0] != "stale":
            return result  # (without a fence, ``run`` may also be queued on a pipeline)
        await fence.recover(part)
    raise Unavailable("session store is recovering from a Redis restart")


async def read_checked(
    fence: RedisFence | None, part: int, read: Callable[[], Awaitable[list[Any]]]
) -> list[Any]:
    """Run a read whose last two values are the partition's epoch and gen; when they show
    Redis behind the known position, recover (fence) and read again."""
    if fence is not None:
        await fence.ensure(part)
    for _ in range(2):
        # The known position as of sending: Redis answers at or past it unless it fell
        # behind (a reply processed meanwhile may raise ``known`` past this answer).
        known = fence.known.get(part) if fence is not None else None
        with redis_errors():
            values = await read()
        seen = parse_position(values[-2], values[-1])
        if fence is None:
            return values
        if not fence.behind(seen, known):
            if seen is not None and fence.trusts_every_write:
                fence.observe(part, seen)
            return values
        await fence.recover(part)  # what was read may be lost data: read again
    raise Unavailable("session store is recovering from a Redis restart")
