"""Where tokend's Redis is: one server, a Redis Cluster, or a Sentinel-monitored primary.

The server and the subscriber library read the same environment variables:

    TOKEND_REDIS_MODE              standalone (default) | cluster | sentinel
    TOKEND_REDIS_URL               standalone: the server; cluster: any node (the client
                                   discovers the rest); sentinel: not used
    TOKEND_REDIS_SENTINELS         sentinel: host:port,host:port,...
    TOKEND_REDIS_SENTINEL_MASTER   sentinel: the monitored master's name
    TOKEND_REDIS_USERNAME, TOKEND_REDIS_PASSWORD
                                   sentinel: the data nodes' credentials (in the other
                                   modes they go in the URL); TOKEND_REDIS_TLS=1 for TLS

``RedisTarget.client()`` builds the matching redis-py asyncio client; ``subscriber()``
a plain connection that can SUBSCRIBE (classic pub/sub reaches every node of a cluster,
so any node will do).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis._parsers import AsyncCommandsParser
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["MODES", "RedisTarget", "initialized", "parse_sentinels"]

Mode = Literal["standalone", "cluster", "sentinel"]
MODES: tuple[Mode, ...] = ("standalone", "cluster", "sentinel")


class _CommandsParser(AsyncCommandsParser):
    """redis-py's command table, learned from any live node.

    After a connection error (a primary died) redis-py's cluster client closes and
    re-initializes itself, asking its *default node*, the first primary of the slot map,
    for ``COMMAND``. Until the dead primary's replica is promoted that first primary may
    be the dead one, and then every command to every shard failed. This asks the others
    in turn."""

    __slots__ = ("_cluster",)

    def __init__(self, cluster: RedisCluster) -> None:
        super().__init__()
        self._cluster = cluster

    async def initialize(self, node: Any = None) -> None:
        known = list(self._cluster.nodes_manager.nodes_cache.values())
        candidates = [node, *(n for n in known if n is not node)] if node else known
        failure: Exception | None = None
        for candidate in candidates:
            try:
                await super().initialize(candidate)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                failure = exc
        if failure is not None:
            raise failure
        await super().initialize(node)


async def initialized(client: Any) -> None:
    """Learn a cluster's slot map before the client's first concurrent use: redis-py's
    asyncio RedisCluster initializes lazily, and first commands racing each other fail
    (AttributeError, ConnectionError). Nothing to do for the other modes."""
    if isinstance(client, RedisCluster):
        await client.initialize()


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (IPv6 as ``[::1]:26379``) as (host, port) pairs."""
    pairs = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {item!r}")
        pairs.append((host.strip("[]"), int(port)))
    if not pairs:
        raise ValueError("expected at least one host:port")
    return tuple(pairs)


@dataclass(frozen=True)
class RedisTarget:
    """Which Redis deployment to talk to, and how."""

    mode: Mode = "standalone"
    url: str = "redis://127.0.0.1:6379/0"
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TOKEND_REDIS_MODE: expected one of {', '.join(MODES)}")
        if self.mode == "sentinel" and (not self.sentinels or not self.master):
            raise ValueError(
                "sentinel mode needs TOKEND_REDIS_SENTINELS and TOKEND_REDIS_SENTINEL_MASTER"
            )
        if self.mode != "sentinel" and urlsplit(self.url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {self.url!r}")
        if self.mode == "cluster" and urlsplit(self.url).scheme == "unix":
            raise ValueError("cluster mode needs a redis:// or rediss:// URL of a node")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisTarget:
        """The target the ``TOKEND_REDIS_*`` variables name (ValueError names the bad one)."""

        def get(name: str) -> str:
            return env.get(name, "").strip()

        mode = cast(Mode, get("TOKEND_REDIS_MODE") or "standalone")
        if mode not in MODES:
            raise ValueError(f"TOKEND_REDIS_MODE: expected one of {', '.join(MODES)}, got {mode!r}")
        sentinels: tuple[tuple[str, int], ...] = ()
        if get("TOKEND_REDIS_SENTINELS"):
            try:
                sentinels = parse_sentinels(get("TOKEND_REDIS_SENTINELS"))
            except ValueError as exc:
                raise ValueError(f"TOKEND_REDIS_SENTINELS: {exc}") from None
        tls = get("TOKEND_REDIS_TLS").lower() in ("1", "true", "yes", "on")
        return cls(
            mode=mode,
            url=get("TOKEND_REDIS_URL") or cls.url,
            sentinels=sentinels,
            master=get("TOKEND_REDIS_SENTINEL_MASTER"),
            username=get("TOKEND_REDIS_USERNAME") or None,
            password=get("TOKEND_REDIS_PASSWORD") or None,
            tls=tls,
        )

    @property
    def clustered(self) -> bool:
        return self.mode == "cluster"

    def describe(self) -> str:
        """Where, without credentials (for logs and errors)."""
        if self.mode == "sentinel":
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.master} via {where}"
        parts = urlsplit(self.url)
        return f"{self.mode} {parts.scheme}://{parts.hostname or ''}:{parts.port or ''}"

    def client(self, **options: Any) -> Any:
        """A redis-py asyncio client for this target (``Redis`` or ``RedisCluster``).

        ``options`` are connection options (socket timeouts, retry, ...); in standalone
        and sentinel mode ``max_connections`` and ``pool_timeout`` bound a blocking pool.
        """
        options.setdefault("decode_responses", True)
        size = options.pop("max_connections", 64)
        wait = options.pop("pool_timeout", None)
        if self.mode == "cluster":
            for unsupported in ("health_check_interval", "client_name", "retry"):
                options.pop(unsupported, None)
            cluster = RedisCluster.from_url(
                self.url, max_connections=size, require_full_coverage=False, **options
            )
            cluster.commands_parser = _CommandsParser(cluster)
            return cluster
        if self.mode == "sentinel":
            # redis-py has no blocking sentinel pool: past the size, a call fails at once
            return self._sentinel(options).master_for(self.master, max_connections=size)
        if wait is None:
            # owns its pool: aclose() closes every connection (a subscriber reconnects
            # often and must leave nothing behind)
            return aioredis.Redis.from_url(self.url, max_connections=size, **options)
        # A blocking pool that the server closes itself at shutdown (redis-py's
        # pool-owning close was seen hanging on connections of a Redis that went away).
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=size, timeout=wait, **options
        )
        return aioredis.Redis(connection_pool=pool)

    def _sentinel(self, options: dict[str, Any]) -> Sentinel:
        node = dict(options)
        if self.username:
            node["username"] = self.username
        if self.password:
            node["password"] = self.password
        if self.tls:
            node["ssl"] = True
        timeouts = {
            k: options[k] for k in ("socket_connect_timeout", "socket_timeout") if k in options
        }
        return Sentinel(list(self.sentinels), sentinel_kwargs=timeouts, **node)  # type: ignore[no-untyped-call]

    async def subscriber(self, **options: Any) -> aioredis.Redis:
        """A plain client for SUBSCRIBE: the server, the current primary (sentinel) or
        one node of the cluster, chosen at random among those the URL's node knows."""
        options.setdefault("decode_responses", True)
        if self.mode == "sentinel":
            return self._sentinel(options).master_for(self.master)  # type: ignore[no-any-return]
        if self.mode == "cluster":
            nodes = await self.nodes()
            host, port = random.choice(nodes)  # noqa: S311 (spreading load, not a secret)
            parts = urlsplit(self.url)
            return aioredis.Redis(
                host=host,
                port=port,
                username=parts.username,
                password=parts.password,
                ssl=parts.scheme == "rediss",
                **options,
            )
        return aioredis.Redis.from_url(self.url, **options)

    async def nodes(self) -> list[tuple[str, int]]:
        """The cluster's nodes as the URL's node sees them (only that node if it cannot
        answer: the caller's next attempt asks again)."""
        parts = urlsplit(self.url)
        first = (parts.hostname or "127.0.0.1", parts.port or 6379)
        probe = aioredis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            slots = await probe.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except Exception:
            return [first]
        finally:
            await probe.aclose()
        found = {first}
        for entry in slots or []:
            for node in entry[2:]:
                host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                found.add((host or first[0], int(node[1])))
        return sorted(found)
