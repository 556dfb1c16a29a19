"""The Redis Cluster and Sentinel topologies of tests/support/topology*.py, checked with
redis-py's own cluster and sentinel clients: what the failover tests stand on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.asyncio.sentinel import Sentinel

from tests.support.topology import PORT_RANGE, TopologyError
from tests.support.topology_cluster import SLOTS, RedisCluster, key_for_slot
from tests.support.topology_sentinel import RedisSentinel

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient.from_url(redis_cluster.url, decode_responses=True)
    yield client
    await client.aclose()


async def _client(cluster: RedisCluster) -> ClusterClient:
    client = ClusterClient.from_url(cluster.url, decode_responses=True)
    await client.initialize()
    return client


def _key() -> str:
    return f"topology-test-{uuid.uuid4().hex}"


# --- Redis Cluster ------------------------------------------------------------------------


def test_cluster_has_three_primaries_with_a_replica_each(redis_cluster: RedisCluster) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3 and len(redis_cluster.nodes) == 6
    replicas = [redis_cluster.replica_of(p) for p in primaries]
    assert len({r.port for r in replicas}) == 3
    assert not {r.port for r in replicas} & {p.port for p in primaries}
    covered = sorted(s for p in primaries for s in redis_cluster.slots_of(p))
    assert covered == list(range(SLOTS))
    for node in redis_cluster.nodes:
        assert PORT_RANGE[0] <= node.port <= PORT_RANGE[1] and node.port != 6379


async def test_cluster_client_sees_the_same_topology(
    redis_cluster: RedisCluster, cluster_client: ClusterClient
) -> None:
    await cluster_client.initialize()
    info = await cluster_client.cluster_info()
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_slots_ok"]) == SLOTS
    assert {n.port for n in cluster_client.get_primaries()} == {
        p.port for p in redis_cluster.primaries()
    }
    assert len(cluster_client.get_replicas()) == 3
    for slot in (0, 5000, 10000, SLOTS - 1):
        owner = cluster_client.nodes_manager.get_node_from_slot(slot)
        assert owner is not None and owner.port == redis_cluster.primary_for_slot(slot).port


async def test_cluster_key_is_readable_and_lives_on_its_slots_primary(
    redis_cluster: RedisCluster, cluster_client: ClusterClient
) -> None:
    key = _key()
    assert await cluster_client.set(key, "v1", ex=60)
    assert await cluster_client.get(key) == "v1"
    primary = redis_cluster.primary_for_key(key)
    assert primary.cmd("GET", key) == "v1"
    redis_cluster.wait_replicated(primary)
    replica = redis_cluster.replica_of(primary)
    with replica.client.pipeline(transaction=False) as pipe:  # READONLY is per connection
        pipe.execute_command("READONLY").get(key)  # type: ignore[no-untyped-call]
        assert pipe.execute()[1] == "v1"
    await cluster_client.delete(key)


def test_a_wait_that_times_out_says_what_it_saw(redis_cluster: RedisCluster) -> None:
    primary = redis_cluster.primaries()[0]
    with pytest.raises(TopologyError) as raised:
        redis_cluster.wait_failover(primary, timeout=0.3)
    message = str(raised.value)
    assert f"failover of {primary}" in message and "0.3s" in message
    assert message.count("cluster_state:ok") == 6  # every node's CLUSTER INFO


async def test_cluster_kill9_of_a_primary_promotes_its_replica(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    client = await _client(cluster)
    try:
        key = _key()
        await client.set(key, "before")
        old = cluster.primary_for_key(key)
        replica = cluster.replica_of(old)
        cluster.wait_replicated(old)

        cluster.kill9(old)
        new = await asyncio.to_thread(cluster.wait_failover, old)

        assert new is replica
        assert new.client.info("replication")["role"] == "master"
        assert cluster.primary_for_key(key) is new
        # The same client, after the failover: it finds the new primary itself.
        assert await client.get(key) == "before"
        assert await client.set(key, "after")
        assert new.cmd("GET", key) == "after"

        await asyncio.to_thread(cluster.restart, old)  # back, as the new one's replica
        assert cluster.replica_of(new) is old
        assert old.client.info("replication")["role"] == "slave"
    finally:
        await client.aclose()


async def test_reshard_moves_slots_and_their_keys(fresh_redis_cluster: RedisCluster) -> None:
    cluster = fresh_redis_cluster
    source, target = cluster.primaries()[:2]
    source_slots = set(cluster.slots_of(source))
    keys = {slot: key_for_slot(slot, "moved") for slot in sorted(source_slots)[:200]}
    client = await _client(cluster)
    try:
        for slot, key in keys.items():
            await client.set(key, str(slot))

        moved = await asyncio.to_thread(cluster.reshard, source, target, 100)

        assert len(moved) == 100 and set(moved) <= source_slots
        assert set(moved) <= set(cluster.slots_of(target))
        assert not set(moved) & set(cluster.slots_of(source))
        with_keys = [s for s in moved if s in keys]
        assert with_keys, "no slot we wrote a key to was moved"
        for slot in with_keys:
            assert cluster.primary_for_key(keys[slot]) is target
            assert target.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            assert await client.get(keys[slot]) == str(slot)
    finally:
        await client.aclose()


async def test_cluster_failover_swaps_roles(fresh_redis_cluster: RedisCluster) -> None:
    cluster = fresh_redis_cluster
    primary = cluster.primaries()[0]
    replica = cluster.replica_of(primary)
    slots = cluster.slots_of(primary)

    await asyncio.to_thread(cluster.cluster_failover, replica)

    assert replica in cluster.primaries() and primary not in cluster.primaries()
    assert cluster.slots_of(replica) == slots
    assert cluster.replica_of(replica) is primary
    assert replica.client.info("replication")["role"] == "master"
    assert primary.client.info("replication")["role"] == "slave"
    client = await _client(cluster)
    try:
        key = key_for_slot(slots[-1], _key())
        assert await client.set(key, "x")
        assert replica.cmd("GET", key) == "x"
    finally:
        await client.aclose()


# --- Sentinel -----------------------------------------------------------------------------


async def _close(sentinel: Sentinel) -> None:
    for client in sentinel.sentinels:
        await client.aclose()


async def test_sentinel_master_for_writes(redis_sentinel: RedisSentinel) -> None:
    topology = redis_sentinel
    sentinel = Sentinel(topology.sentinel_addresses, socket_timeout=2)  # type: ignore[no-untyped-call]
    master = sentinel.master_for(topology.master_name, socket_timeout=2, decode_responses=True)
    try:
        assert await sentinel.discover_master(topology.master_name) == (
            "127.0.0.1",
            topology.primary.port,
        )
        key = _key()
        assert await master.set(key, "v", ex=60)
        assert topology.primary.cmd("GET", key) == "v"
        topology.wait_replicated()
        assert topology.replica.cmd("GET", key) == "v"
        assert topology.env()["TOKEND_REDIS_SENTINELS"].count(",") == 2
        await master.delete(key)
    finally:
        await master.aclose()
        await _close(sentinel)


async def test_sentinel_kill9_of_the_primary_promotes_the_replica(
    fresh_redis_sentinel: RedisSentinel,
) -> None:
    topology = fresh_redis_sentinel
    sentinel = Sentinel(topology.sentinel_addresses, socket_timeout=2)  # type: ignore[no-untyped-call]
    master = sentinel.master_for(topology.master_name, socket_timeout=2, decode_responses=True)
    try:
        key = _key()
        await master.set(key, "before")
        old, replica = topology.primary, topology.replica
        topology.wait_replicated(old)

        topology.kill9(old)
        new = await asyncio.to_thread(topology.wait_failover, old)

        assert new is replica and topology.primary is replica
        # The same client, after the failover: it asks the sentinels again.
        assert await master.get(key) == "before"
        assert await master.set(key, "after")
        assert new.cmd("GET", key) == "after"

        await asyncio.to_thread(topology.restart, old)  # back, as the new one's replica
        assert old.client.info("replication")["master_port"] == new.port
    finally:
        await master.aclose()
        await _close(sentinel)


def test_stop_kills_every_process_and_removes_the_directory(
    fresh_redis_sentinel: RedisSentinel,
) -> None:
    topology = fresh_redis_sentinel
    processes = [n.proc for n in [*topology.nodes, *topology.sentinel_nodes]]
    directory = Path(topology.directory)
    assert len(processes) == 5 and directory.is_dir()

    topology.stop()

    assert all(p is not None and p.poll() is not None for p in processes)
    assert not directory.exists()
