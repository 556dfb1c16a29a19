"""Schema migrations through Alembic, configured in code (no alembic.ini needed)."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config

from .db import ensure_private_sqlite


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", "service:migrations")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (blocking: run it in a thread from async code)."""
    ensure_private_sqlite(database_url)
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """``upgrade`` off the event loop (Alembic's env runs its own loop)."""
    await asyncio.to_thread(upgrade, database_url, revision)
