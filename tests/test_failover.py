"""A Redis primary's death under refresh load (Redis Cluster and Sentinel).

Each test builds its own topology (tests/support/topology*.py), runs tokend on it with
TOKEND_REDIS_REPLICA_ACKS=1, keeps every user refreshing in a loop, and `kill -9`s a
primary: on the cluster the one holding most of tokend's keys, under Sentinel the
primary. It then checks what an operator is promised (README, "Scaling out"):

- no 500 at any time; a request that cannot be served gets 503 with Retry-After;
- refreshes resume once the replica is promoted;
- nobody who did not log out is logged out: every user's newest refresh token works
  afterwards, no fence (no ``all.revoked``), no reuse detection; a rotation the
  replica did not get is rolled forward, not taken for reuse;
- every logout answered 204 before the kill stays refused at tokend (refresh and
  /auth/me) and at a subscriber.

The counts are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.http.appkeys import FENCE, METRICS
from tests.support import bearer, me, register_and_login, unverified
from tests.support.load import RefreshLoad as Load
from tokend_client import RevocationListener

IPTABLES = shutil.which("iptables") or "iptables"
USERS = 24
LOGGED_OUT = 6
BEFORE_KILL = 1.0
AFTER_FAILOVER = 3.0


def _session_key(settings: Any, pair: dict[str, Any]) -> str:
    from service.keyspace import Keyspace

    claims = unverified(pair["refresh_token"])[1]
    return (
        Keyspace(settings.redis_prefix, settings.redis_partitions)
        .of(claims["sub"])
        .session(claims["sid"])
    )


async def _scenario(kind: str, topology: Any, make_client: Any, make_settings: Any) -> None:
    settings = make_settings(
        **topology.env(),
        TOKEND_REDIS_REPLICA_ACKS="1",
        TOKEND_REDIS_REPLICA_ACK_TIMEOUT="1000",
    )
    client = await make_client(settings=settings)
    live = [await register_and_login(client, f"live{i}") for i in range(USERS)]
    gone = [await register_and_login(client, f"gone{i}") for i in range(LOGGED_OUT)]
    for pair in gone:
        resp = await client.post("/auth/logout", headers=bearer(pair["access_token"]))
        assert resp.status == 204, await resp.text()
    listener = RevocationListener(settings.redis, prefix=settings.redis_prefix)
    await listener.start()
    try:
        await asyncio.wait_for(listener.wait_ready(), 20)
        load = Load(client, [pair["refresh_token"] for pair in live])
        tasks = [asyncio.create_task(load.user(i)) for i in range(USERS)]
        await asyncio.sleep(BEFORE_KILL)
        victim = max(topology.primaries(), key=lambda node: int(node.cmd("DBSIZE")))
        keys_on_victim = int(victim.cmd("DBSIZE"))
        # the users whose partition the victim serves (on Sentinel: everyone)
        on_victim = {
            i
            for i, pair in enumerate(live)
            if kind == "sentinel"
            or topology.primary_for_key(_session_key(settings, pair)) == victim
        }
        load.killed_at = time.monotonic()
        topology.kill9(victim)
        await asyncio.to_thread(topology.wait_failover, victim, 30)
        promoted_after = time.monotonic() - load.killed_at
        await asyncio.sleep(AFTER_FAILOVER)
        load.stop.set()
        await asyncio.gather(*tasks)
        # The old primary comes back as a replica, so writes can be acknowledged again.
        await asyncio.to_thread(topology.restart, victim)

        sent = sum(load.statuses.values())
        # every user had a 200 again, this long after the kill
        resumed = max(load.back.values()) if len(load.back) == USERS else None
        rolled = client.app[METRICS].registry.get_sample_value(
            "tokend_refreshes_total", {"result": "rolled_forward"}
        )
        print(
            f"\n[{topology.__class__.__name__}] killed {victim} holding {keys_on_victim} keys; "
            f"promoted after {promoted_after:.2f} s; first 200 after the kill at "
            f"{resumed if resumed is None else round(resumed, 2)} s for every user; "
            f"requests {sent}: "
            f"{dict(load.statuses)}; 503 without Retry-After {load.without_retry_after}; "
            f"rolled forward {rolled or 0:.0f}; fences {client.app[FENCE].fences}; "
            f"users on the victim {len(on_victim)}, users elsewhere that got a 503 "
            f"{sorted(set(load.unavailable) - on_victim)}"
        )
        assert load.statuses.get(500, 0) == 0
        assert not load.unexpected, f"users refused a refresh: {load.unexpected[:5]}"
        assert load.without_retry_after == 0
        assert resumed is not None and resumed <= promoted_after + 1.0

        # Nobody was logged out: every user's newest refresh token refreshes again.
        alive = 0
        for i in range(USERS):
            resp = await client.post("/auth/refresh", json={"refresh_token": load.tokens[i]})
            body = await resp.json()
            assert resp.status == 200, (i, body)
            status, _, _ = await me(client, body["access_token"])
            assert status == 200
            alive += 1
        assert client.app[FENCE].fences == 0, "a failover was taken for data loss"
        assert listener.applied["all.revoked"] == 0
        reuse = [
            client.app[METRICS].registry.get_sample_value(
                "tokend_refreshes_total", {"result": result}
            )
            for result in ("reuse_concurrent", "reuse_replay")
        ]
        assert not any(reuse), f"reuse detected: {reuse}"

        # Every logout answered 204 before the kill is still refused everywhere.
        refused = 0
        for pair in gone:
            resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            assert resp.status == 401
            status, _, _ = await me(client, pair["access_token"])
            assert status == 401
            assert listener.is_revoked(unverified(pair["access_token"])[1])
            refused += 1
        print(f"sessions alive after: {alive}/{USERS}; revocations refused after: {refused}")
    finally:
        await listener.close()


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_primary_killed_under_refresh_load(
    kind: str, request: pytest.FixtureRequest, make_client: Any, make_settings: Any
) -> None:
    if kind == "sentinel":
        topology = request.getfixturevalue("fresh_redis_sentinel")
        await _scenario(kind, topology, make_client, make_settings)
        return
    # As the README advises: the shards that are up keep serving while one fails over.
    from tests.support.topology_cluster import RedisCluster

    with RedisCluster(extra=["--cluster-require-full-coverage", "no"]) as cluster:
        await _scenario(kind, cluster, make_client, make_settings)


@contextlib.contextmanager
def _replication_cut(primary: Any) -> Iterator[None]:
    """Drop what ``primary`` sends its replica (and nothing else) while inside."""
    (replica,) = [c for c in primary.cmd("CLIENT", "LIST", "TYPE", "replica").splitlines()]
    port = next(f for f in replica.split() if f.startswith("addr=")).rsplit(":", 1)[1]
    rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(primary.port), "--dport", port]
    rule += ["-j", "DROP"]
    subprocess.run([IPTABLES, "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run([IPTABLES, "-w", "-D", *rule], check=True)


async def _on_one_primary(
    client: Any, topology: Any, prefix: str, kind: str
) -> tuple[Any, list[Any]]:
    """Two logged-in users whose sessions live on the same primary, and that primary."""
    from service.keyspace import Keyspace

    keys = Keyspace(prefix)
    by_primary: dict[str, list[dict[str, Any]]] = {}
    for i in range(30):
        pair = await register_and_login(client, f"lw{i}")
        claims = unverified(pair["refresh_token"])[1]
        key = keys.of(claims["sub"]).session(claims["sid"])
        node = topology.primary_for_key(key) if kind == "cluster" else topology.primary
        group = by_primary.setdefault(node.address, [])
        group.append(pair)
        if len(group) == 2:
            return node, group
    raise AssertionError("no two of 30 users share a primary")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables"),
    reason="cutting one replication link takes iptables as root",
)
@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_a_rotation_the_replica_missed_rolls_forward_and_replay_is_still_caught(
    kind: str, request: pytest.FixtureRequest, make_client: Any, make_settings: Any
) -> None:
    """The primary's replication stream to its replica is dropped (an iptables rule on
    loopback for that one connection) while two users refresh: the rotations are
    answered but never reach the replica. The primary is killed and the replica promoted
    with the older state. The newest token of one user rolls the session forward; for the other,
    an attacker replays the older (consumed) token first, and the user's newest token
    then counts as reuse: the session ends, as it would have without the failover."""
    topology = request.getfixturevalue(f"fresh_redis_{kind}")
    settings = make_settings(**topology.env(), TOKEND_REDIS_REPLICA_ACKS="1")
    client = await make_client(settings=settings)
    primary, (alice, bob) = await _on_one_primary(client, topology, settings.redis_prefix, kind)
    topology.wait_replicated(primary)
    with _replication_cut(primary):
        newer = {}
        for name, pair in (("alice", alice), ("bob", bob)):
            resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            assert resp.status == 200
            newer[name] = (await resp.json())["refresh_token"]
        topology.kill9(primary)
        # Until the replica is promoted: the dead primary's kernel would still send what
        # was queued for the replica (a killed process's socket drains its send queue).
        await asyncio.to_thread(topology.wait_failover, primary, 30)

    async def refresh_status(token: str) -> tuple[int, dict[str, Any]]:
        for _ in range(100):  # the first requests after a failover may still get 503
            resp = await client.post("/auth/refresh", json={"refresh_token": token})
            if resp.status != 503:
                return resp.status, await resp.json()
            await asyncio.sleep(0.1)
        raise AssertionError("still 503 ten seconds after the failover")

    registry = client.app[METRICS].registry
    # alice: her newest token is ahead of the promoted state: rolled forward, not reuse
    status, body = await refresh_status(newer["alice"])
    assert status == 200, body
    assert registry.get_sample_value("tokend_refreshes_total", {"result": "rolled_forward"}) == 1
    assert (await me(client, body["access_token"]))[0] == 200
    # and the token that rotation consumed is a replay
    status, _ = await refresh_status(alice["refresh_token"])
    assert status == 401
    # bob: an attacker replays the consumed token first; the state says it is current
    status, stolen = await refresh_status(bob["refresh_token"])
    assert status == 200
    # bob's own newest token is now one rotation behind the attacker's: reuse, session ends
    status, body = await refresh_status(newer["bob"])
    assert status == 401 and "reuse" in body.get("error_description", ""), body
    assert (await refresh_status(stolen["refresh_token"]))[0] == 401
    assert (await me(client, stolen["access_token"]))[0] == 401
    assert client.app[FENCE].fences == 0


async def _until_not_503(call: Any, timeout: float = 15.0) -> Any:
    """The first answer that is not 503 (a client reconnecting after a Redis change)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await call()
        if resp.status != 503:
            return resp
        assert time.monotonic() < deadline, "still 503"
        await asyncio.sleep(0.1)


async def test_a_logout_is_not_answered_before_a_replica_has_it(
    fresh_redis_sentinel: Any, make_client: Any, make_settings: Any
) -> None:
    """With TOKEND_REDIS_REPLICA_ACKS=1 and the replica frozen, a logout is answered 503
    with Retry-After (it is on the primary only), never 204. Once the replica is back the
    client's retry finds the session ended (401: its token is already refused, as for any
    second logout), and so does a refresh."""
    import signal

    topology = fresh_redis_sentinel
    settings = make_settings(
        **topology.env(),
        TOKEND_REDIS_REPLICA_ACKS="1",
        TOKEND_REDIS_REPLICA_ACK_TIMEOUT="300",
    )
    client = await make_client(settings=settings)
    pair = await register_and_login(client, "dana")
    replica = topology.replica
    replica.proc.send_signal(signal.SIGSTOP)
    try:
        resp = await client.post("/auth/logout", headers=bearer(pair["access_token"]))
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"]
        resp = await client.post("/auth/login", json={"username": "dana", "password": "x" * 12})
        assert resp.status in (401, 503)  # a login's session would have to wait as well
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    resp = await _until_not_503(
        lambda: client.post("/auth/logout", headers=bearer(pair["access_token"]))
    )
    assert resp.status == 401
    resp = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert resp.status == 401


async def test_losing_the_primary_and_its_replica_is_still_fenced(
    fresh_redis_sentinel: Any, make_client: Any, make_settings: Any
) -> None:
    """The fence still catches real data loss: primary and replica both killed and back
    empty. Every session from before is refused (refresh and access token), as on one
    Redis that lost its data."""
    topology = fresh_redis_sentinel
    settings = make_settings(**topology.env(), TOKEND_REDIS_REPLICA_ACKS="1")
    client = await make_client(settings=settings)
    pairs = [await register_and_login(client, f"lost{i}") for i in range(3)]
    primary, replica = topology.primary, topology.replica
    topology.kill9(replica)
    topology.kill9(primary)
    await asyncio.to_thread(topology.restart, primary, True)
    await asyncio.to_thread(topology.restart, replica, True)
    for pair in pairs:
        resp = await _until_not_503(
            lambda pair=pair: client.post(
                "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
            )
        )
        assert resp.status == 401
        assert (await me(client, pair["access_token"]))[0] == 401
    assert client.app[FENCE].fences >= 1
