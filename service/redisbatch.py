"""Automatic pipelining: concurrent Redis calls of one loop tick go out as one pipeline.

redis-py spends far more CPU per command on its own machinery (pool checkout, timeouts,
retries, parsing) than Redis spends running a small script. Under load many requests
wait on Redis at the same moment; sending their commands together in one pipeline
(``transaction=False``: each command is still its own atomic script or read) cuts that
client cost several times and keeps one round trip per batch. Each batch is its own
task, so batches overlap instead of queueing behind each other.

On a Redis Cluster a batch is split by the node that serves each command's first key:
redis-py fails a whole cluster pipeline when one node is unreachable, so without the
split a dead primary would fail the requests of every shard in the same tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

_Call = tuple[tuple[Any, ...], "AsyncScript | None", "asyncio.Future[Any]"]


class AutoPipeline:
    """Batches the commands issued within one event-loop tick into one pipeline."""

    def __init__(self, redis: aioredis.Redis, *, max_batch: int = 128) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def execute(self, *args: Any) -> Any:
        """Run one command (``"MGET", k1, k2`` ...) in the next batch; its reply."""
        return await self._enqueue(args, None)

    async def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered script by EVALSHA in the next batch (loading it if Redis lost it)."""
        return await self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def _enqueue(self, args: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((args, script, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for group in self._by_node(pending):
            for i in range(0, len(group), self.max_batch):
                task = asyncio.create_task(self._send(group[i : i + self.max_batch]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _by_node(self, pending: list[_Call]) -> list[list[_Call]]:
        """The calls grouped by the cluster node of their first key (one group when not
        a cluster, or when the slot map does not know a slot yet)."""
        if not isinstance(self.redis, RedisCluster) or len(pending) < 2:
            return [pending]
        groups: dict[str, list[_Call]] = {}
        for call in pending:
            args = call[0]
            key = args[3] if args[0] == "EVALSHA" else args[1]
            try:
                node = self.redis.get_node_from_key(key)
                name = node.name if node is not None else ""
            except (RedisError, RedisClusterException):
                name = ""
            groups.setdefault(name, []).append(call)
        return list(groups.values())

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for args, _, _ in batch:
                pipe.execute_command(*args)
            return list(await pipe.execute(raise_on_error=False))

    async def _pipeline_retried(self, batch: list[_Call]) -> list[Any]:
        """On a cluster, when one node fails (or a failover moves a primary), redis-py
        closes every connection of the client, failing batches in flight on healthy
        nodes too: those are sent again, up to twice, on the slot map learned again
        (safe: a repeated rotation gets the same successor within the grace, revocations
        are idempotent, reads are reads)."""
        for delay in (0.05, 0.2):
            try:
                return await self._pipeline(batch)
            except (RedisError, RedisClusterException, OSError, AttributeError, RuntimeError):
                if not isinstance(self.redis, RedisCluster):
                    raise
            await asyncio.sleep(delay)  # the client's re-initialization is under way
        return await self._pipeline(batch)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline_retried(batch)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # connection lost, pool exhausted, timeout
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (args, script, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, NoScriptError) and script is not None:
                # Redis restarted or flushed its script cache: the script did not run.
                self._retry_script(script, args, future)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _retry_script(
        self, script: AsyncScript, args: tuple[Any, ...], future: asyncio.Future[Any]
    ) -> None:
        numkeys = int(args[2])
        keys, argv = args[3 : 3 + numkeys], args[3 + numkeys :]

        async def run() -> None:
            try:
                result = await script(keys=list(keys), args=list(argv))
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
