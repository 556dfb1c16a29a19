"""Users: the store protocol, its SQL implementation and the username rules."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from .db import db_errors
from .errors import Conflict, ValidationFailed
from .models import UserRow

# ASCII only: unicode usernames invite homoglyph impersonation (a Cyrillic "a" in "admin").
USERNAME_MIN, USERNAME_MAX = 3, 64
# After case-folding; the OpenAPI document publishes it (with upper case allowed).
USERNAME_PATTERN = f"[a-z0-9][a-z0-9._@+-]{{{USERNAME_MIN - 1},{USERNAME_MAX - 1}}}"
_USERNAME = re.compile(USERNAME_PATTERN)


@dataclass(frozen=True)
class User:
    id: str
    username: str
    password_hash: str | None
    disabled: bool
    created_at: float
    password_changed_at: float | None


def normalize_username(raw: object) -> str:
    """Case-fold and check a username; raise ValidationFailed with the rule it breaks."""
    if raw is None:
        raise ValidationFailed("username is required")
    if not isinstance(raw, str):
        raise ValidationFailed("username must be a string")
    if len(raw) > USERNAME_MAX:
        raise ValidationFailed("username must be 3 to 64 characters")
    name = unicodedata.normalize("NFKC", raw).strip().lower()
    if not _USERNAME.fullmatch(name):
        raise ValidationFailed(
            "username must be 3 to 64 characters: ASCII letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    return name


class UserStore(Protocol):
    async def create(self, username: str, password_hash: str | None, now: float) -> User: ...
    async def by_username(self, username: str) -> User | None: ...
    async def by_id(self, user_id: str) -> User | None: ...
    async def set_password(self, user_id: str, password_hash: str, now: float) -> None: ...
    async def set_disabled(self, user_id: str, disabled: bool) -> None: ...
    async def delete(self, user_id: str) -> None: ...


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        username=row.username,
        password_hash=row.password_hash,
        disabled=row.disabled,
        created_at=row.created_at,
        password_changed_at=row.password_changed_at,
    )


class SqlUserStore:
    """UserStore on SQLAlchemy asyncio (SQLite or PostgreSQL)."""

    def __init__(self, sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
        self._sessions = sessions

    async def create(self, username: str, password_hash: str | None, now: float) -> User:
        row = UserRow(
            id=str(uuid.uuid4()),
            username=username,
            password_hash=password_hash,
            disabled=False,
            created_at=now,
            password_changed_at=now if password_hash else None,
        )
        # Built before the commit, which expires the row's attributes under the default
        # sessionmaker (reading them afterwards would need I/O outside the session).
        user = _user(row)
        try:
            with db_errors():
                async with self._sessions() as session, session.begin():
                    session.add(row)
        except Conflict:
            raise Conflict("username already taken") from None
        return user

    async def by_username(self, username: str) -> User | None:
        with db_errors():
            async with self._sessions() as session:
                row = await session.scalar(select(UserRow).where(UserRow.username == username))
                return _user(row) if row is not None else None

    async def by_id(self, user_id: str) -> User | None:
        with db_errors():
            async with self._sessions() as session:
                row = await session.get(UserRow, user_id)
                return _user(row) if row is not None else None

    async def set_password(self, user_id: str, password_hash: str, now: float) -> None:
        with db_errors():
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(UserRow)
                    .where(UserRow.id == user_id)
                    .values(password_hash=password_hash, password_changed_at=now)
                )

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        with db_errors():
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(UserRow).where(UserRow.id == user_id).values(disabled=disabled)
                )

    async def delete(self, user_id: str) -> None:
        with db_errors():
            async with self._sessions() as session, session.begin():
                await session.execute(delete(UserRow).where(UserRow.id == user_id))
