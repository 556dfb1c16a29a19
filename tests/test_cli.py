"""The `tokend` command line, run as a user runs it: a subprocess with its own environment."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.cli import GC_YOUNG_THRESHOLD, serve
from service.crypto import generate_kek
from service.devredis import answers, free_port
from service.keyspace import Keyspace
from tests.conftest import (
    FAST_ARGON2,
    REDIS_URL,
    TEST_KEK,
    drop_postgres_database,
    make_postgres_database,
)
from tests.support import PASSWORD

BIN = Path(sys.executable).parent
TOKEND = BIN / "tokend"
TABLES = {"users", "identities", "signing_keys", "alembic_version"}


def cli_env(**env: str) -> dict[str, str]:
    """The test process's environment without any TOKEND_ variable, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    return {**base, **FAST_ARGON2, **env}


async def tokend(
    *args: str, env: dict[str, str], cwd: Path, stdin: str | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND),
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else b""), timeout=60
    )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


def _sqlite_tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


# --- tokend db upgrade ------------------------------------------------------------------


async def test_db_upgrade_on_sqlite_is_idempotent(tmp_path: Path) -> None:
    # First with the default URL (relative to the working directory), then explicitly.
    database = tmp_path / "tokend.db"
    for env in (cli_env(), cli_env(TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{database}")):
        code, out, err = await tokend("db", "upgrade", env=env, cwd=tmp_path)
        assert code == 0, err
        assert_no_traceback(err)
        assert "latest schema" in out
    assert _sqlite_tables(database) >= TABLES
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["tokend.db"]


@pytest.mark.postgres
async def test_db_upgrade_on_postgres_is_idempotent(tmp_path: Path) -> None:
    url = await make_postgres_database()
    try:
        env = cli_env(TOKEND_DATABASE_URL=url, TOKEND_KEY_ENCRYPTION_KEY=TEST_KEK)
        for _ in range(2):
            code, _, err = await tokend("db", "upgrade", env=env, cwd=tmp_path)
            assert code == 0, err
            assert_no_traceback(err)
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        assert {r["tablename"] for r in rows} >= TABLES
        assert version
    finally:
        await drop_postgres_database(url)


# --- tokend users add --------------------------------------------------------------------


async def test_users_add_then_login_over_http(
    tmp_path: Path, sqlite_file: Path, make_client: Any
) -> None:
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    env = cli_env(TOKEND_DATABASE_URL=url)
    assert (await tokend("db", "upgrade", env=env, cwd=tmp_path))[0] == 0
    code, out, err = await tokend(
        "users", "add", "Bob", "--password-stdin", env=env, cwd=tmp_path, stdin=PASSWORD + "\n"
    )
    assert code == 0, err
    user_id = out.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", user_id)
    assert PASSWORD not in out + err

    client = await make_client(TOKEND_DATABASE_URL=url)
    resp = await client.post("/auth/login", json={"username": "bob", "password": PASSWORD})
    assert resp.status == 200
    tokens = await resp.json()
    resp = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert (await resp.json())["sub"] == user_id

    # The same name again: one line, exit 2.
    code, out, err = await tokend(
        "users", "add", "BOB", "--password-stdin", env=env, cwd=tmp_path, stdin=PASSWORD + "\n"
    )
    assert code == 2
    assert err.strip().splitlines() == ["tokend: username already taken"]


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("carol", "short", "password must be at least 8 characters"),
        ("x", PASSWORD, "username must be 3 to 64 characters"),
        ("carolcarol", "carolcarol", "password must differ from the username"),
    ],
)
async def test_users_add_refuses_bad_input_in_one_line(
    tmp_path: Path, sqlite_file: Path, username: str, password: str, message: str
) -> None:
    # Checked before the database is touched: no schema needed.
    env = cli_env(TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{sqlite_file}")
    code, _, err = await tokend(
        "users", "add", username, "--password-stdin", env=env, cwd=tmp_path, stdin=password + "\n"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


# --- tokend serve ---------------------------------------------------------------------------


async def test_serve_with_the_wrong_kek_stops_in_one_line(
    tmp_path: Path, make_client: Any, migrated_sqlite: str
) -> None:
    await make_client()  # the first signing key, sealed under the test KEK
    env = cli_env(
        TOKEND_DATABASE_URL=migrated_sqlite,
        TOKEND_KEY_ENCRYPTION_KEY=generate_kek(),
        TOKEND_PORT=str(free_port()),
        TOKEND_REDIS_URL=REDIS_URL,
    )
    code, _, err = await tokend("serve", env=env, cwd=tmp_path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tokend: TOKEND_KEY_ENCRYPTION_KEY: ")


# --- tokend keys kek ---------------------------------------------------------------------


async def test_keys_kek_prints_a_fresh_32_byte_key(tmp_path: Path) -> None:
    keys = []
    runs = [tokend("keys", "kek", env=cli_env(), cwd=tmp_path) for _ in range(2)]
    for code, out, err in await asyncio.gather(*runs):
        assert code == 0, err
        (line,) = out.splitlines()
        assert re.fullmatch(r"[A-Za-z0-9_-]+=*", line)
        assert len(base64.urlsafe_b64decode(line + "=" * (-len(line) % 4))) == 32
        keys.append(line)
    assert keys[0] != keys[1]
    assert list(tmp_path.iterdir()) == []  # it touched nothing


# --- tokend work --check -------------------------------------------------------------------


async def test_work_check_follows_the_heartbeat(
    tmp_path: Path, redis_prefix: str, redis_client: Any
) -> None:
    env = cli_env(TOKEND_REDIS_URL=REDIS_URL, TOKEND_REDIS_PREFIX=redis_prefix)
    code, _, err = await tokend("work", "--check", env=env, cwd=tmp_path)
    assert code == 1, err
    assert_no_traceback(err)

    key = Keyspace(redis_prefix).heartbeat
    me = f"{socket.gethostname()}:12345"
    await redis_client.hset(key, me, str(time.time()))
    code, _, err = await tokend("work", "--check", env=env, cwd=tmp_path)
    assert code == 0, err

    # A stale beat of this host's does not count, nor does another host's fresh one.
    await redis_client.hset(key, me, str(time.time() - 600))
    await redis_client.hset(key, "another-host:1", str(time.time()))
    code, _, _ = await tokend("work", "--check", env=env, cwd=tmp_path)
    assert code == 1


async def test_work_check_without_redis_is_unhealthy_without_traceback(tmp_path: Path) -> None:
    env = cli_env(TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = await tokend("work", "--check", env=env, cwd=tmp_path)
    assert code == 1
    assert_no_traceback(err)
    assert len(err.strip().splitlines()) == 1, err


# --- tokend dev ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running any more.
    with contextlib.suppress(FileNotFoundError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    return False


@contextlib.asynccontextmanager
async def _dev(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Any]:
    log = (tmp_path / "dev.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "dev", env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        yield proc
    finally:
        log.close()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            await proc.wait()


async def _wait_healthy(port: int, proc: Any, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.returncode is None, "tokend dev exited"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            assert time.monotonic() < end, "tokend dev did not come up"
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_dev_starts_and_stops_a_private_redis(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        TOKEND_PORT=str(port),
        TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nobody answers there
        TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
    )
    async with _dev(tmp_path, env) as proc:
        await _wait_healthy(port, proc)
        log = (tmp_path / "dev.log").read_text()
        match = re.search(r"private redis-server at (redis://127\.0\.0\.1:(\d+)/0)", log)
        assert match, log
        private_url = match.group(1)
        assert answers(private_url)
        redis_pids = [
            c
            for c in _children(proc.pid)
            if "redis-server" in Path(f"/proc/{c}/cmdline").read_text()
        ]
        assert len(redis_pids) == 1
        # Embedded defaults: the database was migrated and a development KEK generated.
        assert (tmp_path / "dev.db.kek").exists()
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"http://127.0.0.1:{port}/auth/register",
                json={"username": "dave", "password": PASSWORD},
            )
            assert resp.status == 201
            resp = await session.post(
                f"http://127.0.0.1:{port}/auth/login",
                json={"username": "dave", "password": PASSWORD},
            )
            assert resp.status == 200

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=45)
        assert code == 0, (tmp_path / "dev.log").read_text()
        assert not _alive(redis_pids[0])
        assert not answers(private_url)
        assert_no_traceback((tmp_path / "dev.log").read_text())


async def test_dev_without_redis_says_how_to_get_it(tmp_path: Path) -> None:
    env = cli_env(
        PATH=str(BIN),  # the venv only: no redis-server
        TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}",
    )
    code, _, err = await tokend("dev", env=env, cwd=tmp_path)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "redis-server" in lines[0] and "install Redis" in lines[0]
    assert "TOKEND_REDIS_URL" in lines[0]
    # It stopped before creating anything.
    assert not (tmp_path / "dev.db").exists()
    assert not (tmp_path / "dev.db.kek").exists()


async def test_serve_settles_the_garbage_collector_once_listening(make_settings) -> None:
    """`tokend serve` freezes what start-up made and raises the young-generation threshold
    (service.cli.settle_gc), so collections do not walk start-up objects mid-request."""
    before_threshold = gc.get_threshold()
    gc.unfreeze()
    port = free_port()
    task = asyncio.create_task(serve(dataclasses.replace(make_settings(), port=port)))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("serve did not come up")
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.set_threshold(*before_threshold)
