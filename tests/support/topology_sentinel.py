"""A real Sentinel setup: one primary, its replica and three sentinels (quorum 2)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import redis

from tests.support.topology import HOST, Node, Topology, TopologyError, as_dict, wait_until


class RedisSentinel(Topology):
    """``nodes`` are the two data nodes (``nodes[0]`` starts as the primary),
    ``sentinel_nodes`` the three ``redis-server sentinel.conf --sentinel``.

    ``down_after_ms`` is down-after-milliseconds, ``failover_timeout_ms`` failover-timeout
    (also what a failed leader election waits, twice, before the next try).
    down-after is 2 s, not 1: a sentinel that switches to a new master starts that
    master's ping clock when it creates the link, and pings once a second at most, so
    at 1 s one slow connect or reply (the new master forking to sync the old one back)
    read as "down" and started a second, spurious failover back to the old primary. The
    constructor returns when the replica has caught up and every sentinel knows the
    primary, the replica and the two other sentinels.
    """

    def __init__(
        self,
        master_name: str = "tokend",
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 2000,
        extra: Sequence[str] = (),
        timeout: float = 60,
    ) -> None:
        super().__init__("sentinel")
        self.master_name = master_name
        self.extra = tuple(extra)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        try:
            ports = self._ports(5, with_bus=False)
            for port in ports[:2]:
                self.nodes.append(Node(port, self.directory / str(port), []))
            first = self.nodes[0]
            for port in ports[2:]:
                argv = ["redis-server", "sentinel.conf", "--sentinel"]
                sentinel = Node(port, self.directory / str(port), argv)
                sentinel.files["sentinel.conf"] = self._sentinel_conf(port, first.port)
                self.extra_processes.append(sentinel)
            self._start_data_node(first, None)
            self._start_data_node(self.nodes[1], first)
            self.wait_replicated(first, timeout)
            # Only now: a sentinel learns of replicas from the primary's INFO, which it
            # asks again only every 10 s.
            for sentinel in self.sentinel_nodes:
                sentinel.start()
            for sentinel in self.sentinel_nodes:
                self._wait_sentinel_knows_all(sentinel, timeout)
        except BaseException:
            self.stop()
            raise

    def _sentinel_conf(self, port: int, primary_port: int) -> str:
        name = self.master_name
        return "\n".join([
            f"port {port}", f"bind {HOST}", "dir .", 'logfile ""',
            "sentinel resolve-hostnames no",
            f"sentinel monitor {name} {HOST} {primary_port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1", "",
        ])  # fmt: skip

    def _start_data_node(self, node: Node, primary: Node | None, fresh: bool = False) -> None:
        node.argv = [
            "redis-server", "--port", str(node.port), "--bind", HOST, "--dir", ".",
            "--appendonly", "no", "--save", "", "--repl-diskless-sync-delay", "0",
            *(["--replicaof", HOST, str(primary.port)] if primary else []),
            *self.extra,
        ]  # fmt: skip
        node.start(fresh=fresh)

    # --- what the sentinels say -----------------------------------------------------------

    @property
    def sentinel_nodes(self) -> list[Node]:
        return self.extra_processes

    @property
    def sentinels(self) -> str:
        """``127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`` (TOKEND_REDIS_SENTINELS)."""
        return ",".join(s.address for s in self.sentinel_nodes)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """For ``redis.asyncio.sentinel.Sentinel(...)``."""
        return [(HOST, s.port) for s in self.sentinel_nodes]

    def env(self) -> dict[str, str]:
        """The TOKEND_REDIS_* settings that point tokend at this setup."""
        return {
            "TOKEND_REDIS_MODE": "sentinel",
            "TOKEND_REDIS_SENTINELS": self.sentinels,
            "TOKEND_REDIS_SENTINEL_MASTER": self.master_name,
        }

    def _master_port(self, sentinel: Node) -> int | None:
        reply = sentinel.cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1]) if reply else None

    def _data_node(self, port: int | None) -> Node:
        for node in self.nodes:
            if node.port == port:
                return node
        raise TopologyError(f"the sentinels name a primary not ours: {port}\n{self.describe()}")

    @property
    def primary(self) -> Node:
        """The data node the (first live) sentinel names as the primary."""
        sentinel = next(s for s in self.sentinel_nodes if s.alive)
        return self._data_node(self._master_port(sentinel))

    @property
    def replica(self) -> Node:
        """The other data node."""
        primary = self.primary
        return next(n for n in self.nodes if n is not primary)

    def primaries(self) -> list[Node]:
        """``[primary]``: the cluster topology's call, for tests written for both."""
        return [self.primary]

    def replica_of(self, primary: Node) -> Node:
        """The other data node (it replicates ``primary`` unless it was killed)."""
        return next(n for n in self.nodes if n is not primary)

    @property
    def url(self) -> str:
        """The current primary's URL (what a sentinel-less client would use)."""
        return self.primary.url

    def describe(self) -> str:
        out = []
        for sentinel in self.sentinel_nodes:
            if not sentinel.alive:
                out.append(f"sentinel {sentinel.address}: killed")
                continue
            try:
                master = as_dict(sentinel.cmd("SENTINEL", "MASTER", self.master_name))
                replicas = [
                    f"{r['port']}:{r['flags']}"
                    for r in map(as_dict, sentinel.cmd("SENTINEL", "REPLICAS", self.master_name))
                ]
                out.append(
                    f"sentinel {sentinel.address}: master {master.get('port')} "
                    f"flags={master.get('flags')} replicas={replicas} "
                    f"other-sentinels={master.get('num-other-sentinels')} "
                    f"failover-state={master.get('failover-state', '-')}"
                )
            except redis.RedisError as exc:
                out.append(f"sentinel {sentinel.address}: {exc!r}")
        for node in self.nodes:
            try:
                role = node.cmd("ROLE") if node.alive else "killed"
            except redis.RedisError as exc:
                role = repr(exc)
            out.append(f"data node {node.address}: {role}")
        return "\n".join(out)

    def _knows_all(self, sentinel: Node) -> bool:
        master = as_dict(sentinel.cmd("SENTINEL", "MASTER", self.master_name))
        if master.get("flags") != "master" or int(master["num-other-sentinels"]) != 2:
            return False
        replicas = map(as_dict, sentinel.cmd("SENTINEL", "REPLICAS", self.master_name))
        flags = {int(r["port"]): r["flags"] for r in replicas}
        primary = int(master["port"])
        return all(
            flags.get(n.port) == "slave" for n in self.nodes if n.alive and n.port != primary
        )

    def _wait_sentinel_knows_all(self, sentinel: Node, timeout: float) -> None:
        wait_until(
            f"sentinel {sentinel.address} knows the primary, replica and 2 sentinels",
            timeout,
            functools.partial(self._knows_all, sentinel),
            self.describe,
        )

    # --- faults and changes ---------------------------------------------------------------

    def kill9(self, node: Node) -> None:
        """SIGKILL a data node or a sentinel."""
        node.kill9()

    def wait_failover(self, old_primary: Node, timeout: float = 30) -> Node:
        """Wait until every live sentinel names the other data node as the primary and
        that node says role:master; return it."""
        other = next(n for n in self.nodes if n is not old_primary)

        def promoted() -> Node | None:
            for sentinel in (s for s in self.sentinel_nodes if s.alive):
                if self._master_port(sentinel) != other.port:
                    return None
            return other if other.client.info("replication")["role"] == "master" else None

        return wait_until(f"failover from {old_primary}", timeout, promoted, self.describe)

    def sentinel_failover(self, timeout: float = 30) -> Node:
        """SENTINEL FAILOVER (no agreement needed, the old primary stays up as a
        replica); return the new primary when all sentinels name it."""
        old = self.primary
        next(s for s in self.sentinel_nodes if s.alive).cmd(
            "SENTINEL", "FAILOVER", self.master_name
        )
        return self.wait_failover(old, timeout)

    def restart(self, node: Node, fresh: bool = False, timeout: float = 30) -> None:
        """Start a killed node again on its port (``fresh``: with an empty directory).
        A data node comes back as a replica of the current primary, as the sentinels'
        CONFIG REWRITE would have made it, unless it still is the primary; the call
        returns when it is linked and every sentinel sees it healthy. A sentinel comes
        back with its sentinel.conf (``fresh``: the first one) and knows all again."""
        if node.alive:
            raise TopologyError(f"{node} is running")
        if node in self.sentinel_nodes:
            if fresh:  # the first sentinel.conf, but of the current primary
                node.files["sentinel.conf"] = self._sentinel_conf(node.port, self.primary.port)
            node.start(fresh=fresh)
            self._wait_sentinel_knows_all(node, timeout)
            return
        primary = self.primary
        self._start_data_node(node, None if primary is node else primary, fresh=fresh)
        if primary is not node:
            self.wait_replicated(primary, timeout)
        for sentinel in (s for s in self.sentinel_nodes if s.alive):
            self._wait_sentinel_knows_all(sentinel, timeout)

    def wait_replicated(self, primary: Node | None = None, timeout: float = 10) -> None:
        """Wait until the live replicas of ``primary`` (default: the current one) are
        linked and have its replication offset."""
        primary = primary or self.primary
        target = int(primary.client.info("replication")["master_repl_offset"])

        def caught_up(replica: Node) -> bool:
            info = replica.client.info("replication")
            return (
                info.get("master_port") == primary.port
                and info.get("master_link_status") == "up"
                and int(info.get("slave_repl_offset", -1)) >= target
            )

        for replica in (n for n in self.nodes if n is not primary and n.alive):
            wait_until(
                f"{replica} caught up with {primary} (offset {target})",
                timeout,
                functools.partial(caught_up, replica),
                self.describe,
            )
