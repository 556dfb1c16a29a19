"""tokend's data in Redis as the tests look at it: every partition's event stream, and
the losses a test simulates (a partition's epoch, every partition's, or everything).

Every name comes from service/keyspace.py (a test forbids hand-built names). Each helper
takes a client of any mode (``redis.asyncio.Redis``, a Sentinel ``master_for`` client or
a ``RedisCluster``): a command names one key, or many keys of one slot; keys of several
slots go one command per key (a cluster refuses CROSSSLOT).
"""

from __future__ import annotations

import json
from typing import Any

from redis.crc import key_slot

from service.keyspace import DEFAULT_PARTITIONS, Keyspace
from tokend_client.redis_target import RedisTarget


def target_env(target: RedisTarget) -> dict[str, str]:
    """The TOKEND_REDIS_* variables naming ``target`` (for a tokend subprocess)."""
    env = {"TOKEND_REDIS_MODE": target.mode, "TOKEND_REDIS_URL": target.url}
    if target.mode == "sentinel":
        env["TOKEND_REDIS_SENTINELS"] = ",".join(f"{h}:{p}" for h, p in target.sentinels)
        env["TOKEND_REDIS_SENTINEL_MASTER"] = target.master
    if target.username:
        env["TOKEND_REDIS_USERNAME"] = target.username
    if target.password:
        env["TOKEND_REDIS_PASSWORD"] = target.password
    if target.tls:
        env["TOKEND_REDIS_TLS"] = "1"
    return env


async def delete_keys(redis: Any, keys: list[Any], chunk: int = 1000) -> int:
    """DEL of keys that may live in different slots: one DEL per slot (and per ``chunk``
    keys), whatever the client (a cluster refuses a DEL across slots)."""
    by_slot: dict[int, list[Any]] = {}
    for key in keys:
        by_slot.setdefault(key_slot(key.encode() if isinstance(key, str) else key), []).append(key)
    deleted = 0
    for group in by_slot.values():
        for i in range(0, len(group), chunk):
            deleted += int(await redis.delete(*group[i : i + chunk]))
    return deleted


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def stream_entries(
    redis: Any, prefix: str, partitions: int = DEFAULT_PARTITIONS
) -> list[tuple[int, str, dict[str, Any]]]:
    """Every entry of every partition's stream as (partition, id, fields), in id order
    (ids of different partitions come from the same server clock)."""
    found: list[tuple[int, str, dict[str, Any]]] = []
    for part in Keyspace(prefix, partitions).all:
        for entry_id, fields in await redis.xrange(part.events):
            found.append((part.index, _text(entry_id), fields))
    found.sort(key=lambda e: (_stream_order(e[1]), e[0]))
    return found


async def stream_events(
    redis: Any, prefix: str, partitions: int = DEFAULT_PARTITIONS
) -> list[dict[str, Any]]:
    """Every event of every partition's stream, with its ``id`` and ``partition``, in id
    order."""
    return [
        {**json.loads(_text(fields.get("event", fields.get(b"event")))), "id": i, "partition": p}
        for p, i, fields in await stream_entries(redis, prefix, partitions)
    ]


async def stream_length(redis: Any, prefix: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """How many entries all partitions' streams hold together."""
    return sum([await redis.xlen(p.events) for p in Keyspace(prefix, partitions).all])


async def wipe(redis: Any, prefix: str) -> int:
    """Delete every key under the prefix (the partition count too): Redis lost everything.
    (On a cluster, SCAN asks every primary.)"""
    keys = [k async for k in redis.scan_iter(match=Keyspace(prefix).pattern, count=1000)]
    await delete_keys(redis, keys)
    return len(keys)


async def drop_epochs(
    redis: Any,
    prefix: str,
    partitions: int = DEFAULT_PARTITIONS,
    only: tuple[int, ...] | None = None,
) -> None:
    """Delete the epoch marker of every partition (or of ``only``): their data is lost."""
    keys = Keyspace(prefix, partitions)
    names = [p.epoch for p in keys.all if only is None or p.index in only]
    await delete_keys(redis, names)


async def mark_fresh(redis: Any, prefix: str, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Mark the layout and epoch 1 of every partition, as a starting tokend does
    (service/fence.py): a subscriber is not ready before."""
    keys = Keyspace(prefix, partitions)
    await redis.set(keys.layout, partitions, nx=True)
    for part in keys.all:
        await redis.set(part.epoch, 1, nx=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
