"""The identity store on SQLite and PostgreSQL: find or create by (issuer, subject) only,
explicit links, and the rule that the last login method cannot be unlinked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.db import engine_context
from service.errors import Conflict, NotFound
from service.identities import ExternalAccount, SqlIdentityStore
from service.users import SqlUserStore

ISSUER = "https://idp.example.com"


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[SqlIdentityStore, SqlUserStore]]:
    async with engine_context(db_url) as engine:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield SqlIdentityStore(sessions), SqlUserStore(sessions)


def _account(subject: str, hint: str | None = None, **kw: str) -> ExternalAccount:
    return ExternalAccount(
        provider=kw.get("provider", "idp"),
        issuer=kw.get("issuer", ISSUER),
        subject=subject,
        email=kw.get("email"),
        username_hint=hint,
    )


async def test_find_or_create_by_issuer_and_subject(
    stores: tuple[SqlIdentityStore, SqlUserStore],
) -> None:
    identities, users = stores
    first = await identities.find_or_create_user(_account("s1", "alice"), 1.0)
    assert first.username == "alice"
    assert first.password_hash is None
    again = await identities.find_or_create_user(_account("s1", "renamed"), 2.0)
    assert again.id == first.id
    # Same subject at another issuer is another person.
    other = await identities.find_or_create_user(_account("s1", "alice", issuer="https://b"), 3.0)
    assert other.id != first.id
    assert other.username.startswith("alice-")
    assert await users.by_id(first.id) is not None


async def test_email_never_links(stores: tuple[SqlIdentityStore, SqlUserStore]) -> None:
    identities, users = stores
    local = await users.create("dana@example.com", "hash", 1.0)
    social = await identities.find_or_create_user(
        _account("s9", "dana@example.com", email="dana@example.com"), 2.0
    )
    assert social.id != local.id
    assert await identities.list_for_user(local.id) == []


async def test_concurrent_first_logins_make_one_user(
    stores: tuple[SqlIdentityStore, SqlUserStore],
) -> None:
    identities, _ = stores
    made = await asyncio.gather(
        *(identities.find_or_create_user(_account("race", "racer"), 1.0) for _ in range(5))
    )
    assert len({u.id for u in made}) == 1


async def test_unlink_rule(stores: tuple[SqlIdentityStore, SqlUserStore]) -> None:
    identities, users = stores
    social = await identities.find_or_create_user(_account("only"), 1.0)
    with pytest.raises(Conflict, match="last login method"):
        await identities.unlink(social.id, "idp")
    with pytest.raises(NotFound):
        await identities.unlink(social.id, "other")

    # A second provider makes the first removable, not the last one.
    await identities.link(social.id, _account("g1", provider="other", issuer="https://o"), 2.0)
    assert [i.provider for i in await identities.list_for_user(social.id)] == ["idp", "other"]
    assert await identities.unlink(social.id, "idp") == 1
    with pytest.raises(Conflict):
        await identities.unlink(social.id, "other")

    # A password is another login method.
    local = await users.create("erin", "hash", 1.0)
    await identities.link(local.id, _account("erin-sub"), 2.0)
    assert await identities.unlink(local.id, "idp") == 1
    assert await identities.list_for_user(local.id) == []


async def test_link_conflicts(stores: tuple[SqlIdentityStore, SqlUserStore]) -> None:
    identities, users = stores
    owner = await identities.find_or_create_user(_account("taken"), 1.0)
    other = await users.create("frank", "hash", 1.0)
    with pytest.raises(Conflict, match="another user"):
        await identities.link(other.id, _account("taken"), 2.0)
    # Linking what is already yours is a no-op.
    await identities.link(owner.id, _account("taken"), 2.0)
    assert len(await identities.list_for_user(owner.id)) == 1
    await identities.link(other.id, _account("f1"), 2.0)
    with pytest.raises(Conflict, match="unlink it first"):
        await identities.link(other.id, _account("f2"), 3.0)
