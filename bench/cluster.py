"""Redis topologies: (1) refresh on a 6-node Redis Cluster vs one Redis, same number of API
processes; (2) what ``TOKEND_REDIS_REPLICA_ACKS=1`` costs on Sentinel (primary + replica).

Every Redis here is a private redis-server on a port of its own (tests/support/topology*.py),
never the shared one on 6379. tokend runs as ``tokend serve --processes N`` on a fresh
SQLite database and prefix; argon2 is set cheap (``FAST_ARGON2``) so that making sessions
and logging in measure Redis and tokend, not the password hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.contenders import REFRESH_LUA, REQUEST_LUA
from bench.harness import (
    NO_LOGIN_LIMITS,
    PASSWORD,
    TOKEND,
    WrkResult,
    fmt,
    free_port,
    median,
    new_prefix,
    parse_wrk,
    register,
    run_wrk,
    serve,
    wait_quiet,
    workdir,
    write_lines,
    wrk_cmd,
)
from bench.report import Section, progress
from tests.support.topology import Node, Topology
from tests.support.topology_cluster import RedisCluster
from tests.support.topology_sentinel import RedisSentinel

ONCE_LUA = str(Path(__file__).with_name("once.lua"))
CONNECTIONS = 50
LOGIN_CONNECTIONS = 20
LOGOUT_CONNECTIONS = 16
# A login's password hash in well under a millisecond (argon2 floor: 8 KiB, one pass).
FAST_ARGON2 = {
    "TOKEND_ARGON2_TIME_COST": "1",
    "TOKEND_ARGON2_MEMORY_KIB": "8",
    "TOKEND_ARGON2_PARALLELISM": "1",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Standalone(Topology):
    """One private redis-server (no persistence) on a leased port."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        super().__init__("standalone")
        try:
            (port,) = self._ports(1, with_bus=False)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", "."]
            argv += ["--save", "", "--appendonly", "no", *extra]
            self.nodes.append(Node(port, self.directory / str(port), argv))
            self.nodes[0].start()
        except BaseException:
            self.stop()
            raise

    @property
    def node(self) -> Node:
        return self.nodes[0]

    def env(self) -> dict[str, str]:
        return {"TOKEND_REDIS_MODE": "standalone", "TOKEND_REDIS_URL": self.node.url}


# --- CPU seconds from /proc -------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime in seconds) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a supervisor and its API processes)."""
    own = _stat(pid)
    total = own[1] if own else 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) and st[0] == pid:
            total += st[1]
    return total


def nodes_cpu(nodes: Sequence[Node]) -> float:
    """CPU seconds of the live redis-server processes of ``nodes``."""
    total = 0.0
    for node in nodes:
        if node.proc is not None and (st := _stat(node.proc.pid)):
            total += st[1]
    return total


# --- tokend on a topology ----------------------------------------------------------------


@dataclass
class Server:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)


@contextlib.contextmanager
def tokend_on(
    redis_env: dict[str, str], processes: int = 1, extra: dict[str, str] | None = None
) -> Iterator[Server]:
    """``tokend serve --processes N`` on a fresh DB and prefix, pointed at ``redis_env``."""
    with workdir("tokend") as wd:
        port = free_port()
        env = {
            **os.environ,
            "TOKEND_PORT": str(port),
            "TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{wd}/tokend.db",
            "TOKEND_REDIS_PREFIX": new_prefix("topo"),
            **NO_LOGIN_LIMITS,
            **FAST_ARGON2,
            **redis_env,
            **(extra or {}),
        }
        subprocess.run([TOKEND, "db", "upgrade"], env=env, capture_output=True, check=True)
        cmd = [TOKEND, "serve", "--processes", str(processes)]
        with serve(cmd, port=port, cwd=wd, env=env) as proc:
            yield Server(f"http://127.0.0.1:{port}", env, proc)


async def _logins(url: str, users: Sequence[str], per_user: int, conc: int) -> list[dict[str, str]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        sem = asyncio.Semaphore(conc)

        async def one(user: str) -> dict[str, str]:
            body = {"username": user, "password": PASSWORD}
            async with sem, http.post(url + "/auth/login", json=body) as resp:
                assert resp.status == 200, await resp.text()
                out: dict[str, str] = await resp.json()
                return out

        return list(await asyncio.gather(*(one(u) for u in users for _ in range(per_user))))


async def _register_users(url: str, n: int, conc: int) -> list[str]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as http:
        sem = asyncio.Semaphore(conc)

        async def one() -> str:
            async with sem:
                return await register(http, url, f"u{uuid.uuid4().hex[:12]}")

        return list(await asyncio.gather(*(one() for _ in range(n))))


def sessions(url: str, n: int, users: int = 1, conc: int = 16) -> list[dict[str, str]]:
    """``n`` sessions (token bodies) spread over ``users`` fresh users."""

    async def go() -> list[dict[str, str]]:
        names = await _register_users(url, users, conc)
        per, rest = divmod(n, users)
        bodies = await _logins(url, names, per, conc)
        if rest:
            bodies += await _logins(url, names[:rest], 1, conc)
        return bodies

    return asyncio.run(go())


def loadavg() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _line(name: str, r: WrkResult) -> str:
    bad = f" non-2xx/errors: {r.bad()}" if r.bad() else ""
    return f"{name}: {r.rps:,.0f}/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms{bad}"


def ok_count(r: WrkResult) -> int:
    return sum(n for code, n in r.statuses.items() if 200 <= code < 300)


# --- (1) cluster vs one Redis ------------------------------------------------------------


@dataclass
class CpuRun:
    wrk: WrkResult
    tokend_cpu_per_k: float  # tokend CPU seconds per 1000 answered refreshes
    redis_cpu_per_k: float  # the Redis processes' CPU seconds per 1000
    load: float


def _refresh_run(
    backend: Topology, redis_env: dict[str, str], processes: int, duration: float, n: int
) -> CpuRun:
    with tokend_on(redis_env, processes) as server, workdir("cluster") as wd:
        bodies = sessions(server.url, n, users=max(1, n // 4))
        tokens = str(write_lines(wd / "tokens", [b["refresh_token"] for b in bodies]))
        c0, r0 = server.cpu(), nodes_cpu(backend.nodes)
        r = run_wrk(
            server.url + "/auth/refresh",
            connections=CONNECTIONS,
            duration=duration,
            script=REFRESH_LUA,
            env={"TOKEN_FILE": tokens},
        )
        c1, r1 = server.cpu(), nodes_cpu(backend.nodes)
    done = max(1, ok_count(r))
    return CpuRun(r, (c1 - c0) / done * 1000, (r1 - r0) / done * 1000, os.getloadavg()[0])


def cluster_section(rounds: int, duration: float, n: int, processes: Sequence[int]) -> Section:
    """Standalone and cluster interleaved, each process count, ``rounds`` times."""
    res: dict[tuple[str, int], list[CpuRun]] = {}
    with Standalone() as one, RedisCluster() as cluster:
        backends: list[tuple[str, Topology, dict[str, str]]] = [
            ("one Redis", one, one.env()),
            ("6-node cluster", cluster, cluster.env()),
        ]
        for i in range(rounds):
            for procs in processes:
                for name, topo, env in backends:
                    run = _refresh_run(topo, env, procs, duration, n)
                    res.setdefault((name, procs), []).append(run)
                    progress(
                        f"[cluster] round {i + 1}/{rounds} N={procs} "
                        f"{_line(name, run.wrk)} tokend {run.tokend_cpu_per_k:.3f} "
                        f"CPU-s/1000, redis {run.redis_cpu_per_k:.3f} ({loadavg()})"
                    )
    s = Section(
        f"Cluster vs one Redis: refresh at {CONNECTIONS} connections "
        f"({duration:g} s x {rounds} rounds)"
    )
    s.add(
        "`tokend serve --processes N` against one private redis-server and against a "
        "6-node Redis Cluster (3 primaries, 3 replicas, all on this machine), interleaved "
        f"(one, cluster, one, cluster ...), a fresh tokend and {n} sessions of {max(1, n // 4)} "
        "users each run, wrk with one thread following each session's token chain. "
        "CPU columns: utime+stime from /proc of the tokend processes (supervisor and API "
        "processes) and of every redis-server of the backend, per 1000 answered "
        "refreshes; they do not depend on how the 2 cores were shared, the rates do.",
        "",
    )
    rows = []
    for procs in processes:
        base = res[("one Redis", procs)]
        for name, _topo, _env in (("one Redis", None, None), ("6-node cluster", None, None)):
            runs = res[(name, procs)]
            rps = [r.wrk.rps for r in runs]
            ratio = "-"
            cpu_ratio = "-"
            if name != "one Redis":
                per = [a.wrk.rps / b.wrk.rps for a, b in zip(runs, base, strict=True)]
                ratio = f"{median(rps) / median([b.wrk.rps for b in base]):.2f}x ({fmt(per, 2)})"
                cpu_ratio = f"{median([r.tokend_cpu_per_k for r in runs]) / median([b.tokend_cpu_per_k for b in base]):.2f}x"  # noqa: E501
            rows.append(
                [
                    f"N={procs}, {name}",
                    fmt(rps),
                    fmt([r.wrk.p50_ms for r in runs], 1),
                    fmt([r.wrk.p99_ms for r in runs], 1),
                    f"{min(r.wrk.ok_share for r in runs):.1%}",
                    ratio,
                    fmt([r.tokend_cpu_per_k for r in runs], 3),
                    cpu_ratio,
                    fmt([r.redis_cpu_per_k for r in runs], 3),
                    fmt([r.load for r in runs], 1),
                ]
            )
    s.table(
        [
            "processes, backend",
            "refresh/s",
            "p50 ms",
            "p99 ms",
            "2xx (worst)",
            "cluster ÷ one (per round)",
            "tokend CPU-s / 1000",
            "cluster ÷ one (tokend CPU)",
            "Redis CPU-s / 1000 (all nodes)",
            "load after",
        ],
        rows,
    )
    for procs in processes:
        base, cl = res[("one Redis", procs)], res[("6-node cluster", procs)]
        x = median([r.wrk.rps for r in cl]) / median([r.wrk.rps for r in base])
        s.target(
            f"cluster costs at most 10% per request, throughput (N={procs}, shared 2 cores)",
            f"{x:.2f}x of one Redis",
            x >= 0.9,
        )
        c = median([r.tokend_cpu_per_k for r in cl]) / median([r.tokend_cpu_per_k for r in base])
        s.target(
            f"cluster costs at most 10% per request, tokend CPU per refresh (N={procs})",
            f"{c:.2f}x of one Redis",
            c <= 1.1,
        )
    return s


# --- (2) replica acks ----------------------------------------------------------------------


def run_once(url: str, tokens: Path, duration: float) -> WrkResult:
    """wrk with once.lua; "exhausted" in ``errors`` when the token pool ran out."""
    wait_quiet()
    cmd = wrk_cmd(url, connections=LOGOUT_CONNECTIONS, duration=duration, script=ONCE_LUA)
    env = {**os.environ, "TOKEN_FILE": str(tokens), "METHOD": "POST", "WRK_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    r = parse_wrk(out)
    if "exhausted 1" in out:
        # Every connection was busy until the pool ran out: the rate is, by Little's law,
        # connections / mean latency (wrk's own divides by the whole -d).
        r.errors = (r.errors + " exhausted").strip()
        mean = _mean_latency_ms(out)
        r.rps = LOGOUT_CONNECTIONS / (mean / 1000) if mean else r.rps
    return r


def _mean_latency_ms(out: str) -> float:
    m = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s)\b", out, re.M)
    if not m:
        return 0.0
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _acks_round(
    sentinel: RedisSentinel, acks: int, duration: float, n: int, pool: int
) -> dict[str, WrkResult]:
    out: dict[str, WrkResult] = {}
    extra = {"TOKEND_REDIS_REPLICA_ACKS": str(acks)}
    with tokend_on(sentinel.env(), 1, extra) as server, workdir("acks") as wd:
        url = server.url
        bodies = sessions(url, n, users=max(1, n // 4))
        tokens = str(write_lines(wd / "refresh", [b["refresh_token"] for b in bodies]))
        out["refresh"] = run_wrk(
            url + "/auth/refresh",
            connections=CONNECTIONS,
            duration=duration,
            script=REFRESH_LUA,
            env={"TOKEN_FILE": tokens},
        )
        (user,) = asyncio.run(_register_users(url, 1, 1))
        out["login"] = run_wrk(
            url + "/auth/login",
            connections=LOGIN_CONNECTIONS,
            duration=duration,
            script=REQUEST_LUA,
            env={"METHOD": "POST", "BODY": json.dumps({"username": user, "password": PASSWORD})},
        )
        # Logouts: many sessions of a few users; logout-all: one session per user.
        for what, users in (("logout", max(1, pool // 50)), ("logout-all", pool)):
            bodies = sessions(url, pool, users=users)
            path = wd / what
            write_lines(path, [b["access_token"] for b in bodies])
            out[what] = run_once(url + f"/auth/{what}", path, min(duration, 3))
    return out


def acks_section(rounds: int, duration: float, n: int, pool: int) -> Section:
    res: dict[tuple[int, str], list[WrkResult]] = {}
    loads: list[float] = []
    with RedisSentinel() as sentinel:
        for i in range(rounds):
            for acks in (0, 1):
                t0 = time.monotonic()
                for what, r in _acks_round(sentinel, acks, duration, n, pool).items():
                    res.setdefault((acks, what), []).append(r)
                    progress(
                        f"[acks] round {i + 1}/{rounds} acks={acks} {_line(what, r)} ({loadavg()})"
                    )
                loads.append(os.getloadavg()[0])
                progress(f"[acks] round took {time.monotonic() - t0:.0f} s")
    s = Section(
        f"Replica acks: TOKEND_REDIS_REPLICA_ACKS=1 vs 0 on Sentinel ({duration:g} s x "
        f"{rounds} rounds)"
    )
    s.add(
        "One private primary + one replica + 3 sentinels on this machine; `tokend serve` (one "
        "process) in sentinel mode, a fresh tokend per mode and round, modes interleaved. "
        "With acks=1 a login (the session's create), a logout and a logout-all are followed "
        "by `WAIT 1 1000` on the same connection and answered only once the replica has "
        "them; a refresh does not wait. argon2 is set to its floor (8 KiB, 1 pass: "
        "`TOKEND_ARGON2_*`) so that a login measures tokend and Redis, not the hash. "
        f"Refresh at {CONNECTIONS} connections; login at {LOGIN_CONNECTIONS} (one user, "
        f"no limits); logout and logout-all at {LOGOUT_CONNECTIONS} connections, each access "
        f"token presented once (bench/once.lua; {pool} sessions of {max(1, pool // 50)} users "
        f"for logout, {pool} users with one session each for logout-all), "
        f"{min(duration, 3):g} s runs; when the pool ran out before the run's end the rate "
        "is connections / mean latency (Little's law: every connection was busy until then) "
        f"and marked so. Load average after each round: {fmt(loads, 1)}.",
        "",
    )
    rows = []
    for what in ("refresh", "login", "logout", "logout-all"):
        a0, a1 = res[(0, what)], res[(1, what)]
        for acks, runs in ((0, a0), (1, a1)):
            exhausted = any("exhausted" in r.errors for r in runs)
            rows.append(
                [
                    f"{what}, acks={acks}",
                    fmt([r.rps for r in runs]) + (" (Little's law)" if exhausted else ""),
                    fmt([r.p50_ms for r in runs], 2),
                    fmt([r.p99_ms for r in runs], 2),
                    f"{min(r.ok_share for r in runs):.1%}",
                    "-"
                    if acks == 0
                    else f"{median([r.rps for r in a1]) / median([r.rps for r in a0]):.2f}x, "
                    f"p50 {median([r.p50_ms for r in a1]) - median([r.p50_ms for r in a0]):+.2f}"
                    " ms",
                ]
            )
    s.table(["request, acks", "per second", "p50 ms", "p99 ms", "2xx (worst)", "acks=1 vs 0"], rows)
    return s
