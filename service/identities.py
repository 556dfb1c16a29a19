"""External identities: which OpenID Connect accounts (issuer, subject) log in as which user.

An identity is keyed by the provider's issuer and the subject it asserts, never by email:
an email address at a provider proves nothing about a local account with the same name.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from .db import db_errors
from .errors import Conflict, NotFound, ValidationFailed
from .models import IdentityRow, UserRow
from .users import User, normalize_username

USERNAME_ATTEMPTS = 8


@dataclass(frozen=True)
class Identity:
    """One linked provider account."""

    user_id: str
    provider: str
    issuer: str
    subject: str
    email: str | None
    created_at: float


@dataclass(frozen=True)
class ExternalAccount:
    """What a verified ID token says about the person logging in."""

    provider: str
    issuer: str
    subject: str
    email: str | None = None
    username_hint: str | None = None


class IdentityStore(Protocol):
    async def user_for(self, issuer: str, subject: str) -> User | None: ...
    async def find_or_create_user(self, account: ExternalAccount, now: float) -> User: ...
    async def link(self, user_id: str, account: ExternalAccount, now: float) -> Identity: ...
    async def list_for_user(self, user_id: str) -> list[Identity]: ...
    async def unlink(self, user_id: str, provider: str) -> int: ...


def _identity(row: IdentityRow) -> Identity:
    return Identity(
        user_id=row.user_id,
        provider=row.provider,
        issuer=row.issuer,
        subject=row.subject,
        email=row.email,
        created_at=row.created_at,
    )


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        username=row.username,
        password_hash=row.password_hash,
        disabled=row.disabled,
        created_at=row.created_at,
        password_changed_at=row.password_changed_at,
    )


_NOT_NAME = re.compile(r"[^a-z0-9._+-]+")


def username_base(hint: str | None) -> str:
    """A valid username derived from a provider's preferred_username or email local part."""
    text = unicodedata.normalize("NFKD", hint or "").encode("ascii", "ignore").decode()
    text = _NOT_NAME.sub("-", text.lower().partition("@")[0]).strip("._+-")[:40]
    if len(text) < 3:
        text = f"user-{text}" if text else "user"
    try:
        return normalize_username(text)
    except ValidationFailed:
        return "user"


def username_candidates(hint: str | None) -> Iterator[str]:
    """The derived name first, then the same with a random suffix (usernames stay unique)."""
    base = username_base(hint)
    yield base
    for _ in range(USERNAME_ATTEMPTS - 2):
        yield f"{base}-{secrets.token_hex(3)}"
    yield f"user-{secrets.token_hex(8)}"


class SqlIdentityStore:
    """IdentityStore on SQLAlchemy asyncio (SQLite or PostgreSQL)."""

    def __init__(self, sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
        self._sessions = sessions

    async def user_for(self, issuer: str, subject: str) -> User | None:
        """The local user linked to this provider account, if any."""
        with db_errors():
            async with self._sessions() as session:
                row = await session.scalar(
                    select(UserRow)
                    .join(IdentityRow, IdentityRow.user_id == UserRow.id)
                    .where(IdentityRow.issuer == issuer, IdentityRow.subject == subject)
                )
                return _user(row) if row is not None else None

    async def find_or_create_user(self, account: ExternalAccount, now: float) -> User:
        """The user linked to ``account``, or a new one without a password, linked to it.

        Race-safe: when two first logins of one account collide, the unique
        (issuer, subject) constraint lets one create and the other finds its user.
        """
        user = await self.user_for(account.issuer, account.subject)
        if user is not None:
            return user
        for username in username_candidates(account.username_hint):
            try:
                return await self._create(username, account, now)
            except Conflict:
                existing = await self.user_for(account.issuer, account.subject)
                if existing is not None:
                    return existing
                # Otherwise the username was taken: try the next candidate.
        raise Conflict("could not find a free username for the new account")

    async def _create(self, username: str, account: ExternalAccount, now: float) -> User:
        user_row = UserRow(
            id=str(uuid.uuid4()),
            username=username,
            password_hash=None,
            disabled=False,
            created_at=now,
            password_changed_at=None,
        )
        user = _user(user_row)
        with db_errors():
            async with self._sessions() as session, session.begin():
                session.add(user_row)
                await session.flush()  # the user row first: the identity references it
                session.add(_row(user.id, account, now))
        return user

    async def link(self, user_id: str, account: ExternalAccount, now: float) -> Identity:
        """Link a provider account to an existing user (an explicit, authenticated request)."""
        row = _row(user_id, account, now)
        identity = _identity(row)
        owner = await self.user_for(account.issuer, account.subject)
        if owner is not None:
            if owner.id == user_id:
                return identity
            raise Conflict("this provider account is already linked to another user")
        try:
            with db_errors():
                async with self._sessions() as session, session.begin():
                    same = await session.scalar(
                        select(IdentityRow.id).where(
                            IdentityRow.user_id == user_id,
                            IdentityRow.provider == account.provider,
                        )
                    )
                    if same is not None:
                        raise Conflict(
                            f"an account of provider {account.provider!r} is already linked; "
                            "unlink it first"
                        )
                    session.add(row)
        except Conflict as exc:
            if exc.__cause__ is None:
                raise
            raise Conflict("this provider account is already linked to another user") from None
        return identity

    async def list_for_user(self, user_id: str) -> list[Identity]:
        """The user's linked provider accounts, oldest first."""
        with db_errors():
            async with self._sessions() as session:
                rows = await session.scalars(
                    select(IdentityRow)
                    .where(IdentityRow.user_id == user_id)
                    .order_by(IdentityRow.created_at, IdentityRow.id)
                )
                return [_identity(row) for row in rows]

    async def unlink(self, user_id: str, provider: str) -> int:
        """Remove the user's identities of ``provider``; refuse to remove the last login method.

        The user row is locked first (PostgreSQL), so two concurrent unlinks cannot each
        leave the other as the "remaining" method and end with none.
        """
        with db_errors():
            async with self._sessions() as session, session.begin():
                user = await session.scalar(
                    select(UserRow).where(UserRow.id == user_id).with_for_update()
                )
                if user is None:
                    raise NotFound("no such user")
                rows = list(
                    await session.scalars(select(IdentityRow).where(IdentityRow.user_id == user_id))
                )
                doomed = [row.id for row in rows if row.provider == provider]
                if not doomed:
                    raise NotFound(f"no identity of provider {provider!r} is linked")
                if user.password_hash is None and len(rows) == len(doomed):
                    raise Conflict(
                        "cannot unlink the last login method: the account has no password "
                        "and no other linked provider"
                    )
                await session.execute(delete(IdentityRow).where(IdentityRow.id.in_(doomed)))
                return len(doomed)


def _row(user_id: str, account: ExternalAccount, now: float) -> IdentityRow:
    email = account.email if account.email and len(account.email) <= 320 else None
    return IdentityRow(
        user_id=user_id,
        provider=account.provider,
        issuer=account.issuer,
        subject=account.subject,
        email=email,
        created_at=now,
    )
