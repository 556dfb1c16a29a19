"""Redis data loss and rollback: detected against a durable high-water mark, then fenced.

Redis holds every session's refresh-token state and every deny entry. If it comes back
empty (a restart without persistence, a new server) or from an older snapshot, consumed
refresh tokens come back to life and revoked access tokens pass again. tokend notices
and fences instead of trusting the data.

The *position* of the data in Redis is ``(epoch, gen)``, compared in that order:

    P:epoch   the epoch: 1 at first start, one more at every fence; never expires
    P:gen     the write generation: every rotation and every revocation INCRs it
    P:fence   the time of the last fence: access tokens issued up to it are denied

Each API process knows the highest position it has seen: from the replies of its own
rotations and revocations, from the deny check's reads, and from SQL, where the
position is checkpointed every few seconds (table ``redis_positions``, one row per key
prefix; SQL never sits on the refresh or ``/auth/me`` path). Redis is *behind* when
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
- the event ``all.revoked`` (reason ``redis_data_loss`` or ``redis_rollback``) goes to
  the new stream and channel, so subscribers deny the same tokens.

A Redis restarted with all its data (AOF with ``appendfsync always``, a clean shutdown)
is at or past the known position and is not fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from . import replies
from .clock import Clock
from .db import db_errors
from .errors import Conflict, TokendError, Unavailable
from .keyspace import Keyspace
from .models import RedisPositionRow
from .redisconn import redis_errors

log = logging.getLogger("tokend.fence")


@dataclass(frozen=True, order=True)
class Position:
    """Where the data in Redis stands: a fence starts a new epoch; writes raise gen."""

    epoch: int
    gen: int


def parse_position(epoch: Any, gen: Any) -> Position | None:
    """The position read from Redis; None when the epoch marker is missing (data lost)."""
    if epoch is None:
        return None
    return Position(int(epoch), int(gen or 0))


class PositionStore:
    """The durable high-water mark in SQL: only ever raised."""

    def __init__(self, sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
        self._sessions = sessions

    async def load(self, prefix: str) -> Position | None:
        with db_errors():
            async with self._sessions() as session:
                row = await session.get(RedisPositionRow, prefix)
                return None if row is None else Position(row.epoch, row.gen)

    async def raise_to(self, prefix: str, position: Position, now: float) -> Position:
        """Store ``position`` unless a higher one is stored; the stored one."""
        for _ in range(3):
            try:
                with db_errors():
                    async with self._sessions() as session, session.begin():
                        row = await session.scalar(
                            select(RedisPositionRow)
                            .where(RedisPositionRow.prefix == prefix)
                            .with_for_update()
                        )
                        if row is None:
                            session.add(
                                RedisPositionRow(
                                    prefix=prefix,
                                    epoch=position.epoch,
                                    gen=position.gen,
                                    updated_at=now,
                                )
                            )
                            return position
                        stored = Position(row.epoch, row.gen)
                        if position > stored:
                            row.epoch, row.gen, row.updated_at = position.epoch, position.gen, now
                            return position
                        return stored
            except Conflict:  # another process inserted the row first: compare with it
                continue
        raise Unavailable("could not record the Redis position")


def _fence_script() -> str:
    lua = resources.files("service") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / "fence.lua").read_text()


class RedisFence:
    """Knows the highest Redis position seen and fences a Redis that fell behind it."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        positions: PositionStore | None,
        clock: Clock,
        deny_window: int,
        retention: int,
        check_interval: float = 1.0,
        checkpoint_interval: float = 5.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.positions = positions
        self.clock = clock
        self.deny_window = deny_window
        self.retention = retention
        self.check_interval = check_interval
        self.checkpoint_interval = checkpoint_interval
        #: The highest position seen (None until Redis has been read once).
        self.known: Position | None = None
        self._durable: Position | None = None  # last loaded from or saved to SQL
        self._lock = asyncio.Lock()
        self.keys = Keyspace(prefix)
        self._fence = redis.register_script(_fence_script())
        #: Fences this process ran (data loss or rollback detected).
        self.fences = 0

    @property
    def epoch_key(self) -> str:
        return self.keys.epoch

    @property
    def gen_key(self) -> str:
        return self.keys.gen

    @property
    def fence_key(self) -> str:
        return self.keys.fence

    def argv(self) -> tuple[str, str]:
        """The known position for a script's ARGV; ('', '') before it is known (no check)."""
        if self.known is None:
            return "", ""
        return str(self.known.epoch), str(self.known.gen)

    def observe(self, position: Position) -> None:
        """Raise the known position to one Redis just answered with."""
        if self.known is None or position > self.known:
            self.known = position

    def behind(self, seen: Position | None, known: Position | None) -> bool:
        """Whether Redis at ``seen`` lost or rolled back data that ``known`` saw."""
        return known is not None and (seen is None or seen < known)

    # start-up, lazy initialisation and recovery

    async def start(self) -> None:
        """Load the SQL mark, then check Redis (an unreachable Redis is checked lazily)."""
        if self.positions is not None:
            self._durable = await self.positions.load(self.prefix)
        try:
            await self.ensure()
            await self.checkpoint()  # a loss right after the first start is caught too
        except Unavailable as exc:
            log.warning("Redis not checked at start-up, will be on first use: %s", exc)

    async def ensure(self) -> None:
        """Check Redis once before the first use (fencing it if it is behind)."""
        if self.known is None:
            await self.recover()

    async def recover(self) -> None:
        """Re-read the position and fence Redis if it is behind the known one.

        Called when a request saw a stale position. Safe to call from many requests and
        processes at once: one fence per loss.
        """
        async with self._lock:
            while True:
                seen = await self._read()
                known = max((p for p in (self.known, self._durable) if p is not None), default=None)
                if seen is None and known is None:
                    # A fresh Redis (first start for this prefix): mark epoch 1.
                    with redis_errors():
                        await self.redis.set(self.epoch_key, 1, nx=True)
                    continue
                if seen is not None and not self.behind(seen, known):
                    self.observe(seen)
                    return
                if await self._run_fence(seen, known):
                    return

    async def _read(self) -> Position | None:
        with redis_errors():
            epoch, gen = await self.redis.mget(self.epoch_key, self.gen_key)
        return parse_position(epoch, gen)

    async def _run_fence(self, seen: Position | None, known: Position | None) -> bool:
        assert known is not None
        reason = "redis_data_loss" if seen is None else "redis_rollback"
        now = self.clock()
        with redis_errors():
            result = cast(
                list[Any],
                await self._fence(
                    keys=[*self.keys.script_head(), self.keys.fence],
                    args=[
                        "",
                        "",
                        self.retention,
                        "" if seen is None else str(seen.epoch),
                        known.epoch,
                        known.gen,
                        now,
                        int(now) + self.deny_window,
                        reason,
                    ],
                ),
            )
        fencing = replies.fencing(result)
        if fencing.status != "fenced":
            return False  # another process changed the epoch first: look again
        fenced = Position(fencing.epoch, fencing.gen)
        self.known = fenced
        self.fences += 1
        log.warning(
            "Redis %s (found %s, known %s): fenced as epoch %d; sessions and access "
            "tokens from before now are refused",
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
        """Raise the SQL mark to the known position (and learn a higher one from it)."""
        if self.positions is None or self.known is None:
            return
        if self._durable is not None and self._durable >= self.known:
            return
        self._durable = await self.positions.raise_to(self.prefix, self.known, self.clock())

    async def run(self) -> None:
        """Check Redis every ``check_interval`` and checkpoint every ``checkpoint_interval``."""
        last_checkpoint = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                seen = await self._read()
                if self.known is None or self.behind(seen, self.known):
                    await self.recover()
                elif seen is not None:
                    self.observe(seen)
                if loop.time() - last_checkpoint >= self.checkpoint_interval:
                    await self.checkpoint()
                    if self.positions is not None:
                        durable = await self.positions.load(self.prefix)
                        if durable is not None:
                            self._durable = durable
                    last_checkpoint = loop.time()
            except asyncio.CancelledError:
                raise
            except TokendError as exc:
                log.warning("Redis position check failed, retrying: %s", exc)


async def run_checked(
    fence: RedisFence | None, run: Callable[[tuple[str, str]], Awaitable[Any]]
) -> list[Any]:
    """Run a script given the known position (``run(argv)``) that answers ``['stale']``
    when Redis is behind it: recover (fence) and run it once more."""
    if fence is not None:
        await fence.ensure()
    for _ in range(2):
        with redis_errors():
            result: list[Any] = await run(fence.argv() if fence is not None else ("", ""))
        if fence is None or result[0] != "stale":
            return result  # (without a fence, ``run`` may also be queued on a pipeline)
        await fence.recover()
    raise Unavailable("session store is recovering from a Redis restart")


async def read_checked(
    fence: RedisFence | None, read: Callable[[], Awaitable[list[Any]]]
) -> list[Any]:
    """Run a read whose last two values are ``P:epoch`` and ``P:gen``; when they show Redis
    behind the known position, recover (fence) and read again."""
    if fence is not None:
        await fence.ensure()
    for _ in range(2):
        # The known position as of sending: Redis answers at or past it unless it fell
        # behind (a reply processed meanwhile may raise ``known`` past this answer).
        known = fence.known if fence is not None else None
        with redis_errors():
            values = await read()
        seen = parse_position(values[-2], values[-1])
        if fence is None:
            return values
        if not fence.behind(seen, known):
            if seen is not None:
                fence.observe(seen)
            return values
        await fence.recover()  # what was read may be lost data: read again
    raise Unavailable("session store is recovering from a Redis restart")
