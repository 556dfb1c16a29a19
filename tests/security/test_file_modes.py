"""Files with secrets are private to tokend's user (defect 11).

The SQLite database holds password hashes and sealed private keys; the development
key-encryption key (``<db>.kek``) opens those keys. Both are created 0600 whatever the
umask, and an existing KEK file that group or others can read is refused at start-up
with one line.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from service.app import resolve_kek
from service.crypto import decode_kek, generate_kek
from service.db import make_engine
from service.errors import ConfigError
from service.settings import Settings
from tests.conftest import FAST_ARGON2

pytestmark = pytest.mark.security

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def tokend(*args: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    """``tokend ARGS`` as a user runs it (umask 022), on this checkout's code."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import os, sys; os.umask(0o022); from service.entry import main; main()",
        *args,
        cwd=cwd,
        env={**base, **FAST_ARGON2, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_db_upgrade_creates_the_database_0600(tmp_path: Path) -> None:
    db = tmp_path / "tokend.db"
    code, _, err = await tokend(
        "db", "upgrade", cwd=tmp_path, TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{db}"
    )
    assert code == 0, err
    assert mode(db) == 0o600, f"database created {mode(db):04o}"
    for sidecar in tmp_path.glob("tokend.db-*"):
        assert mode(sidecar) == 0o600, f"{sidecar.name} is {mode(sidecar):04o}"


async def test_the_api_creates_the_database_and_its_wal_0600(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    old = os.umask(0o022)
    try:
        engine = make_engine(f"sqlite+aiosqlite:///{db}")
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (x INTEGER)"))
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            files = {p.name: mode(p) for p in tmp_path.iterdir()}
        finally:
            await engine.dispose()
    finally:
        os.umask(old)
    assert "fresh.db-wal" in files  # WAL mode: the companions exist while it is open
    assert files == dict.fromkeys(files, 0o600), files


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604])
async def test_a_kek_file_readable_by_others_is_refused_in_one_line(
    tmp_path: Path, file_mode: int
) -> None:
    db = tmp_path / "tokend.db"
    kek = tmp_path / "tokend.db.kek"
    kek.write_text(generate_kek() + "\n")
    os.chmod(kek, file_mode)
    code, out, err = await tokend(
        "serve",
        cwd=tmp_path,
        TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        TOKEND_REDIS_URL="redis://127.0.0.1:1/0",  # never reached: refused before
    )
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tokend: TOKEND_KEY_ENCRYPTION_KEY: key file")
    assert f"{file_mode:04o}" in lines[0] and "chmod 600" in lines[0]


def test_a_private_kek_file_is_accepted_and_a_new_one_is_0600(tmp_path: Path) -> None:
    db = tmp_path / "tokend.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{db}")
    old = os.umask(0o022)
    try:
        created = resolve_kek(settings)  # no file yet: generated
    finally:
        os.umask(old)
    kek = tmp_path / "tokend.db.kek"
    assert mode(kek) == 0o600
    assert resolve_kek(settings) == created == decode_kek(kek.read_text().strip())
    os.chmod(kek, 0o400)  # read-only for the owner is private too
    assert resolve_kek(settings) == created
    os.chmod(kek, 0o644)
    with pytest.raises(ConfigError, match="accessible to group or others"):
        resolve_kek(settings)
