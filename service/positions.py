"""Where each partition's data in Redis stands, and its durable high-water mark in SQL.

See service/fence.py for how the two are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from .db import db_errors
from .errors import Conflict, Unavailable
from .models import RedisPositionRow


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
