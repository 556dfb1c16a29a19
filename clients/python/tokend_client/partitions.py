"""The partitions of tokend's Redis data, and the key names a subscriber reads.

tokend's Redis data is split into a fixed number of partitions (``P:partitions`` says
how many; set when a deployment is created). Every key of a user (its sessions, their
deny entries, its index and revocation mark) and the event stream and position of the
user's partition share one hash tag, so each script runs in one Redis Cluster slot.
The tags are chosen so that partition ``i`` of ``n`` lands in the ``i``-th of ``n``
equal slot ranges: on a cluster whose slots were split evenly, the partitions are too.

The server (service/keyspace.py) builds every name from these functions; a
subscriber reads, per partition, the stream ``P:{tag}:events`` (also the name of
the partition's pub/sub channel), ``P:{tag}:epoch`` and ``P:{tag}:gen``.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["ClientKeys", "PartitionKeys", "partition_of", "partition_tags"]


def partition_of(uid: str, partitions: int) -> int:
    """The partition a user's keys live in."""
    return zlib.crc32(uid.encode()) % partitions


@functools.cache
def partition_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition: the first ``p<i>.<n>`` whose slot falls in the
    partition's share of the 16384 slots."""
    tags = []
    for i in range(partitions):
        low = i * REDIS_CLUSTER_HASH_SLOTS // partitions
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
        n = 0
        while not low <= key_slot(f"p{i}.{n}".encode()) < high:
            n += 1
        tags.append(f"p{i}.{n}")
    return tuple(tags)


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of one partition that a subscriber reads."""

    prefix: str
    index: int
    tag: str

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{{self.tag}}}:{name}"

    @property
    def events(self) -> str:
        """The partition's event stream; its pub/sub channel has the same name."""
        return self.key("events")

    @property
    def epoch(self) -> str:
        return self.key("epoch")

    @property
    def gen(self) -> str:
        return self.key("gen")

    @property
    def fence(self) -> str:
        return self.key("fence")


@dataclass(frozen=True)
class ClientKeys:
    """The key names under one prefix."""

    prefix: str

    @property
    def layout(self) -> str:
        """How many partitions the deployment has (written by tokend at start)."""
        return f"{self.prefix}:partitions"

    def partitions(self, count: int) -> tuple[PartitionKeys, ...]:
        return tuple(
            PartitionKeys(self.prefix, i, tag) for i, tag in enumerate(partition_tags(count))
        )
