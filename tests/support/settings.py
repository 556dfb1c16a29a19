"""Where the suite's real servers are and the settings every test starts from."""

from __future__ import annotations

import os
import uuid

import asyncpg

REDIS_URL = os.environ.get("TOKEND_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "TOKEND_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
TEST_KEK = "q1k3vY3fz7H2m8y6mE0bY1cX8sQv0nq2b2QWm8mX0kU="
# Cheap argon2 for tests that do not measure hashing itself.
FAST_ARGON2 = {
    "TOKEND_ARGON2_TIME_COST": "1",
    "TOKEND_ARGON2_MEMORY_KIB": "1024",
    "TOKEND_ARGON2_PARALLELISM": "1",
}


def pg_dsn(url: str) -> str:
    """asyncpg's own DSN for a SQLAlchemy PostgreSQL URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def make_postgres_database() -> str:
    name = f"tokend_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


async def drop_postgres_database(url: str) -> None:
    name = url.rpartition("/")[2]
    conn = await asyncpg.connect(pg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
