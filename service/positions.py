"""Where each partition's data in Redis stands, and its durable high-water mark in SQL.

See service/fence.py for how the two are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
        return (await self.load_all([prefix])).get(prefix)

    async def load_all(self, keys: Iterable[str]) -> dict[str, Position]:
        """The stored positions of ``keys`` (one query; absent keys are left out)."""
        wanted = list(keys)
        with db_errors():
            async with self._sessions() as session:
                rows = await session.scalars(
                    select(RedisPositionRow).where(RedisPositionRow.prefix.in_(wanted))
                )
                return {row.prefix: Position(row.epoch, row.gen) for row in rows}

    async def raise_to(self, prefix: str, position: Position, now: float) -> Position:
        """Store ``position`` unless a higher one is stored; the stored one."""
        return (await self.raise_all({prefix: position}, now))[prefix]

    async def raise_all(self, positions: Mapping[str, Position], now: float) -> dict[str, Position]:
        """Store each position unless a higher one is stored, in one transaction; the
        stored ones."""
        for _ in range(3):
            try:
                with db_errors():
                    async with self._sessions() as session, session.begin():
                        rows = {
                            row.prefix: row
                            for row in await session.scalars(
                                select(RedisPositionRow)
                                .where(RedisPositionRow.prefix.in_(list(positions)))
                                .with_for_update()
                            )
                        }
                        stored: dict[str, Position] = {}
                        for key, position in positions.items():
                            row = rows.get(key)
                            if row is None:
                                session.add(
                                    RedisPositionRow(
                                        prefix=key,
                                        epoch=position.epoch,
                                        gen=position.gen,
                                        updated_at=now,
                                    )
                                )
                                stored[key] = position
                            elif position > Position(row.epoch, row.gen):
                                row.epoch, row.gen, row.updated_at = (
                                    position.epoch,
                                    position.gen,
                                    now,
                                )
                                stored[key] = position
                            else:
                                stored[key] = Position(row.epoch, row.gen)
                        return stored
            except Conflict:  # another process inserted a row first: compare with it
                continue
        raise Unavailable("could not record the Redis position")
