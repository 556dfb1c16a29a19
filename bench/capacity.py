"""Capacity model inputs: Redis CPU per refresh, login and deny check (``GET /auth/me``)
on one private Redis, from ``INFO commandstats`` (after ``CONFIG RESETSTAT``) and from the
redis-server process's CPU (/proc, which also counts reading and writing the sockets), over
a counted number of requests; and Redis memory per live session in the partitioned layout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from bench.cluster import (
    CONNECTIONS,
    LOGIN_CONNECTIONS,
    Standalone,
    _register_users,
    ok_count,
    sessions,
    tokend_on,
)
from bench.contenders import REFRESH_LUA, REQUEST_LUA
from bench.harness import HERE, PASSWORD, WrkResult, new_prefix, parse_wrk, wait_quiet, workdir
from bench.harness import write_lines as _write
from bench.harness import wrk_cmd as _wrk_cmd
from bench.report import Section, progress
from service.http.request import FIELD_BYTES, shorten
from service.keyspace import Keyspace
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.settings import Settings
from service.tokens import new_id
from tokend_client.redis_target import RedisTarget

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
API_UA = "python-httpx/0.27.0"
OWN = {"cmdstat_info", "cmdstat_config"}  # this module's own commands
CEILING = 0.7
TOKENS_LUA = str(HERE / "tokens.lua")


@dataclass
class Cost:
    what: str
    requests: int  # answered (all statuses)
    ok: int
    cmd_usec: float  # commandstats usec of the scripts per request, idle subtracted
    other_usec: float  # commandstats usec of every other entry (incl. script-called ones)
    proc_usec: float  # redis-server process CPU usec per request, idle subtracted
    calls: dict[str, float]  # commands per request
    wrk: WrkResult
    load: float


SCRIPTS = {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"}


def _stats(node: Any) -> tuple[float, dict[str, int]]:
    """usec of the script calls (which include the commands the scripts call; those are
    also listed on their own, so the entries do not add up), and calls by command."""
    info: dict[str, Any] = node.client.info("commandstats")
    calls = {k: int(v["calls"]) for k, v in info.items() if k not in OWN}
    usec = sum(float(v["usec"]) for k, v in info.items() if k in SCRIPTS)
    return usec, calls


def _others_usec(node: Any) -> float:
    info: dict[str, Any] = node.client.info("commandstats")
    return sum(float(v["usec"]) for k, v in info.items() if k not in OWN | SCRIPTS)


def _cpu(node: Any) -> float:
    """The redis-server's CPU seconds (getrusage: INFO cpu, microsecond resolution)."""
    info: dict[str, Any] = node.client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _measure(one: Standalone, what: str, url: str, duration: float, script: str,
             env: dict[str, str], connections: int, idle: tuple[float, float]) -> Cost:  # fmt: skip
    node = one.node
    wait_quiet()
    node.cmd("CONFIG", "RESETSTAT")
    p0, t0 = _cpu(node), time.monotonic()
    out = subprocess.run(
        _wrk_cmd(url, connections=connections, duration=duration, script=script),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env, "WRK_THREADS": "1"},
    ).stdout
    p1, t1 = _cpu(node), time.monotonic()
    usec, calls = _stats(node)
    others = _others_usec(node)
    r = parse_wrk(out)
    n = max(1, sum(r.statuses.values()))
    _idle_cmd, idle_proc = idle
    cost = Cost(
        what,
        n,
        ok_count(r),
        usec / n,
        others / n,
        ((p1 - p0) * 1e6 - idle_proc * (t1 - t0)) / n,
        {k.removeprefix("cmdstat_"): v / n for k, v in sorted(calls.items())},
        r,
        os.getloadavg()[0],
    )
    progress(
        f"[capacity] {what}: {n} requests ({cost.ok} 2xx) {r.rps:,.0f}/s, Redis "
        f"{cost.cmd_usec:.1f} usec/request in commands, {cost.proc_usec:.1f} process CPU "
        f"(load {cost.load:.1f})"
    )
    return cost


def _idle(one: Standalone, seconds: float) -> tuple[float, float]:
    """Redis usec per second with tokend up and no requests: (commandstats, process)."""
    one.node.cmd("CONFIG", "RESETSTAT")
    p0, t0 = _cpu(one.node), time.monotonic()
    time.sleep(seconds)
    p1, t1 = _cpu(one.node), time.monotonic()
    usec, _ = _stats(one.node)
    usec += _others_usec(one.node)
    return usec / (t1 - t0), (p1 - p0) * 1e6 / (t1 - t0)


def _costs(duration: float, n: int) -> tuple[list[Cost], tuple[float, float]]:
    with Standalone() as one, tokend_on(one.env(), 1) as server, workdir("capacity") as wd:
        url = server.url
        refresh_bodies = sessions(url, n, users=max(1, n // 4))
        me_bodies = sessions(url, n, users=max(1, n // 4))
        (user,) = asyncio.run(_register_users(url, 1, 1))
        time.sleep(1)
        idle = _idle(one, 3)
        refresh_tokens = _write(wd / "refresh", [b["refresh_token"] for b in refresh_bodies])
        access = _write(wd / "access", [b["access_token"] for b in me_bodies])
        login_body = json.dumps({"username": user, "password": PASSWORD})
        costs = [
            _measure(one, "refresh", url + "/auth/refresh", duration, REFRESH_LUA,
                     {"TOKEN_FILE": str(refresh_tokens)}, CONNECTIONS, idle),
            _measure(one, "login", url + "/auth/login", duration, REQUEST_LUA,
                     {"METHOD": "POST", "BODY": login_body}, LOGIN_CONNECTIONS, idle),
            _measure(one, "me (deny check)", url + "/auth/me", duration, TOKENS_LUA,
                     {"TOKEN_FILE": str(access)}, CONNECTIONS, idle),
        ]  # fmt: skip
    return costs, idle


async def _memory(n: int, label: str, sent: str) -> dict[str, float]:
    ua = shorten(sent, FIELD_BYTES)
    with Standalone() as one:
        redis = make_redis(RedisTarget(url=one.node.url), pool_size=16, pool_timeout=60)
        try:
            settings = replace(Settings(), redis_prefix=new_prefix("mem"))
            store = SessionStore.from_settings(redis, settings)
            base = int((await redis.info("memory"))["used_memory"])
            now = time.time()
            made = [(new_id(), str(uuid.uuid4()), new_id()) for _ in range(n)]
            for i in range(0, n, 1000):
                await asyncio.gather(
                    *(
                        store.create(
                            sid=sid,
                            uid=uid,
                            jti=jti,
                            now=now,
                            checked_at=now,
                            user_agent=ua,
                            ip="203.0.113.7",
                        )
                        for sid, uid, jti in made[i : i + 1000]
                    )
                )
            created = int((await redis.info("memory"))["used_memory"]) - base
            for i in range(0, n, 1000):
                await asyncio.gather(
                    *(
                        store.rotate(
                            sid=sid,
                            uid=uid,
                            jti=jti,
                            new_jti=new_id(),
                            now=now + 1,
                            user_agent=ua,
                            ip="203.0.113.7",
                        )
                        for sid, uid, jti in made[i : i + 1000]
                    )
                )
            rotated = int((await redis.info("memory"))["used_memory"]) - base
            kinds: dict[str, int] = {}
            pattern = Keyspace(settings.redis_prefix).pattern
            keys = [k async for k in redis.scan_iter(match=pattern, count=5000)]
            for i in range(0, len(keys), 5000):
                chunk = keys[i : i + 5000]
                async with redis.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.memory_usage(key, samples=0)
                    sizes = await pipe.execute()
                for key, size in zip(chunk, sizes, strict=True):
                    name = key.decode() if isinstance(key, bytes) else str(key)
                    rest = name.split("}:", 1)[1] if "}:" in name else name.split(":", 1)[1]
                    kind = rest.split(":", 1)[0]
                    kinds[kind] = kinds.get(kind, 0) + int(size or 0)
        finally:
            await redis.aclose()
    out = {"created": created / n, "rotated": rotated / n, "keys": sum(kinds.values()) / n}
    out.update({f"kind:{k}": v / n for k, v in kinds.items()})
    progress(f"[capacity] memory {label}: {out}")
    return out


def capacity_section(duration: float, n: int, mem_sessions: int) -> Section:
    costs, (idle_cmd, idle_proc) = _costs(duration, n)
    mem = {
        label: asyncio.run(_memory(mem_sessions, label, ua))
        for label, ua in (("API client", API_UA), ("browser", BROWSER_UA))
    }
    s = Section(
        f"Capacity model inputs: Redis CPU per request and memory per session ({duration:g} s runs)"
    )
    s.add(
        "One private redis-server (no persistence), one `tokend serve` process, argon2 at its "
        "floor (8 KiB, 1 pass). Before each wrk run `CONFIG RESETSTAT`; after it the sum of "
        "`usec` of the script calls in `INFO commandstats` (execution only; the commands a "
        "script calls are inside that figure and also listed on their own, in the next "
        "column with the commands sent directly) and the redis-server's CPU from `INFO "
        "cpu` (used_cpu_sys + used_cpu_user: also the socket reads and writes and the "
        "event loop, what a core actually spends: the planning figure), each divided by "
        "the requests wrk counted (every status). tokend's idle Redis traffic with no "
        f"requests ({idle_cmd:.0f} "
        f"usec/s in commands, {idle_proc:.0f} usec/s process CPU over 3 s) is subtracted "
        "from the process figure only (the commands' share of it is negligible). "
        f"refresh at {CONNECTIONS} connections over {n} token chains; login at "
        f"{LOGIN_CONNECTIONS} (one user); me at {CONNECTIONS} cycling {n} sessions' access "
        "tokens (each request one deny check).",
        "",
    )
    rows = []
    for c in costs:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in c.calls.items() if v >= 0.01)
        rows.append(
            [
                c.what,
                f"{c.requests:,} ({c.ok:,} 2xx)",
                f"{c.wrk.rps:,.0f}",
                f"{c.cmd_usec:.1f}",
                f"{c.other_usec:.1f}",
                f"{c.proc_usec:.1f}",
                f"{1e6 / c.proc_usec:,.0f}",
                f"{CEILING * 1e6 / c.proc_usec:,.0f}",
                calls,
                f"{c.load:.1f}",
            ]
        )
    s.table(
        [
            "request",
            "requests counted",
            "per second",
            "commandstats usec/request: scripts",
            "other entries (incl. those scripts call)",
            "Redis process CPU usec/request",
            "per second at 100% of one core",
            f"at {CEILING:.0%}",
            "commands per request",
            "load",
        ],
        rows,
    )
    s.add(
        f"Memory: {mem_sessions:,} sessions of {mem_sessions:,} users (one session per user: "
        "the per-user index counted in full for each) through `SessionStore.create` and one "
        "`SessionStore.rotate` each, in process, on a fresh redis-server per variant; "
        "`INFO memory` used_memory deltas and `MEMORY USAGE` summed by key kind (`s` "
        "session hash, `u` user index, `exp` partition expiry index, ...). The user agent "
        "as the HTTP layer records it (at most 64 bytes).",
        "",
    )
    kinds = sorted({k for m in mem.values() for k in m if k.startswith("kind:")})
    s.table(
        [
            "user agent",
            "B/session created (INFO)",
            "B/session after one refresh (INFO)",
            "(MEMORY USAGE)",
            *(k.removeprefix("kind:") for k in kinds),
        ],
        [
            [
                label,
                f"{m['created']:.0f}",
                f"{m['rotated']:.0f}",
                f"{m['keys']:.0f}",
                *(f"{m.get(k, 0):.0f}" for k in kinds),
            ]
            for label, m in mem.items()
        ],
    )
    return s
