"""`tokend events tail`: live events, and replay with --from."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from service.http.appkeys import SETTINGS
from service.keyspace import Keyspace
from tests.conftest import TEST_KEK
from tests.support import bearer, login, register, unverified

TOKEND = str(Path(sys.executable).with_name("tokend"))


async def read_lines(proc: subprocess.Popen[str], n: int) -> list[dict[str, object]]:
    assert proc.stdout is not None
    lines = []
    for _ in range(n):
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=15)
        lines.append(json.loads(line))
    return lines


async def test_tail_replays_then_follows(client) -> None:
    settings = client.app[SETTINGS]
    await register(client, "alice")
    first = await login(client, "alice")
    second = await login(client, "alice")
    await client.post("/auth/logout", headers=bearer(first["access_token"]))
    env = {
        **os.environ,
        "TOKEND_REDIS_URL": settings.redis_url,
        "TOKEND_REDIS_PREFIX": settings.redis_prefix,
        "TOKEND_DATABASE_URL": settings.database_url,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
    }
    proc = subprocess.Popen(
        [TOKEND, "events", "tail", "--from", "-"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        keys = Keyspace(settings.redis_prefix, settings.redis_partitions)
        alice = keys.of(unverified(first["access_token"])[1]["sub"]).index
        [replayed] = await read_lines(proc, 1)
        assert replayed["sid"] == unverified(first["access_token"])[1]["sid"]
        assert replayed["type"] == "session.revoked" and replayed["id"]
        assert replayed["partition"] == alice
        await client.post("/auth/logout", headers=bearer(second["access_token"]))
        [live] = await read_lines(proc, 1)
        assert live["sid"] == unverified(second["access_token"])[1]["sid"]
        assert str(live["id"]) > str(replayed["id"])
        assert live["partition"] == alice
        # it follows every partition: a user of another one
        for n in range(50):
            await register(client, f"bob{n}")
            other = await login(client, f"bob{n}")
            if keys.of(unverified(other["access_token"])[1]["sub"]).index != alice:
                break
        else:
            raise AssertionError("no user landed outside alice's partition")
        await client.post("/auth/logout", headers=bearer(other["access_token"]))
        [elsewhere] = await read_lines(proc, 1)
        assert elsewhere["sid"] == unverified(other["access_token"])[1]["sid"]
        assert elsewhere["partition"] == keys.of(unverified(other["access_token"])[1]["sub"]).index
    finally:
        proc.terminate()
        proc.wait(timeout=10)
