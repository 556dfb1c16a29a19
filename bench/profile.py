"""(7) Where one refresh's time goes: py-spy on `tokend serve` under refresh load.

py-spy samples every thread and counts a thread blocked in C (aiosqlite's, the argon2
executor's) as busy, so only the event loop's thread (MainThread) is counted. Idle
samples (the loop waiting in epoll) are left out by py-spy, so the samples are the
loop's busy time.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

from bench.contenders import REFRESH_LUA, REQUEST_LUA
from bench.harness import (
    NO_LOGIN_LIMITS,
    PYTHON,
    WrkResult,
    make_sessions,
    parse_wrk,
    tokend_server,
    wait_quiet,
    workdir,
    write_lines,
    wrk_cmd,
)
from bench.report import Section, progress
from bench.throughput import STORM_LOGINS, login_storm, register_user

PY_SPY = str(Path(PYTHON).with_name("py-spy"))
RATE = 250
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

# Library → category; a stack with a PyJWT frame is JWT work whatever it calls.
_LIBS = (
    (re.compile(r"(^|/)json/"), "JSON (stdlib json)"),
    (re.compile(r"(^|/)(aiohttp|multidict|yarl|propcache|aiohappyeyeballs)/"), "aiohttp"),
    (re.compile(r"(^|/)prometheus_client/"), "metrics (prometheus_client)"),
    (re.compile(r"(^|/)(sqlalchemy|aiosqlite|asyncpg)/"), "database (SQLAlchemy, aiosqlite)"),
    (re.compile(r"(^|/)(service|workers)/"), "tokend's own code"),
    (re.compile(r"(^|/)(asyncio|selectors)"), "asyncio event loop"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";")[1:]:  # the first element is the thread name
        m = _FRAME.match(part)
        out.append((m.group("func"), m.group("file")) if m else (part, ""))
    return out


def categorise(frames: list[tuple[str, str]]) -> str:
    """The category of one sample (frames from the root to the leaf)."""
    jwt_frames = [(f, p) for f, p in frames if re.search(r"(^|/)jwt/", p)]
    if jwt_frames:
        outer = jwt_frames[0][0]
        return "JWT sign (PyJWT encode)" if "encode" in outer else "JWT verify (PyJWT decode)"
    # redis-py is the only user of asyncio streams in tokend (aiohttp has its own protocol).
    if any(re.search(r"(^|/)redis/|asyncio/streams\.py", p) for _f, p in frames):
        return "Redis client (redis-py, its socket I/O included)"
    leaf_func, leaf_path = frames[-1] if frames else ("", "")
    if re.search(r"(^|\.)_?(write|writelines|sendall|send)$", leaf_func) and re.search(
        r"(^|/)(asyncio|aiohttp)/", leaf_path
    ):
        return "socket send to the client (kernel, loopback)"
    for _func, path in reversed(frames):
        for pattern, name in _LIBS:
            if pattern.search(path):
                return name
    return "other (stdlib)"


def summarise(raw: str, thread: str = "MainThread") -> tuple[int, Counter[str], Counter[str]]:
    """(samples, by category, by own-time frame) of one thread in py-spy's raw output."""
    samples = 0
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        m = re.match(r"^thread \(\w+\): ([^;]*);(.*) (\d+)$", line)
        if not m or m.group(1) != thread:
            continue
        n = int(m.group(3))
        frames = _frames(f"{m.group(1)};{m.group(2)}")
        samples += n
        categories[categorise(frames)] += n
        func, path = frames[-1]
        leaves[f"`{func}` ({path})"] += n
    return samples, categories, leaves


def _record(
    pid: int, url: str, script: str, env: dict[str, str], duration: float, wd: Path
) -> tuple[WrkResult, str]:
    """py-spy on ``pid`` while wrk loads ``url``; (wrk's result, py-spy's raw output)."""
    wait_quiet()
    wrk = subprocess.Popen(
        wrk_cmd(url, connections=50, duration=duration + 2, script=script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "WRK_THREADS": "1"},
    )
    time.sleep(1)
    out = wd / "profile.raw"
    spy = subprocess.run(
        [
            PY_SPY,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(duration)),
            "-r",
            str(RATE),
            "-f",
            "raw",
            "--threads",
            "--nonblocking",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    stdout, _ = wrk.communicate()
    if spy.returncode:
        raise RuntimeError(f"py-spy failed: {spy.stderr[-1000:]}")
    return parse_wrk(stdout), out.read_text()


def thread_samples(raw: str) -> Counter[str]:
    """Samples per thread name (argon2 threads compute in C and count as busy)."""
    out: Counter[str] = Counter()
    for line in raw.splitlines():
        m = re.match(r"^thread \(\w+\): ([^;]*);.* (\d+)$", line)
        if m:
            out[m.group(1)] += int(m.group(2))
    return out


def _describe(s: Section, what: str, raw: str, result: WrkResult, duration: float) -> None:
    samples, categories, leaves = summarise(raw)
    progress(
        f"[profile] {what}: {samples} event-loop samples, {result.rps:,.0f}/s under py-spy,"
        f" answers {dict(result.statuses)}"
    )
    busy = samples / (RATE * int(duration))
    per_request_us = 1e6 * busy / result.rps if result.rps else float("nan")
    s.add(
        f"### {what}",
        "",
        f"{result.rps:,.0f} requests/s while sampled ({result.ok_share:.1%} of them 2xx); "
        f"{samples:,} event-loop samples, the "
        f"loop busy {busy:.0%} of the time: about {per_request_us:.0f} µs of loop time per "
        "request.",
        "",
    )
    others = [(name, n) for name, n in thread_samples(raw).most_common() if name != "MainThread"]
    if others:
        s.add(
            "Other threads, busy share of the time: "
            + ", ".join(f"{name} {n / (RATE * int(duration)):.0%}" for name, n in others)
            + ".",
            "",
        )
    if not samples:
        return
    s.table(
        ["where the time goes", "share of loop time", "≈ µs per request"],
        [
            [name, f"{n / samples:.1%}", f"{per_request_us * n / samples:.0f}"]
            for name, n in categories.most_common()
        ],
    )
    s.table(
        ["top own-time frames (leaf of each sample)", "share"],
        [[name, f"{n / samples:.1%}"] for name, n in leaves.most_common(12)],
    )


def profile_section(duration: float, sessions: int) -> Section:
    from bench.subscriber import EXAMPLE, example_service

    s = Section(f"7. Profiles under load (py-spy, {duration:g} s each)")
    s.add(
        f"`py-spy record -r {RATE} -f raw --threads --nonblocking` on the server process "
        "while wrk drives it at 50 connections. Only the event loop's thread counts (py-spy "
        "counts threads blocked in C, such as aiosqlite's, as busy; idle samples are left "
        "out, so the samples are the loop's busy time). A sample is JWT work when a PyJWT "
        "frame is on its stack (signing when the outermost PyJWT call is an encode), Redis "
        "when a redis-py frame is (asyncio streams included: only redis-py uses them), "
        "a socket send when its leaf is a transport write, else the innermost library frame "
        "decides. wrk shares the two cores, so the kernel's loopback work is in the sends.",
        "",
    )
    with tokend_server(NO_LOGIN_LIMITS) as server, workdir("profile") as wd:
        bodies = asyncio.run(make_sessions(server.url, sessions))
        tokens = write_lines(wd / "tokens", [b["refresh_token"] for b in bodies])
        result, raw = _record(
            server.proc.pid,
            server.url + "/auth/refresh",
            REFRESH_LUA,
            {"TOKEN_FILE": str(tokens)},
            duration,
            wd,
        )
        _describe(s, "tokend `POST /auth/refresh`", raw, result, duration)
        fresh = asyncio.run(make_sessions(server.url, sessions))
        tokens = write_lines(wd / "tokens", [b["refresh_token"] for b in fresh])
        with login_storm(server.url, register_user(server.url)):
            result, raw = _record(
                server.proc.pid,
                server.url + "/auth/refresh",
                REFRESH_LUA,
                {"TOKEN_FILE": str(tokens)},
                duration,
                wd,
            )
        _describe(
            s, f"tokend `POST /auth/refresh` while {STORM_LOGINS} logins run", raw, result, duration
        )
        if EXAMPLE.exists():
            # a session of its own: in one run the first session's access token was refused
            # (401) after the refresh runs above had driven its chain
            token = asyncio.run(make_sessions(server.url, 1))[0]["access_token"]
            with example_service(server) as (url, pid), workdir("profile-example") as wd2:
                urllib.request.urlopen(
                    urllib.request.Request(
                        url + "/protected", headers={"Authorization": f"Bearer {token}"}
                    ),
                    timeout=5,
                ).close()
                result, raw = _record(
                    pid, url + "/protected", REQUEST_LUA, {"BEARER": token}, duration, wd2
                )
                _describe(
                    s, "example service `GET /protected` (tokend_client)", raw, result, duration
                )
    return s
