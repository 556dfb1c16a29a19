"""(1) Refresh throughput and latency, all contenders; (2) login, and refresh under logins."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import aiohttp

from bench import contenders
from bench.contenders import REFRESH_LUA, REQUEST_LUA, Contender
from bench.harness import (
    BACKGROUND,
    NO_LOGIN_LIMITS,
    PASSWORD,
    WrkResult,
    fmt,
    make_sessions,
    median,
    register,
    run_wrk,
    run_wrk_async,
    tokend_server,
    wait_quiet,
    workdir,
    write_lines,
)
from bench.report import Section, progress

CONNECTIONS = 50
STORM_LOGINS = 20
LOGIN_CONNECTIONS = 20


def loadavg() -> str:
    bg = f", background CPU {BACKGROUND[-1]:.0%} before the run" if BACKGROUND else ""
    return f"load {os.getloadavg()[0]:.1f}{bg}"


def _line(name: str, r: WrkResult) -> str:
    bad = f" non-2xx/errors: {r.bad()}" if r.bad() else ""
    return f"{name}: {r.rps:,.0f}/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms{bad}"


def refresh_section(
    rounds: int,
    duration: float,
    sessions: int,
    chosen: Sequence[Contender] = contenders.ALL,
) -> Section:
    """Every contender once per round, in the same order (A B C ... A B C ...)."""
    results: dict[str, list[WrkResult]] = {c.key: [] for c in chosen}
    for i in range(rounds):
        for c in chosen:
            with c.start(sessions) as target:
                r = run_wrk(
                    target.url,
                    connections=CONNECTIONS,
                    duration=duration,
                    script=target.script,
                    env=target.env,
                )
            results[c.key].append(r)
            progress(f"[refresh] round {i + 1}/{rounds} {_line(c.key, r)} ({loadavg()})")

    s = Section(f"1. Refresh at {CONNECTIONS} connections ({duration:g} s x {rounds} rounds)")
    s.add(
        "Medians over the rounds with the min-max spread. Each contender is one process "
        "(gunicorn: one sync worker), started fresh each round; rotation-on contenders follow "
        "each session's token chain, the others re-present the same tokens.",
        "",
    )
    tok = results.get("tokend", [])
    rows = []
    for c in chosen:
        rs = results[c.key]
        ratio = "-"
        if tok and c.key != "tokend":
            per_round = [a.rps / b.rps for a, b in zip(tok, rs, strict=True)]
            ratio = (
                f"{median([a.rps for a in tok]) / median([b.rps for b in rs]):.2f}x "
                f"({min(per_round):.2f}-{max(per_round):.2f})"
            )
        ok = min(r.ok_share for r in rs)
        rows.append(
            [
                c.label,
                fmt([r.rps for r in rs]),
                fmt([r.p50_ms for r in rs], 1),
                fmt([r.p99_ms for r in rs], 1),
                f"{median([r.p99_ms / r.p50_ms for r in rs]):.1f}",
                f"{ok:.1%}",
                ratio,
            ]
        )
    s.table(
        [
            "contender",
            "refresh/s",
            "p50 ms",
            "p99 ms",
            "p99/p50",
            "2xx (worst round)",
            "tokend ÷ it (per-round range)",
        ],
        rows,
    )

    def ratio(key: str) -> float | None:
        if not tok or key not in results:
            return None
        return median([r.rps for r in tok]) / median([r.rps for r in results[key]])

    if "minimal" in results and "simplejwt-rotate" in results and "flask" in results:
        m = median([r.rps for r in results["minimal"]])
        s.add(
            f"Context: the minimal handler is "
            f"{m / median([r.rps for r in results['simplejwt-rotate']]):.1f}x simplejwt with "
            f"rotation and {m / median([r.rps for r in results['flask']]):.1f}x "
            f"flask-jwt-extended in this run (the issue measured about 16x and 2x).",
            "",
        )
    for key, goal, need in (
        ("simplejwt-rotate", "refresh >= 25x simplejwt (rotation + blacklist)", 25.0),
        ("flask", "refresh >= 3x flask-jwt-extended", 3.0),
        ("minimal", "refresh within 15% of the minimal handler (>= 0.85x)", 0.85),
        (
            "minimal-like",
            "refresh within 15% of the minimal handler with tokend's choices (>= 0.85x)",
            0.85,
        ),
    ):
        x = ratio(key)
        s.target(goal, "-" if x is None else f"{x:.2f}x", None if x is None else x >= need)
    if tok:
        p = median([r.p99_ms / r.p50_ms for r in tok])
        s.target(
            "refresh p99 <= 2x p50",
            f"{p:.1f}x (p50 {fmt([r.p50_ms for r in tok], 1)} ms, "
            f"p99 {fmt([r.p99_ms for r in tok], 1)} ms)",
            p <= 2.0,
        )
    return s


async def _login_storm(url: str, user: str, stop: asyncio.Event) -> tuple[int, int]:
    """Keep STORM_LOGINS logins in flight until ``stop``; (succeeded, failed)."""
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=STORM_LOGINS)) as http:

        async def one() -> None:
            while not stop.is_set():
                async with http.post(
                    url + "/auth/login", json={"username": user, "password": PASSWORD}
                ) as resp:
                    await resp.read()
                    counts[resp.status != 200] += 1

        await asyncio.gather(*(one() for _ in range(STORM_LOGINS)))
    return counts[0], counts[1]


@contextlib.contextmanager
def login_storm(url: str, user: str) -> Iterator[list[int]]:
    """STORM_LOGINS logins in flight from a background thread while the block runs.

    Yields a list that holds [succeeded, failed] once the block has ended.
    """
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    counts: list[int] = []

    def run() -> None:
        counts.extend(loop.run_until_complete(_login_storm(url, user, stop)))

    thread = threading.Thread(target=run, name="login-storm")
    thread.start()
    try:
        time.sleep(0.5)
        yield counts
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()


async def _refresh_under_storm(
    url: str, user: str, duration: float, tokens: str
) -> tuple[WrkResult, int, int]:
    await asyncio.to_thread(wait_quiet)
    stop = asyncio.Event()
    storm = asyncio.create_task(_login_storm(url, user, stop))
    await asyncio.sleep(0.5)  # the logins are in flight before the refreshes start
    r = await run_wrk_async(
        url + "/auth/refresh",
        connections=CONNECTIONS,
        duration=duration,
        script=REFRESH_LUA,
        env={"TOKEN_FILE": tokens},
    )
    stop.set()
    ok, failed = await storm
    return r, ok, failed


def login_section(rounds: int, duration: float, sessions: int) -> Section:
    login: list[WrkResult] = []
    quiet: list[WrkResult] = []
    storm: list[WrkResult] = []
    storm_logins: list[float] = []
    for i in range(rounds):
        with tokend_server(NO_LOGIN_LIMITS) as server, workdir("login") as wd:
            user = asyncio.run(_register(server.url))
            body = json.dumps({"username": user, "password": PASSWORD})
            r = run_wrk(
                server.url + "/auth/login",
                connections=LOGIN_CONNECTIONS,
                duration=duration,
                script=REQUEST_LUA,
                env={"METHOD": "POST", "BODY": body},
            )
            login.append(r)
            progress(f"[login] round {i + 1}/{rounds} {_line('login', r)} ({loadavg()})")
            for phase in ("quiet", "storm"):
                bodies = asyncio.run(make_sessions(server.url, sessions))
                tokens = str(
                    write_lines(wd / f"{phase}.tokens", [b["refresh_token"] for b in bodies])
                )
                if phase == "quiet":
                    r = run_wrk(
                        server.url + "/auth/refresh",
                        connections=CONNECTIONS,
                        duration=duration,
                        script=REFRESH_LUA,
                        env={"TOKEN_FILE": tokens},
                    )
                    quiet.append(r)
                    extra = ""
                else:
                    t0 = time.monotonic()
                    r, ok, failed = asyncio.run(
                        _refresh_under_storm(server.url, user, duration, tokens)
                    )
                    storm.append(r)
                    storm_logins.append(ok / (time.monotonic() - t0))
                    extra = f", {ok} logins ok, {failed} failed"
                progress(
                    f"[login] round {i + 1}/{rounds} refresh {phase}: "
                    f"{_line(phase, r)}{extra} ({loadavg()})"
                )

    s = Section(
        f"2. Login, and refresh while {STORM_LOGINS} logins run ({duration:g} s x {rounds} rounds)"
    )
    s.add(
        f"Login: wrk at {LOGIN_CONNECTIONS} connections posting one user's credentials (a "
        "fresh user each round; login failure limits raised so that successes in flight are "
        "never limited). Refresh quiet and under the storm: the same tokend process, fresh "
        f"sessions for each run, {CONNECTIONS} connections; the storm keeps {STORM_LOGINS} "
        "logins in flight from an asyncio client for the whole run.",
        "",
    )
    s.table(
        ["measure", "per second", "p50 ms", "p99 ms", "2xx (worst round)"],
        [
            [
                f"login ({LOGIN_CONNECTIONS} connections)",
                fmt([r.rps for r in login]),
                fmt([r.p50_ms for r in login], 1),
                fmt([r.p99_ms for r in login], 1),
                f"{min(r.ok_share for r in login):.1%}",
            ],
            [
                "refresh, quiet",
                fmt([r.rps for r in quiet]),
                fmt([r.p50_ms for r in quiet], 1),
                fmt([r.p99_ms for r in quiet], 1),
                f"{min(r.ok_share for r in quiet):.1%}",
            ],
            [
                f"refresh, {STORM_LOGINS} logins in flight",
                fmt([r.rps for r in storm]),
                fmt([r.p50_ms for r in storm], 1),
                fmt([r.p99_ms for r in storm], 1),
                f"{min(r.ok_share for r in storm):.1%}",
            ],
            ["logins completed during the storm", fmt(storm_logins, 1), "-", "-", "-"],
        ],
    )
    ratio = median([a.p99_ms / b.p99_ms for a, b in zip(storm, quiet, strict=True)])
    s.target(
        f"refresh p99 under {STORM_LOGINS} logins <= 2x quiet p99",
        f"{ratio:.2f}x "
        f"({fmt([r.p99_ms for r in storm], 1)} vs {fmt([r.p99_ms for r in quiet], 1)} ms)",
        ratio <= 2.0,
    )
    p = median([r.p99_ms / r.p50_ms for r in quiet])
    s.target("refresh p99 <= 2x p50 (quiet run of this section)", f"{p:.1f}x", p <= 2.0)
    return s


def register_user(url: str) -> str:
    """A fresh user for login runs."""
    return asyncio.run(_register(url))


async def _register(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        return await register(http, url, f"login{uuid.uuid4().hex[:10]}")
