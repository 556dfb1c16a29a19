"""Real Redis topologies for the tests: a 6-node Redis Cluster and a Sentinel setup.

Started from the machine's ``redis-server``/``redis-cli`` on ports of their own (never the
shared Redis on 6379), in a temporary directory; ``stop()`` (also run at exit) kills every
process and removes the directory.

    topology_cluster.py   RedisCluster: 3 primaries with one replica each
    topology_sentinel.py  RedisSentinel: a primary, its replica and 3 sentinels
    topology.py           what both share (ports, processes, bounded waits) and the fixtures

Fixtures: ``redis_cluster`` / ``redis_sentinel`` (one per session, started on first use:
do not kill, fail over or reshard them) and ``fresh_redis_cluster`` / ``fresh_redis_sentinel``
(one per test, for kill -9, failover and reshard). Every method blocks; from a coroutine
call the slow ones as ``await asyncio.to_thread(cluster.wait_failover, old)``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from tests.support.topology_cluster import RedisCluster
    from tests.support.topology_sentinel import RedisSentinel

HOST = "127.0.0.1"
# Below the ephemeral range (32768-60999 on Linux), so that no outgoing connection takes a
# port while its node is down; a cluster node's bus is port + 10000, also below it.
PORT_RANGE = (20000, 22767)
POLL = 0.05
T = TypeVar("T")


class TopologyError(AssertionError):
    """A topology did not reach the state waited for (the message says what it saw)."""


def wait_until(
    what: str,
    timeout: float,
    probe: Callable[[], T | None],
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False (Redis and socket
    errors count as not yet). On timeout raise TopologyError naming ``what``, with the
    last error and ``describe()`` (what the nodes say right now)."""
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            result = probe()
        except (redis.RedisError, OSError) as exc:
            result, error = None, exc
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            seen = ""
            if describe is not None:
                try:
                    seen = describe()
                except (redis.RedisError, OSError) as exc:
                    seen = f"(could not ask: {exc!r})"
            last = f"\nlast error: {error!r}" if error else ""
            raise TopologyError(f"{what}: not within {timeout:g}s{last}\n{seen}".rstrip())
        time.sleep(POLL)


class _PortLease:
    """``count`` ports (and, ``with_bus``, port + 10000) free when taken, each held with
    an abstract unix socket named after it so that other runs skip it; the kernel lets
    go of those when this process ends, however it ends."""

    def __init__(self, count: int, with_bus: bool) -> None:
        self.ports: list[int] = []
        self._locks: list[socket.socket] = []
        low, high = PORT_RANGE
        start = random.randint(low, high)
        for offset in range(high - low + 1):
            port = low + (start - low + offset) % (high - low + 1)
            if self._take(port, with_bus):
                self.ports.append(port)
                if len(self.ports) == count:
                    return
        self.release()
        raise TopologyError(f"no {count} free ports in {low}-{high}")

    def _take(self, port: int, with_bus: bool) -> bool:
        lock = socket.socket(socket.AF_UNIX)
        try:
            lock.bind(f"\0tokend-topology-port-{port}")
            for p in (port, port + 10000) if with_bus else (port,):
                with socket.socket() as probe:
                    probe.bind((HOST, p))
        except OSError:
            lock.close()
            return False
        self._locks.append(lock)
        return True

    def release(self) -> None:
        for lock in self._locks:
            lock.close()
        self._locks.clear()


_LIBC = ctypes.CDLL(None)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it ends, so that not even a
    killed test run (no atexit) leaves a redis-server behind."""
    with contextlib.suppress(Exception):
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Node:
    """One redis-server (data node or sentinel) process on ``port``, logging to its dir."""

    def __init__(self, port: int, directory: Path, argv: list[str]) -> None:
        self.port = port
        self.directory = directory
        self.argv = argv
        self.id = ""  # the cluster node id (CLUSTER MYID), "" outside a cluster
        self.files: dict[str, str] = {}  # written into the directory when missing
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def __repr__(self) -> str:
        return f"<Node {self.address}{' ' + self.id[:8] if self.id else ''}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def client(self) -> redis.Redis:
        """A sync client of this node alone (decoded replies, short timeouts)."""
        if self._client is None:
            self._client = redis.Redis(
                host=HOST,
                port=self.port,
                decode_responses=True,
                socket_timeout=2,
                socket_connect_timeout=1,
                retry=Retry(NoBackoff(), 0),  # a probe fails at once; the wait polls
            )
        return self._client

    def cmd(self, *args: Any) -> Any:
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    def log(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, fresh: bool = False, timeout: float = 10) -> None:
        if fresh:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            if not (self.directory / name).exists():
                (self.directory / name).write_text(text)
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Not from another thread: its end would kill the child.
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise TopologyError(f"{self.address} exited:\n{self.log()}")
            return bool(self.cmd("PING"))

        wait_until(f"{self.address} answers PING", timeout, up, self.log)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self._client is not None:
            self._client.close()
            self._client = None


_LIVE: set[Topology] = set()  # topologies started and not stopped yet


@atexit.register
def _stop_all() -> None:
    for topology in list(_LIVE):
        topology.stop()


class Topology:
    """What a topology has: nodes, a temporary directory, leased ports and stop()."""

    def __init__(self, prefix: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"tokend-{prefix}-"))
        self.nodes: list[Node] = []
        self.extra_processes: list[Node] = []
        self._lease: _PortLease | None = None
        _LIVE.add(self)

    def _ports(self, count: int, with_bus: bool) -> list[int]:
        self._lease = _PortLease(count, with_bus)
        return self._lease.ports

    def stop(self) -> None:
        """Kill every process, release the ports, remove the directory. Idempotent."""
        for node in [*self.nodes, *self.extra_processes]:
            node.kill9()
        if self._lease is not None:
            self._lease.release()
        shutil.rmtree(self.directory, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def info_fields(text: str) -> dict[str, str]:
    """``key:value`` lines (CLUSTER INFO) as a dict."""
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, _, v in pairs}


def as_dict(reply: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat ``[k, v, k, v]`` list as a dict."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


# --- fixtures ---------------------------------------------------------------------------


# The session's topologies detect failures more slowly: they are not for failover tests,
# and a node slow to answer on a busy machine must not be failed over. (A cluster's
# cluster-node-timeout also paces its gossip: with 5000 ms it takes ~6 s longer to start.)
SESSION_NODE_TIMEOUT_MS = 2000
SESSION_DOWN_AFTER_MS = 5000


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 6-node cluster for the session: share it, never break it (see fresh_...)."""
    from tests.support.topology_cluster import RedisCluster

    with RedisCluster(node_timeout_ms=SESSION_NODE_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """One primary + replica + 3 sentinels for the session: never break it."""
    from tests.support.topology_sentinel import RedisSentinel

    with RedisSentinel(down_after_ms=SESSION_DOWN_AFTER_MS) as sentinel:
        yield sentinel


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisCluster]:
    """A cluster of this test's own, to kill -9, fail over and reshard."""
    from tests.support.topology_cluster import RedisCluster

    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_sentinel() -> Iterator[RedisSentinel]:
    """A Sentinel setup of this test's own, to kill -9 and fail over."""
    from tests.support.topology_sentinel import RedisSentinel

    with RedisSentinel() as sentinel:
        yield sentinel
