"""Forged messages on the partitions' channels and ``tokend events tail``: anyone who may
PUBLISH on a channel must not be able to make the tail show an event that tokend never
wrote. The tail follows every partition's stream ``<prefix>:{T}:events`` (each stream's
pub/sub channel has its name); every line it prints is a stream entry (its v1 event with
its stream ``id`` and ``partition``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.keyspace import Keyspace
from tests.conftest import REDIS_URL, EmitRevocation
from tests.support.redisdata import stream_entries

pytestmark = pytest.mark.security

TOKEND = str(Path(sys.executable).with_name("tokend"))
FAR_FUTURE_ID = "99999999999999-0"  # year 5138: above every id Redis will hand out


def forged(sid: str, entry_id: str) -> str:
    now = time.time()
    event = {
        "v": 1,
        "id": entry_id,
        "type": "session.revoked",
        "sub": "victim",
        "sid": sid,
        "jti": None,
        "reason": "logout",
        "at": now,
        "until": now + 900,
    }
    return json.dumps(event, separators=(",", ":"))


async def read_line(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=timeout)
    assert line, f"tokend events tail ended (status {proc.poll()})"
    return line


def parsed(line: str) -> dict[str, Any]:
    """A printed line as JSON; anything that is not a JSON object as ``{}``."""
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def stream_lines(
    redis_client: aioredis.Redis, prefix: str
) -> dict[tuple[int, str], dict[str, Any]]:
    """What the tail must print for each stream entry, by partition and entry id."""
    return {
        (part, entry_id): {**json.loads(fields["event"]), "id": entry_id, "partition": part}
        for part, entry_id, fields in await stream_entries(redis_client, prefix)
    }


@pytest.mark.parametrize("since", [None, "-"], ids=["live", "replay"])
async def test_the_tail_prints_stream_entries_only(
    since: str | None,
    redis_client: aioredis.Redis,
    redis_prefix: str,
    emit_revocation: EmitRevocation,
    tmp_path: Path,
) -> None:
    before = await emit_revocation("session.revoked", sub="u", sid="before-the-tail")
    env = {
        **os.environ,
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/unused.db",
    }
    argv = [TOKEND, "events", "tail"] + ([] if since is None else ["--from", since])
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    printed: list[str] = []
    try:
        if since is not None:
            printed.append(await read_line(proc))
            assert json.loads(printed[0])["id"] == before
        else:
            # Until the tail shows a real event it may not be following yet: emit probes.
            assert proc.stdout is not None
            first = asyncio.ensure_future(asyncio.to_thread(proc.stdout.readline))
            async with asyncio.timeout(15):
                while not first.done():
                    await emit_revocation("session.revoked", sub="u", sid="probe")
                    await asyncio.wait([first], timeout=0.3)
            printed.append(first.result())
        last_real = json.loads(printed[-1])["id"]
        ms = int(last_real.partition("-")[0])
        for part in Keyspace(redis_prefix).all:  # on every partition's channel
            for payload in (
                forged("forged-future", FAR_FUTURE_ID),
                forged("forged-next", f"{ms + 1}-0"),
                forged("forged-no-id", ""),
                "not json",
                "[1, 2]",
            ):
                await redis_client.publish(part.events, payload)
        real = await emit_revocation("session.revoked", sub="u", sid="real")
        while parsed(printed[-1]).get("id") != real:
            printed.append(await read_line(proc))
        expected = await stream_lines(redis_client, redis_prefix)
        for line in printed:
            shown = parsed(line)
            assert shown.get("sid") in ("before-the-tail", "probe", "real"), line
            assert shown == expected[shown["partition"], shown["id"]], line
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode in (0, -15)
