"""Users: the SQL store on SQLite and PostgreSQL, username and password rules, /auth/register."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.db import make_engine
from service.errors import Conflict, ValidationFailed
from service.passwords import MAX_PASSWORD, check_password_rules
from service.users import SqlUserStore, normalize_username
from tests.support import PASSWORD, bearer, login, register

NOW = 1_800_000_000.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlUserStore]:
    engine = make_engine(db_url)
    # The store must not depend on how the caller configured its sessions.
    yield SqlUserStore(async_sessionmaker(engine))
    await engine.dispose()


# --- the store, on both databases ---------------------------------------------------------


async def test_create_and_look_up(store: SqlUserStore) -> None:
    user = await store.create("alice", "hash-1", NOW)
    assert user.username == "alice" and user.password_hash == "hash-1"
    assert not user.disabled
    assert user.created_at == NOW and user.password_changed_at == NOW
    assert len(user.id) == 36

    assert await store.by_username("alice") == user
    assert await store.by_id(user.id) == user
    assert await store.by_username("bob") is None
    assert await store.by_id("00000000-0000-0000-0000-000000000000") is None


async def test_user_without_password(store: SqlUserStore) -> None:
    user = await store.create("social", None, NOW)
    fetched = await store.by_id(user.id)
    assert fetched is not None
    assert fetched.password_hash is None and fetched.password_changed_at is None


async def test_duplicate_username_is_a_conflict(store: SqlUserStore) -> None:
    first = await store.create("alice", "hash-1", NOW)
    with pytest.raises(Conflict) as info:
        await store.create("alice", "hash-2", NOW + 1)
    assert "taken" in info.value.description
    still = await store.by_username("alice")
    assert still is not None and still.id == first.id and still.password_hash == "hash-1"


async def test_set_password(store: SqlUserStore) -> None:
    user = await store.create("alice", "hash-1", NOW)
    await store.set_password(user.id, "hash-2", NOW + 60)
    fetched = await store.by_id(user.id)
    assert fetched is not None
    assert fetched.password_hash == "hash-2"
    assert fetched.password_changed_at == NOW + 60
    assert fetched.created_at == NOW


async def test_set_disabled(store: SqlUserStore) -> None:
    user = await store.create("alice", "hash-1", NOW)
    other = await store.create("bob", "hash-1", NOW)
    await store.set_disabled(user.id, True)
    fetched = await store.by_username("alice")
    assert fetched is not None and fetched.disabled
    untouched = await store.by_id(other.id)
    assert untouched is not None and not untouched.disabled
    await store.set_disabled(user.id, False)
    fetched = await store.by_id(user.id)
    assert fetched is not None and not fetched.disabled


# --- username rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("ALICE.Smith+tag@example.com", "alice.smith+tag@example.com"),
        ("  bob  ", "bob"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # fullwidth "alice" folds to ASCII (NFKC)
        ("a_1", "a_1"),
        ("x" * 64, "x" * 64),
    ],
)
def test_username_normalized(raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "\u0430dmin",  # a Cyrillic small a: a homoglyph of "admin"
        "admin\x00",
        "ad\x00min",
        "x" * 10_000,
        "x" * 65,
        "ab",
        "",
        "   ",
        "_alice",
        ".alice",
        "ali ce",
        "ali\nce",
        "al/ice",
        "ælice",
    ],
)
def test_username_rejected(raw: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        normalize_username(raw)
    assert "username" in info.value.description


@pytest.mark.parametrize("raw", [None, 42, ["alice"], {"u": 1}])
def test_username_must_be_a_string(raw: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        normalize_username(raw)
    assert "username" in info.value.description


# --- password rules -------------------------------------------------------------------------


def test_password_accepted() -> None:
    assert check_password_rules("correct horse", "alice") == "correct horse"
    assert check_password_rules("pässwörd ünïcode", None) == "pässwörd ünïcode"
    assert check_password_rules("x" * MAX_PASSWORD) == "x" * MAX_PASSWORD


@pytest.mark.parametrize(
    ("password", "username", "fragment"),
    [
        ("short", "alice", "at least 8"),
        ("", "alice", "at least 8"),
        ("x" * (MAX_PASSWORD + 1), "alice", "at most"),
        ("alicealice", "alicealice", "differ from the username"),
        ("AliceAlice", "alicealice", "differ from the username"),
        ("password\x00x", "alice", "control characters"),
        (None, "alice", "password"),
        (12345678, "alice", "string"),
    ],
)
def test_password_rejected(password: object, username: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        check_password_rules(password, username)
    assert fragment in info.value.description


# --- POST /auth/register ---------------------------------------------------------------------


async def test_register_201(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/auth/register", json={"username": "Alice", "password": PASSWORD})
    assert resp.status == 201
    body = await resp.json()
    assert set(body) == {"id", "username"}
    assert body["username"] == "alice"
    assert len(body["id"]) == 36


async def test_register_taken_is_409_case_insensitively(make_client: Any) -> None:
    client = await make_client()
    await register(client, "alice")
    for name in ("alice", "ALICE", "Alice"):
        resp = await client.post(
            "/auth/register", json={"username": name, "password": "another password"}
        )
        assert resp.status == 409
        body = await resp.json()
        assert body["error"] == "conflict"
        assert "taken" in body["error_description"]
    # The first registration's password still works.
    await login(client, "alice")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"username": "ab", "password": PASSWORD}, "username must be 3 to 64"),
        ({"username": "\u0430dmin", "password": PASSWORD}, "username must be"),
        ({"username": "x" * 10_000, "password": PASSWORD}, "username must be"),
        ({"username": "bob\u0000", "password": PASSWORD}, "username must be"),
        ({"username": "alice", "password": "short"}, "password must be at least 8"),
        ({"username": "alicealice", "password": "AliceAlice"}, "differ from the username"),
        ({"password": PASSWORD}, "username is required"),
        ({"username": "alice"}, "password is required"),
        ({}, "username is required"),
        ({"username": 42, "password": PASSWORD}, "username must be a string"),
        ({"username": "alice", "password": ["x" * 9]}, "password must be a string"),
        ({"username": None, "password": PASSWORD}, "username is required"),
    ],
)
async def test_register_bad_input_is_400(
    make_client: Any, body: dict[str, Any], fragment: str
) -> None:
    client = await make_client()
    resp = await client.post("/auth/register", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "invalid_request"
    assert fragment in answer["error_description"]
    # Nothing was created.
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 401


async def test_register_then_login_on_each_database(make_client: Any, db_url: str) -> None:
    client = await make_client(TOKEND_DATABASE_URL=db_url)
    created = await register(client, "Carol")
    tokens = await login(client, "CAROL")
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert resp.status == 200
    me = await resp.json()
    assert me["sub"] == created["id"] and me["username"] == "carol"
    resp = await client.post("/auth/register", json={"username": "carol", "password": PASSWORD})
    assert resp.status == 409
