"""Shared benchmark plumbing: processes on free ports, tokend, sessions, wrk, statistics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from service.keyspace import Keyspace

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
PYTHON = sys.executable
TOKEND = str(Path(sys.executable).with_name("tokend"))
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
PASSWORD = "correct horse battery"
REDIS_URL = os.environ.get("TOKEND_REDIS_URL", "redis://127.0.0.1:6379/0")
# Logins never trip the failure limits in a benchmark (successes are given back, but 20
# concurrent logins of one user are 20 attempts in flight).
NO_LOGIN_LIMITS = {
    "TOKEND_LOGIN_FAILURES_PER_USER": "1000000",
    "TOKEND_LOGIN_FAILURES_PER_IP": "1000000",
    # the loads log one user in hundreds of times: no per-user login limit, no session cap
    "TOKEND_LOGINS_PER_USER": "1000000",
    "TOKEND_MAX_SESSIONS_PER_USER": "0",
    "TOKEND_REGISTRATIONS_PER_IP": "1000000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 2xx (or the process dies, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serve(
    cmd: Sequence[str],
    *,
    port: int,
    cwd: Path,
    env: dict[str, str] | None = None,
    health: str = "/healthz",
    timeout: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until the block ends; its output goes to ``cwd/server.log``."""
    log = (cwd / "server.log").open("wb")
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=log
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}{health}", timeout, proc)
        except (OSError, RuntimeError) as exc:
            tail = (cwd / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{cmd[0]} did not start: {exc}\n{tail}") from exc
        yield proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tokend:
    url: str
    env: dict[str, str]
    prefix: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def tokend_server(extra_env: dict[str, str] | None = None) -> Iterator[Tokend]:
    """`tokend serve` as users run it (one process, defaults) on a fresh DB and prefix."""
    with workdir("tokend") as wd:
        port = free_port()
        prefix = new_prefix("tokend")
        env = {
            **os.environ,
            "TOKEND_PORT": str(port),
            "TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{wd}/tokend.db",
            "TOKEND_REDIS_PREFIX": prefix,
            **(extra_env or {}),
        }
        # tokend may be mid-edit in this checkout: retry a failing upgrade a few times.
        for attempt in range(4):
            upgrade = subprocess.run(
                [TOKEND, "db", "upgrade"], env=env, capture_output=True, text=True
            )
            if not upgrade.returncode:
                break
            if attempt == 3:
                raise RuntimeError(f"tokend db upgrade failed: {upgrade.stderr[-1500:]}")
            time.sleep(15)
        try:
            with serve([TOKEND, "serve"], port=port, cwd=wd, env=env) as proc:
                yield Tokend(f"http://127.0.0.1:{port}", env, prefix, proc)
        finally:
            cleanup_redis_prefix(prefix)


def cleanup_redis_prefix(prefix: str) -> int:
    """Delete every key under ``prefix:``; how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=Keyspace(prefix).pattern, count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            n += client.unlink(*batch)
            batch = []
    if batch:
        n += client.unlink(*batch)
    client.close()
    return n


async def register(http: aiohttp.ClientSession, url: str, user: str | None = None) -> str:
    user = user or f"bench{uuid.uuid4().hex[:8]}"
    async with http.post(
        url + "/auth/register", json={"username": user, "password": PASSWORD}
    ) as resp:
        assert resp.status == 201, await resp.text()
    return user


async def make_sessions(url: str, n: int, concurrency: int = 4) -> list[dict[str, str]]:
    """Register one user and log in ``n`` times; the token bodies."""
    async with aiohttp.ClientSession() as http:
        user = await register(http, url)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> dict[str, str]:
            async with (
                sem,
                http.post(
                    url + "/auth/login", json={"username": user, "password": PASSWORD}
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                body: dict[str, str] = await resp.json()
                return body

        return list(await asyncio.gather(*(one() for _ in range(n))))


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: str = ""

    @property
    def ok_share(self) -> float:
        """Share of answers that were 2xx (1.0 when the script did not count)."""
        total = sum(self.statuses.values())
        ok = sum(n for code, n in self.statuses.items() if 200 <= code < 300)
        return ok / total if total else 1.0

    def bad(self) -> str:
        """Non-2xx statuses and socket errors, or empty."""
        codes = ", ".join(f"{n}x{c}" for c, n in sorted(self.statuses.items()) if c >= 300)
        return "; ".join(x for x in (codes, self.errors) if x)


# Other work on the machine skews every figure: before each load run, wait (up to
# QUIET_WAIT seconds) for the CPUs to be mostly idle, and keep what was seen.
QUIET_WAIT = 15.0
QUIET_BUSY = 0.25
BACKGROUND: list[float] = []


def cpu_busy(interval: float = 0.5) -> float:
    """Share of all CPUs busy over ``interval`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet() -> float:
    """Wait until the machine is mostly idle (or QUIET_WAIT passed); the busy share seen."""
    deadline = time.monotonic() + QUIET_WAIT
    busy = cpu_busy()
    while busy > QUIET_BUSY and time.monotonic() < deadline:
        busy = cpu_busy(1.0)
    BACKGROUND.append(busy)
    return busy


def wrk_cmd(
    url: str, *, connections: int, duration: float, script: str, threads: int = 1
) -> list[str]:
    return [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--latency",
        "-s",
        script,
        url,
    ]


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    script: str,
    env: dict[str, str] | None = None,
    threads: int = 1,
) -> WrkResult:
    wait_quiet()
    out = subprocess.run(
        wrk_cmd(url, connections=connections, duration=duration, script=script, threads=threads),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {}), "WRK_THREADS": str(threads)},
    ).stdout
    return parse_wrk(out)


async def run_wrk_async(
    url: str,
    *,
    connections: int,
    duration: float,
    script: str,
    env: dict[str, str] | None = None,
    threads: int = 1,
) -> WrkResult:
    cmd = wrk_cmd(url, connections=connections, duration=duration, script=script, threads=threads)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {}), "WRK_THREADS": str(threads)},
    )
    out, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"wrk failed: {err.decode()}")
    return parse_wrk(out.decode())


def parse_wrk(out: str) -> WrkResult:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"no wrk summary in: {out[-500:]}")
    statuses = {int(c): int(n) for c, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    p50 = re.search(r"^p50_us (\d+)$", out, re.M)
    p99 = re.search(r"^p99_us (\d+)$", out, re.M)
    if p50 and p99:
        p50_ms, p99_ms = int(p50.group(1)) / 1000, int(p99.group(1)) / 1000
    else:
        p50_ms, p99_ms = _latency(out, "50%"), _latency(out, "99%")
    errors = " ".join(re.findall(r"Socket errors: .*", out))
    return WrkResult(float(m.group(1)), p50_ms, p99_ms, statuses, errors)


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)$", out, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    rank = max(1, min(len(s), round(pct / 100 * len(s) + 0.5)))
    return s[rank - 1]


def _num(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def fmt(xs: Sequence[float], digits: int = 0) -> str:
    """``median (min-max)``, or the one value."""
    if len(xs) == 1:
        return _num(xs[0], digits)
    return f"{_num(median(xs), digits)} ({_num(min(xs), digits)}-{_num(max(xs), digits)})"


def git_state() -> str:
    """The checkout's short commit, noting uncommitted changes to tokend's code."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "service", "workers", "clients", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"{head} + uncommitted changes in service/workers/clients/examples" if dirty else head
    )
