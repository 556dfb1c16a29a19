"""A deployment on a Redis Cluster, run as an operator runs it: `tokend serve
--processes 2`, two `tokend work` processes, `tokend events tail`, the admin commands,
and a subscriber, all in cluster mode against a real 6-node cluster."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from service.devredis import free_port
from tests.support import bearer, unverified
from tests.support import register_and_login as register_and_login_client
from tests.test_example_service import ExampleService
from tests.test_processes import TOKEND, call, login, register_and_login, serve_env, serving
from tokend_client import RevocationListener
from tokend_client.redis_target import RedisTarget


def _wait(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _tail_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_api_processes_workers_tail_and_subscriber_on_a_cluster(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str, redis_cluster: Any
) -> None:
    env = serve_env(
        redis_prefix,
        migrated_sqlite,
        **redis_cluster.env(),
        TOKEND_REDIS_REPLICA_ACKS="1",
        TOKEND_PROCESSES="2",
        TOKEND_KEY_PUBLISH_DELAY="0",
        TOKEND_REFRESH_IDLE_TTL="2",
        TOKEND_REFRESH_REUSE_GRACE="1",
    )
    tail_out = tmp_path / "tail.jsonl"
    with serving(tmp_path, env) as server:
        pids = server.wait_ready(2)
        worker_logs = [(tmp_path / f"work-{i}.log").open("wb") for i in range(2)]
        workers = [
            subprocess.Popen([TOKEND, "work"], env=env, cwd=tmp_path, stderr=log)
            for log in worker_logs
        ]
        with tail_out.open("wb") as out:
            tail = subprocess.Popen(
                [TOKEND, "events", "tail", "--from", "-"], env=env, cwd=tmp_path, stdout=out
            )
        listener = RevocationListener(RedisTarget.from_env(env), prefix=redis_prefix)
        await listener.start()
        try:
            await asyncio.wait_for(listener.wait_ready(), 20)
            first, second = (server.connect_to(pid) for pid in pids)
            # Log in on one API process, refresh on the other: the state is the cluster's.
            alice = register_and_login(first, "alice")
            status, pair = call(
                second, "POST", "/auth/refresh", {"refresh_token": alice["refresh_token"]}
            )
            assert status == 200, pair
            assert call(first, "GET", "/auth/me", token=pair["access_token"])[0] == 200
            # Logout on the second; the subscriber and the tail see it.
            assert call(second, "POST", "/auth/logout", token=pair["access_token"])[0] == 204
            claims = unverified(pair["access_token"])[1]
            await asyncio.to_thread(
                _wait, "the subscriber's deny entry", lambda: listener.is_revoked(claims)
            )
            assert call(first, "GET", "/auth/me", token=pair["access_token"])[0] == 401
            # An idle session is swept by the two workers: one session.expired, not two.
            bob = register_and_login(first, "bob")
            bob_sid = unverified(bob["refresh_token"])[1]["sid"]

            def expired() -> list[dict[str, Any]]:
                return [
                    e
                    for e in _tail_lines(tail_out)
                    if e["type"] == "session.expired" and e["sid"] == bob_sid
                ]

            await asyncio.to_thread(_wait, "bob's session.expired", expired)
            await asyncio.sleep(1.5)  # both workers had another sweep
            assert len(expired()) == 1
            # The admin commands in cluster mode: disable a user, rotate the keys.
            carol = login(first, "alice")
            done = subprocess.run(
                [TOKEND, "users", "disable", "alice"], env=env, cwd=tmp_path,
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert call(second, "GET", "/auth/me", token=carol["access_token"])[0] == 401
            done = subprocess.run(
                [TOKEND, "keys", "rotate"], env=env, cwd=tmp_path, capture_output=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            for conn in (first, second):
                await asyncio.to_thread(
                    _wait,
                    "every API process reloading the keys",
                    lambda conn=conn: (
                        len(call(conn, "GET", "/.well-known/jwks.json")[1]["keys"]) == 2
                    ),
                )
            kinds = {e["type"] for e in _tail_lines(tail_out)}
            assert {"session.revoked", "session.expired", "user.revoked", "key.rotated"} <= kinds
            assert all(isinstance(e["partition"], int) for e in _tail_lines(tail_out))
            # the listener runs on this test's loop, which the blocking calls above held
            await asyncio.to_thread(
                _wait,
                "the subscriber applying user.revoked and key.rotated",
                lambda: listener.applied["user.revoked"] and listener.applied["key.rotated"],
            )
            await asyncio.sleep(0.2)
            assert listener.applied["user.revoked"] == 1 and listener.applied["key.rotated"] == 1
        finally:
            await listener.close()
            tail.terminate()
            for worker in workers:
                worker.terminate()
            assert tail.wait(timeout=10) == 0
            for worker in workers:
                worker.wait(timeout=10)


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_the_example_service_follows_revocations_in_each_mode(
    kind: str,
    request: pytest.FixtureRequest,
    make_client: Any,
    make_settings: Any,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    """examples/protected_service.py reads the same TOKEND_REDIS_* variables as tokend."""
    topology = request.getfixturevalue(f"redis_{kind}")
    tokend = await make_client(settings=make_settings(**topology.env()))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
        **topology.env(),
        "PYTHONUNBUFFERED": "1",
        "TOKEND_JWKS_URL": str(tokend.make_url("/.well-known/jwks.json")),
        "TOKEND_REDIS_PREFIX": redis_prefix,
    }
    service = ExampleService(env, free_port(), tmp_path / "example.log")
    try:
        await service.start()
        pair = await register_and_login_client(tokend, "erin")
        assert (await service.get("/protected", pair["access_token"]))[0] == 200
        resp = await tokend.post("/auth/logout", headers=bearer(pair["access_token"]))
        assert resp.status == 204
        deadline = time.monotonic() + 5
        while (await service.get("/protected", pair["access_token"]))[0] != 401:
            assert time.monotonic() < deadline, service.log_path.read_text()
            await asyncio.sleep(0.01)
    finally:
        await service.close()
