"""Database engine lifecycle and error wrapping for the SQL stores."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .errors import Conflict, Unavailable

log = logging.getLogger("tokend.db")

DB_CONNECT_TIMEOUT = 5.0
DB_COMMAND_TIMEOUT = 5.0
# SQLite's companions of a database file; SQLite gives them the database file's mode.
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL and a busy timeout for concurrent writers."""
    if url.startswith("sqlite"):
        ensure_private_sqlite(url)
        # A small pool: opening a SQLite connection (and its PRAGMAs) per query cost more
        # than the query itself.
        engine = create_async_engine(
            url, pool_size=5, max_overflow=5, pool_timeout=5, connect_args={"timeout": 15}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        pool_pre_ping=True,
        # A database that stops answering (frozen, partitioned) must fail a request in
        # seconds, not hang it: asyncpg's own defaults are 60 s to connect and no limit
        # on a query.
        connect_args={"timeout": DB_CONNECT_TIMEOUT, "command_timeout": DB_COMMAND_TIMEOUT},
    )


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest.split("?", 1)[0])


def ensure_private_sqlite(url: str) -> None:
    """Create the SQLite file behind ``url`` readable by its owner only (0600), before
    SQLite does (it would use 0644 less the umask): it holds password hashes and sealed
    signing keys. Leftover -wal/-shm/-journal files of a new database are made 0600 too.
    An existing database keeps its mode, with a warning when others may read it.
    """
    path = sqlite_path(url)
    if path is None or "mode=memory" in url:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0
        if mode & 0o077:
            log.warning(
                "database file %s is readable by others (mode %04o): chmod 600 it", path, mode
            )
        return
    except OSError:
        return  # a missing directory or no permission: SQLite reports it in its own words
    os.close(fd)
    for suffix in SQLITE_SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(sidecar, 0o600)


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Wrap SQLAlchemy failures: integrity → Conflict, anything else → Unavailable."""
    try:
        yield
    except IntegrityError as exc:
        raise Conflict() from exc
    except (TimeoutError, DBAPIError, SQLAlchemyError, OSError) as exc:
        raise Unavailable("database unavailable") from exc


async def ping(sessions: async_sessionmaker) -> None:  # type: ignore[type-arg]
    """Raise Unavailable when the database does not answer."""
    with db_errors():
        async with sessions() as session:
            await session.execute(text("SELECT 1"))


@contextlib.asynccontextmanager
async def engine_context(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine that is disposed on exit."""
    engine = make_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()
