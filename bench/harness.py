"""Shared benchmark plumbing: start processes on free ports, make sessions, run wrk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TOKEND = str(Path(sys.executable).with_name("tokend"))
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def tokend_server(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """`tokend serve` as users run it (one process, defaults) on a fresh DB and prefix."""
    workdir = tempfile.mkdtemp(prefix="tokend-bench-")
    port = free_port()
    db = f"sqlite+aiosqlite:///{workdir}/tokend.db"
    env = {
        **os.environ,
        "TOKEND_PORT": str(port),
        "TOKEND_DATABASE_URL": db,
        "TOKEND_REDIS_PREFIX": f"tokend-bench-{uuid.uuid4().hex[:8]}",
        **(extra_env or {}),
    }
    subprocess.run([TOKEND, "db", "upgrade"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([TOKEND, "serve"], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        cleanup_redis_prefix(env["TOKEND_REDIS_PREFIX"])
        shutil.rmtree(workdir, ignore_errors=True)


def cleanup_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(os.environ.get("TOKEND_REDIS_URL", "redis://127.0.0.1:6379/0"))
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])
    client.close()


async def make_sessions(url: str, n: int, concurrency: int = 4) -> list[dict[str, str]]:
    """Register one user and log in ``n`` times; the token bodies."""
    async with aiohttp.ClientSession() as http:
        user = f"bench{uuid.uuid4().hex[:8]}"
        async with http.post(
            url + "/auth/register", json={"username": user, "password": PASSWORD}
        ) as resp:
            assert resp.status == 201, await resp.text()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> dict[str, str]:
            async with sem, http.post(
                url + "/auth/login", json={"username": user, "password": PASSWORD}
            ) as resp:
                assert resp.status == 200, await resp.text()
                body: dict[str, str] = await resp.json()
                return body

        return list(await asyncio.gather(*(one() for _ in range(n))))


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    errors: str


def run_wrk(
    url: str, *, connections: int, duration: int, script: str | None = None,
    env: dict[str, str] | None = None, threads: int = 1,
) -> WrkResult:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, check=True,
        env={**os.environ, **(env or {}), "WRK_THREADS": str(threads)},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    statuses = {int(c): int(n) for c, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    p50 = re.search(r"^p50_us (\d+)$", out, re.M)
    p99 = re.search(r"^p99_us (\d+)$", out, re.M)
    if p50 and p99:
        p50_ms, p99_ms = int(p50.group(1)) / 1000, int(p99.group(1)) / 1000
    else:
        p50_ms = _latency(out, "50%")
        p99_ms = _latency(out, "99%")
    errors = " ".join(re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out))
    return WrkResult(rps, p50_ms, p99_ms, statuses, errors)


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)$", out, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def spread(xs: list[float]) -> str:
    return f"{min(xs):.0f}-{max(xs):.0f}"


def dump(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
