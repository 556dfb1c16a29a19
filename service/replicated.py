"""Writes that are answered only once they are on replicas (``TOKEND_REDIS_REPLICA_ACKS``).

Redis ``WAIT n timeout`` blocks until the writes sent *on the same connection* before it
reached ``n`` replicas. So a script and its ``WAIT`` go out as one pipeline on one
connection to the primary that serves the script's slot: in standalone and Sentinel mode
the client's own pool, in cluster mode a small client of that node (the cluster client
has no way to pin two commands to one connection). A ``MOVED`` or ``ASK`` reply (the
slot moved) refreshes the cluster's slot map and runs the pipeline once more.

Which writes wait (see the README, "Scaling out"): every revocation, so an acknowledged
logout survives a primary's death, and every login, so an acknowledged login does too.
Rotations do not wait: a refresh token newer than the state a promoted replica holds is
rolled forward (rotate.lua), so a lost rotation logs nobody out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from tokend_client.partitions import PartitionKeys
from tokend_client.redis_target import RedisTarget

from .errors import ReplicaLag, Unavailable
from .positions import Position, parse_position
from .redisconn import redis_errors

NODE_POOL = 16


class ReplicatedWrites:
    """Runs scripts followed by ``WAIT acks timeout`` on the primary of their slot."""

    def __init__(
        self, redis: aioredis.Redis, target: RedisTarget, *, acks: int, timeout_ms: int
    ) -> None:
        self.redis = redis
        self.target = target
        self.acks = acks
        self.timeout_ms = timeout_ms
        self._nodes: dict[str, aioredis.Redis] = {}

    async def aclose(self) -> None:
        for client in self._nodes.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._nodes.clear()

    def _client_for(self, key: str) -> aioredis.Redis:
        if not isinstance(self.redis, RedisCluster):
            return self.redis
        node = self.redis.get_node_from_key(key)
        if node is None:
            raise Unavailable("no Redis Cluster node serves the key's slot")
        client = self._nodes.get(node.name)
        if client is None:
            parts = urlsplit(self.target.url)
            auth = parts.netloc.rpartition("@")[0]
            netloc = f"{auth}@{node.host}:{node.port}" if auth else f"{node.host}:{node.port}"
            client = aioredis.Redis.from_url(
                urlunsplit(parts._replace(netloc=netloc, path="")),
                decode_responses=True,
                max_connections=NODE_POOL,
                socket_connect_timeout=2,
                socket_timeout=5 + self.timeout_ms / 1000,
            )
            self._nodes[node.name] = client
        return client

    async def _refresh(self) -> None:
        """The slot map changed (MOVED, a failover): learn it again."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.nodes_manager.initialize()
        await self.aclose()

    async def _send(
        self, key: str, commands: Sequence[Sequence[Any]], script: AsyncScript | None = None
    ) -> list[Any]:
        """``commands`` then ``WAIT`` on one connection of the key's primary; the replies
        of ``commands`` (errors raised) after checking the WAIT's count."""
        for attempt in range(3):
            client = self._client_for(key)
            with redis_errors():
                async with client.pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    pipe.execute_command("WAIT", self.acks, self.timeout_ms)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                break
            first = errors[0]
            if isinstance(first, NoScriptError) and script is not None and attempt < 2:
                with redis_errors():
                    await client.script_load(script.script)
                continue
            moved = isinstance(first, ResponseError) and str(first).startswith(("MOVED", "ASK"))
            if moved and attempt < 2:
                await self._refresh()
                continue
            with redis_errors():
                raise first
        acked = int(replies[-1])
        if acked < self.acks:
            raise ReplicaLag(
                f"the write reached {acked} of {self.acks} replicas within {self.timeout_ms} ms"
            )
        return replies[:-1]

    async def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script, then wait for the replicas; the script's reply."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        (reply,) = await self._send(keys[0], [command], script)
        return reply

    async def position(self, part: PartitionKeys, now: float) -> tuple[Position | None, bool]:
        """A partition's position and whether it is on the replicas: a marker write, the
        read, and a WAIT (which covers everything written before the marker)."""
        commands = [("SET", part.key("beat"), repr(now)), ("MGET", part.epoch, part.gen)]
        try:
            _, (epoch, gen) = await self._send(part.epoch, commands)
        except ReplicaLag:
            with redis_errors():
                epoch, gen = await self.redis.mget(part.epoch, part.gen)
            return parse_position(epoch, gen), False
        return parse_position(epoch, gen), True
