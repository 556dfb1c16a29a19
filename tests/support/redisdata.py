"""tokend's data in Redis as the tests look at it: every partition's event stream, and
the losses a test simulates (a partition's epoch, every partition's, or everything).

Every name comes from service/keyspace.py (a test forbids hand-built names).
"""

from __future__ import annotations

import json
from typing import Any

from service.keyspace import DEFAULT_PARTITIONS, Keyspace


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
    """Delete every key under the prefix (the partition count too): Redis lost everything."""
    keys = [k async for k in redis.scan_iter(match=Keyspace(prefix).pattern, count=1000)]
    if keys:
        await redis.delete(*keys)
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
    await redis.delete(*names)


async def mark_fresh(redis: Any, prefix: str, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Mark the layout and epoch 1 of every partition, as a starting tokend does
    (service/fence.py): a subscriber is not ready before."""
    keys = Keyspace(prefix, partitions)
    await redis.set(keys.layout, partitions, nx=True)
    for part in keys.all:
        await redis.set(part.epoch, 1, nx=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
