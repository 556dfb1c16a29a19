"""A real 6-node Redis Cluster (3 primaries, one replica each) for failover tests."""

from __future__ import annotations

import binascii
import functools
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.crc import key_slot

from tests.support.topology import HOST, Node, Topology, TopologyError, info_fields, wait_until

SLOTS = 16384
# The CLUSTER INFO lines a timeout message shows.
INFO_KEYS = ("cluster_state", "cluster_slots_ok", "cluster_slots_pfail", "cluster_slots_fail",
             "cluster_known_nodes", "cluster_size", "cluster_current_epoch")  # fmt: skip


@functools.cache
def _tags() -> dict[int, int]:
    """slot -> the smallest n whose hash tag ``{n}`` puts a key in that slot."""
    tags: dict[int, int] = {}
    n = 0
    while len(tags) < SLOTS:
        tags.setdefault(binascii.crc_hqx(str(n).encode(), 0) % SLOTS, n)  # = key_slot
        n += 1
    return tags


def key_for_slot(slot: int, prefix: str = "k") -> str:
    """A key ``<prefix>{<n>}`` that hashes to ``slot`` (its hash tag decides)."""
    return f"{prefix}{{{_tags()[slot]}}}"


@dataclass(frozen=True)
class Entry:
    """One line of CLUSTER NODES: what one node believes about another."""

    id: str
    port: int
    flags: frozenset[str]
    master: str  # the primary's id for a replica, "-" for a primary
    slots: tuple[tuple[int, int], ...]  # inclusive ranges; a migration in progress: (-1, -1)

    @classmethod
    def parse(cls, line: str) -> Entry:
        fields = line.split()
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                slots.append((-1, -1))
            else:
                low, _, high = item.partition("-")
                slots.append((int(low), int(high or low)))
        address = fields[1].split("@")[0]
        return cls(
            fields[0], int(address.rpartition(":")[2]), frozenset(fields[2].split(",")),
            fields[3], tuple(slots),
        )  # fmt: skip

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def summary(self) -> tuple[str, bool, str, tuple[tuple[int, int], ...]]:
        """What every node must agree on: role, primary and slots (not the flags)."""
        return self.id, self.is_primary, self.master, self.slots


View = dict[str, Entry]  # node id -> entry


class RedisCluster(Topology):
    """Six ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``.

    ``node_timeout_ms`` is cluster-node-timeout (failure detection takes about that long);
    ``extra`` are more redis-server options for every node (e.g. ``--appendonly yes``).
    The constructor returns when every node says ``cluster_state:ok``, all agree on the
    slots and every replica has caught up with its primary.
    """

    def __init__(
        self, node_timeout_ms: int = 1000, extra: Sequence[str] = (), timeout: float = 60
    ) -> None:
        super().__init__("cluster")
        self.node_timeout_ms = node_timeout_ms
        self._owned: dict[str, tuple[tuple[int, int], ...]] = {}  # last known slots by id
        try:
            for port in self._ports(6, with_bus=True):
                directory = self.directory / str(port)
                self.nodes.append(Node(port, directory, self._argv(port, extra)))
            for node in self.nodes:
                node.start()
            self._redis_cli(
                "--cluster", "create", *(n.address for n in self.nodes),
                "--cluster-replicas", "1", "--cluster-yes", timeout=timeout,
            )  # fmt: skip
            for node in self.nodes:
                node.id = node.cmd("CLUSTER", "MYID")
            wait_until("cluster created", timeout, lambda: self._settled(False), self.describe)
            # CLUSTER SLOTS (what clients discover the cluster from) leaves out a replica
            # whose replication offset is 0: a write and a delete on each primary.
            for primary in self.primaries():
                key = key_for_slot(self.slots_of(primary)[0], "topology-prime")
                primary.cmd("SET", key, "1")
                primary.cmd("DEL", key)
            self.wait_settled(timeout)
            for primary in self.primaries():
                self.wait_replicated(primary, timeout)
        except BaseException:
            self.stop()
            raise

    def _argv(self, port: int, extra: Sequence[str]) -> list[str]:
        return [
            "redis-server", "--port", str(port), "--bind", HOST, "--dir", ".",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "no", "--save", "",
            # Full syncs start at once, not after the default 5 s wait for more replicas.
            "--repl-diskless-sync-delay", "0",
            *extra,
        ]  # fmt: skip

    def _redis_cli(self, *args: str, timeout: float) -> str:
        done = subprocess.run(
            ["redis-cli", *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise TopologyError(
                f"redis-cli {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}\n{self.describe()}"
            )
        return done.stdout

    # --- what the nodes say ---------------------------------------------------------------

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` of a live node (the client finds the others)."""
        return self.live[0].url

    def env(self) -> dict[str, str]:
        """The TOKEND_REDIS_* settings that point tokend at this cluster."""
        return {"TOKEND_REDIS_MODE": "cluster", "TOKEND_REDIS_URL": self.url}

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise TopologyError(f"no node of ours has id {node_id}")

    def view(self, node: Node | None = None) -> View:
        """CLUSTER NODES of ``node`` (default: a live node), parsed."""
        text = (node or self.live[0]).cmd("CLUSTER", "NODES")
        entries = [Entry.parse(line) for line in text.splitlines() if line.strip()]
        return {e.id: e for e in entries}

    def describe(self) -> str:
        """CLUSTER INFO (the state lines) and CLUSTER NODES of every live node."""
        out = []
        for node in self.live:
            try:
                info = info_fields(node.cmd("CLUSTER", "INFO"))
                state = " ".join(f"{k}:{info.get(k)}" for k in INFO_KEYS)
                out.append(f"{node.address}: {state}\n{node.cmd('CLUSTER', 'NODES').rstrip()}")
            except redis.RedisError as exc:
                out.append(f"{node.address}: {exc!r}")
        dead = [n.address for n in self.nodes if not n.alive]
        return "\n".join(out + ([f"killed: {', '.join(dead)}"] if dead else []))

    def _settled(self, listed: bool = True) -> View | None:
        """The common view when every live node is ok, knows every live node as healthy,
        has no slot migrating and agrees with the others on roles and slots, and (``listed``)
        its CLUSTER SLOTS names every live replica."""
        live = self.live
        views = []
        for node in live:
            info = info_fields(node.cmd("CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return None
            view = self.view(node)
            for other in live:
                entry = view.get(other.id)
                if other.id and (entry is None or entry.failing):
                    return None
            if any((-1, -1) in e.slots for e in view.values()):
                return None
            views.append(view)
        summaries = [sorted(e.summary() for e in v.values()) for v in views]
        if any(s != summaries[0] for s in summaries):
            return None
        live_replicas = {e.port for e in views[0].values() if not e.is_primary} & {
            n.port for n in live
        }
        for node in live if listed else ():
            slots = node.cmd("CLUSTER", "SLOTS")
            if not live_replicas <= {int(r[1]) for s in slots for r in s[3:]}:
                return None
        self._owned.update({e.id: e.slots for e in views[0].values() if e.slots})
        return views[0]

    def wait_settled(self, timeout: float = 30) -> View:
        return wait_until("cluster settled", timeout, self._settled, self.describe)

    # --- who is who -----------------------------------------------------------------------

    def primaries(self) -> list[Node]:
        """The nodes that own slots (a killed one too until its replica took over)."""
        owners = sorted((e.slots[0], e.id) for e in self.view().values() if e.slots)
        return [self.node(node_id) for _, node_id in owners]

    def replicas(self) -> list[Node]:
        return [self.node(e.id) for e in self.view().values() if not e.is_primary]

    def replica_of(self, primary: Node) -> Node:
        """A replica of ``primary`` (a live one when there is one)."""
        found = [self.node(e.id) for e in self.view().values() if e.master == primary.id]
        if not found:
            raise TopologyError(f"{primary} has no replica:\n{self.describe()}")
        return sorted(found, key=lambda n: not n.alive)[0]

    def primary_for_slot(self, slot: int) -> Node:
        for entry in self.view().values():
            if any(low <= slot <= high for low, high in entry.slots):
                return self.node(entry.id)
        raise TopologyError(f"nobody owns slot {slot}:\n{self.describe()}")

    def primary_for_key(self, key: str | bytes) -> Node:
        return self.primary_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def slots_of(self, primary: Node) -> list[int]:
        entry = self.view().get(primary.id)
        ranges = entry.slots if entry else ()
        return [s for low, high in ranges for s in range(low, high + 1)]

    # --- faults and changes ---------------------------------------------------------------

    def kill9(self, node: Node) -> None:
        """SIGKILL ``node`` (its slots are remembered for wait_failover)."""
        if self.live:
            self._owned.update({e.id: e.slots for e in self.view().values() if e.slots})
        node.kill9()

    def wait_failover(self, old_primary: Node, timeout: float = 30) -> Node:
        """Wait until a replica took over ``old_primary``'s slots and the cluster is ok
        again; return the new primary."""
        slots = self._owned.get(old_primary.id)
        if not slots:
            raise TopologyError(f"{old_primary} owned no slots")

        def promoted() -> Node | None:
            view = self._settled()
            if view is None:
                return None
            first = slots[0][0]
            owner = next(e.id for e in view.values() if any(a <= first <= b for a, b in e.slots))
            return None if owner == old_primary.id else self.node(owner)

        return wait_until(f"failover of {old_primary}", timeout, promoted, self.describe)

    def restart(self, node: Node, fresh: bool = False, timeout: float = 30) -> None:
        """Start a killed node again on its port. Same directory: it rejoins with its
        nodes.conf (a former primary comes back as a replica of its successor). ``fresh``:
        an empty directory, a new node id; it is met and made a replica of the primary
        with the fewest replicas, and the old id is forgotten."""
        if node.alive:
            raise TopologyError(f"{node} is running")
        if not fresh:
            node.start()
            self.wait_settled(timeout)
            self._wait_linked(node, timeout)
            return
        if self.slots_of(node):
            raise TopologyError(f"{node} still owns slots: a fresh restart would lose them")
        old_id = node.id
        node.start(fresh=True)
        node.id = node.cmd("CLUSTER", "MYID")
        for other in self.live:
            if other is not node:
                try:
                    other.cmd("CLUSTER", "FORGET", old_id)
                except redis.ResponseError as exc:
                    if "Unknown node" not in str(exc):
                        raise
        anchor = next(n for n in self.live if n is not node)
        node.cmd("CLUSTER", "MEET", HOST, anchor.port)

        def known() -> bool:
            return all(node.id in self.view(n) for n in self.live)

        wait_until(f"{node} met by all", timeout, known, self.describe)
        view = self.view()
        alive = {n.port for n in self.live}
        count = {e.id: 0 for e in view.values() if e.slots}
        for entry in view.values():
            if entry.master in count and entry.port in alive:
                count[entry.master] += 1
        node.cmd("CLUSTER", "REPLICATE", min(count, key=lambda i: count[i]))
        self.wait_settled(timeout)
        self._wait_linked(node, timeout)

    def _wait_linked(self, node: Node, timeout: float) -> None:
        entry = self.view().get(node.id)
        if entry is not None and not entry.is_primary:
            self.wait_replicated(self.node(entry.master), timeout)

    def cluster_failover(self, replica: Node, timeout: float = 30) -> None:
        """CLUSTER FAILOVER on ``replica``; return when it is the primary of its former
        primary's slots, that one is its replica, and the cluster is settled."""
        old = self.view(replica).get(replica.id)
        if old is None or old.is_primary:
            raise TopologyError(f"{replica} is not a replica:\n{self.describe()}")
        replica.cmd("CLUSTER", "FAILOVER")

        def swapped() -> bool:
            view = self._settled()
            if view is None or old.master not in view:
                return False
            return bool(view[replica.id].slots) and view[old.master].master == replica.id

        wait_until(f"manual failover to {replica}", timeout, swapped, self.describe)

    def reshard(self, source: Node, target: Node, slots: int, timeout: float = 60) -> list[int]:
        """Move ``slots`` slots (and their keys) from ``source`` to ``target`` with
        ``redis-cli --cluster reshard``; return the slots moved."""
        before = set(self.slots_of(target))
        self._redis_cli(
            "--cluster", "reshard", source.address,
            "--cluster-from", source.id, "--cluster-to", target.id,
            "--cluster-slots", str(slots), "--cluster-yes", timeout=timeout,
        )  # fmt: skip
        self.wait_settled(timeout)
        return sorted(set(self.slots_of(target)) - before)

    def wait_replicated(self, primary: Node, timeout: float = 10) -> None:
        """Wait until every live replica of ``primary`` is linked and has its offset."""
        target = int(primary.client.info("replication")["master_repl_offset"])
        replicas = [self.node(e.id) for e in self.view().values() if e.master == primary.id]

        def caught_up(replica: Node) -> bool:
            info = replica.client.info("replication")
            return info.get("master_link_status") == "up" and (
                int(info.get("slave_repl_offset", -1)) >= target
            )

        for replica in (r for r in replicas if r.alive):
            wait_until(
                f"{replica} caught up with {primary} (offset {target})",
                timeout,
                functools.partial(caught_up, replica),
                functools.partial(_replication, replica),
            )


def _replication(node: Node) -> str:
    return str(node.client.info("replication"))
