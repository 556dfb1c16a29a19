"""Subscriber integrations side by side: aiohttp, FastAPI, Flask, Django.

    .venv/bin/python -m bench subscribers [--quick] [--out FILE]

Each framework's example service (``examples/<name>_service.py``, started as users start
it, following one fresh ``tokend serve``) is measured for

1. revocation propagation: a session is logged out at tokend, then its access token is
   presented until every worker of the service answers 401. Requests land on an
   arbitrary worker, so polls go out in rounds over one connection per worker when the
   server keeps connections alive (aiohttp, uvicorn; each connection pinned to the
   worker named by its ``X-Worker-Pid``), or over a burst of fresh connections per round
   when it closes them (gunicorn's sync workers), and each answer is booked to the pid
   that sent it. The figure per logout: the event's ``at`` (tokend's clock when it
   revoked, read from the Redis channel) to the 401 of the last worker to refuse.
2. verification throughput: wrk repeating one valid token on ``GET /protected`` of the
   example, against ``GET /protected`` of a bare app of the same framework under the
   same server and worker count (bench/subscriber_apps/, a constant document shaped like
   the claims, no tokend), same wrk connections, both running, alternated per round.

One table, a row per framework; the targets (propagation p99 < 5 ms, protected >= 80%
of bare) next to the figures, never asserted. Everything on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt

from bench import harness
from bench.harness import (
    HERE,
    PYTHON,
    ROOT,
    Tokend,
    WrkResult,
    free_port,
    make_sessions,
    median,
    parse_wrk,
    percentile,
    stop,
    tokend_server,
    wait_quiet,
    workdir,
    wrk_cmd,
)
from bench.report import Section, progress
from bench.subscriber import SESSION_LIMITS_OFF, _collect_ats, _example_env

APPS = HERE / "subscriber_apps"
CONNECTIONS = 50  # wrk connections, both sides
TARGET_P99_MS = 5.0
TARGET_RATIO = 0.80
POLL_DEADLINE = 2.0  # seconds per logout before it counts as not propagated
DISCOVER_TIMEOUT = 20.0
# Seconds each load run waits for the machine to be quiet, in place of the suite's 15
# (4 frameworks x 2 sides x 2 rounds would otherwise take minutes on a busy machine).
QUICK_QUIET_WAIT = 0.5
FULL_QUIET_WAIT = 2.0


@dataclass(frozen=True)
class Framework:
    key: str
    example: str  # under examples/
    bare: str  # under bench/subscriber_apps/
    server: str
    workers: int
    env: dict[str, str] = field(default_factory=dict)


FRAMEWORKS = (
    Framework("aiohttp", "protected_service.py", "aiohttp_bare.py", "aiohttp web.run_app", 1),
    Framework("fastapi", "fastapi_service.py", "fastapi_bare.py", "uvicorn", 2, {"WORKERS": "2"}),
    Framework("flask", "flask_service.py", "flask_bare.py", "gunicorn sync", 2, {"WORKERS": "2"}),
    Framework(
        "django", "django_service.py", "django_bare.py", "gunicorn sync", 2, {"WORKERS": "2"}
    ),
)


@dataclass
class Propagation:
    at_ms: list[float] = field(default_factory=list)  # at → last worker's 401
    send_ms: list[float] = field(default_factory=list)  # logout sent → last worker's 401
    rounds: list[int] = field(default_factory=list)  # poll rounds until every worker refused
    first_round: int = 0  # logouts whose first round already got 401 from every worker
    timeouts: int = 0  # some worker still answered 200 after POLL_DEADLINE
    errors: int = 0
    no_at: int = 0  # the event's `at` never seen on the channel
    pids: list[str] = field(default_factory=list)
    keepalive: bool = True
    repins: int = 0
    listener: dict[str, str] = field(default_factory=dict)  # pid → its own at → applied


def _histogram(text: str) -> str:
    """`at` → applied of live events, from one worker's own listener histogram."""
    name = "tokend_listener_propagation_seconds"
    buckets = {
        float(le): float(n)
        for le, n in re.findall(
            rf'^{name}_bucket\{{le="([^"]+)",source="live"\}} (\S+)$', text, re.M
        )
        if le != "+Inf"
    }
    total = re.search(rf'^{name}_sum\{{source="live"\}} (\S+)$', text, re.M)
    count = re.search(rf'^{name}_count\{{source="live"\}} (\S+)$', text, re.M)
    if not total or not count or not float(count.group(1)):
        return "no live events in its histogram"
    n = float(count.group(1))
    within = ", ".join(
        f"{buckets[le] / n:.1%} ≤ {le * 1000:g} ms" for le in (0.001, 0.005) if le in buckets
    )
    return f"mean {float(total.group(1)) / n * 1000:.2f} ms over {n:.0f}; {within}"


@dataclass
class Row:
    fw: Framework
    note: str = ""  # why there are no figures
    prop: Propagation | None = None
    protected: list[WrkResult] = field(default_factory=list)
    bare: list[WrkResult] = field(default_factory=list)
    split_protected: list[str] = field(default_factory=list)  # answers per worker, per run
    split_bare: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [p.rps / b.rps for p, b in zip(self.protected, self.bare, strict=False) if b.rps]


# --- processes ------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(*servers: tuple[Path, dict[str, str], int, Path]) -> Iterator[list[str]]:
    """``python script`` for each (script, env, port, log), from the checkout's root (as
    users start the examples), all started at once, until the block ends; their URLs once
    every /healthz answers 2xx. Output goes to each log."""
    with contextlib.ExitStack() as stack:
        procs = []
        for script, env, _port, log in servers:
            out = stack.enter_context(log.open("wb"))
            proc = subprocess.Popen(
                [PYTHON, str(script)],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop, proc)
            procs.append(proc)
        urls = []
        for (script, _env, port, log), proc in zip(servers, procs, strict=True):
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(url + "/healthz", proc)
            except (OSError, RuntimeError) as exc:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{script.name} did not start: {exc}\n{tail}") from exc
            urls.append(url)
        yield urls


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until ``url`` answers 2xx; 503 (replaying) and refused connections are waited out,
    any other answer (a 401 or 404 will not change) fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise RuntimeError(f"GET {url}: {exc.code} {exc.reason}") from None
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"GET {url}: no 2xx within {timeout:g} s")
        time.sleep(0.05)


def _command(script: Path, env: dict[str, str]) -> str:
    shown = {k: v for k, v in env.items() if k in ("PORT", "HOST", "WORKERS")}
    for k in ("TOKEND_JWKS_URL", "TOKEND_REDIS_PREFIX"):
        if k in env:
            shown[k] = env[k]
    return shlex.join(
        [*(f"{k}={v}" for k, v in shown.items()), "python", str(script.relative_to(ROOT))]
    )


# --- workers and polls ----------------------------------------------------------------


class Workers:
    """Client connections that reach every worker of a service; answers booked per pid."""

    def __init__(self, url: str, expected: int) -> None:
        self.url = url
        self.expected = expected
        self.sessions: list[aiohttp.ClientSession] = []
        self.pinned: list[str] = []  # keep-alive: the worker each session's connection is on
        self.moved = False  # keep-alive: a session was answered by another worker
        self.pids: set[str] = set()
        self.keepalive = True
        self.repins = 0

    @staticmethod
    def _session() -> aiohttp.ClientSession:
        # one connection each: while the server keeps it alive, one worker answers
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False))

    async def _get(
        self, http: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bool, float]:
        async with http.get(self.url + path, headers=headers) as resp:
            await resp.read()
            closed = resp.headers.get("Connection", "").lower() == "close"
            return resp.status, resp.headers.get("X-Worker-Pid", "-"), closed, time.time()

    async def discover(self) -> None:
        """Find the workers (200 on /healthz from each) and pin one connection to each.

        Each try opens fresh connections (a kept-alive one stays on its worker, so reusing
        them would never reach a worker that was not up at the first try)."""
        await self.close()
        chosen: dict[str, aiohttp.ClientSession] = {}
        spare: list[aiohttp.ClientSession] = []
        closing = False
        deadline = time.monotonic() + DISCOVER_TIMEOUT
        try:
            while True:
                pool = [self._session() for _ in range(max(4, 4 * self.expected))]
                answers = await asyncio.gather(*(self._get(s, "/healthz") for s in pool))
                for session, (status, pid, closed, _) in zip(pool, answers, strict=True):
                    closing |= closed
                    if status == 200 and pid not in chosen:
                        chosen[pid] = session
                    else:
                        spare.append(session)
                for session in spare:
                    await session.close()
                spare = []
                if len(chosen) >= self.expected or "-" in chosen:
                    break
                if time.monotonic() > deadline:
                    break  # fewer workers than configured answered: measured as they are
                await asyncio.sleep(0.05)
            self.pids = set(chosen)
            self.keepalive = not closing
            if self.keepalive:
                # the same connection again: still the same worker?
                again = await asyncio.gather(*(self._get(s, "/healthz") for s in chosen.values()))
                self.keepalive = all(
                    a[1] == pid and not a[2] for pid, a in zip(chosen, again, strict=True)
                )
            if self.keepalive:
                self.sessions, self.pinned = list(chosen.values()), list(chosen)
                self.moved = False
            else:
                # a burst of fresh connections per round, twice the workers
                spare = list(chosen.values())
                self.sessions = [
                    self._session() for _ in range(2 * max(self.expected, len(chosen)))
                ]
        finally:
            for session in spare:
                await session.close()

    async def round(self, headers: dict[str, str]) -> list[tuple[int, str, float]]:
        answers = await asyncio.gather(
            *(self._get(s, "/protected", headers) for s in self.sessions)
        )
        if self.keepalive and any(a[1] != pid for a, pid in zip(answers, self.pinned, strict=True)):
            self.moved = True  # its connection was closed and opened again elsewhere
        return [(status, pid, at) for status, pid, _, at in answers]

    async def metrics(self) -> dict[str, str]:
        """Each worker's GET /metrics text, by pid (rounds until every pid answered)."""
        texts: dict[str, str] = {}
        for _ in range(50):
            for session in self.sessions:
                async with session.get(self.url + "/metrics") as resp:
                    text = await resp.text()
                    if resp.status == 200:
                        texts.setdefault(resp.headers.get("X-Worker-Pid", "-"), text)
            if set(texts) >= self.pids:
                break
        return texts

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()
        self.sessions = []


async def _propagate(server: Tokend, example: str, expected: int, tokens: list[str]) -> Propagation:
    out = Propagation()
    ats: dict[str, float] = {}
    ready = asyncio.Event()
    collector = asyncio.create_task(_collect_ats(server.prefix, ats, ready))
    workers = Workers(example, expected)
    try:
        await ready.wait()
        await asyncio.to_thread(wait_quiet)
        await workers.discover()  # after the wait: kept-alive connections time out when idle
        out.pids, out.keepalive = sorted(workers.pids), workers.keepalive
        async with aiohttp.ClientSession() as http:
            for token in tokens:
                sid = jwt.decode(token, options={"verify_signature": False})["sid"]
                headers = {"Authorization": f"Bearer {token}"}
                # the token in use on the workers (each verifier has it cached)
                if any(status != 200 for status, _, _ in await workers.round(headers)):
                    out.errors += 1
                    continue
                sent = time.time()
                async with http.post(server.url + "/auth/logout", headers=headers) as resp:
                    await resp.read()
                    if resp.status != 204:
                        out.errors += 1
                        continue
                refused: dict[str, float] = {}
                rounds = 0
                while time.time() - sent < POLL_DEADLINE:
                    rounds += 1
                    for status, pid, at in await workers.round(headers):
                        if status == 401:
                            refused.setdefault(pid, at)
                        elif status != 200:
                            out.errors += 1
                        elif pid not in workers.pids:
                            workers.pids.add(pid)  # a worker discovery missed
                    if set(refused) >= workers.pids:
                        break
                    if workers.moved:
                        workers.repins += 1
                        await workers.discover()
                if not set(refused) >= workers.pids:
                    out.timeouts += 1
                    continue
                last = max(refused.values())
                out.rounds.append(rounds)
                out.first_round += rounds == 1
                for _ in range(200):
                    if sid in ats:
                        break
                    await asyncio.sleep(0.005)
                if sid in ats:
                    out.at_ms.append((last - ats[sid]) * 1000)
                else:
                    out.no_at += 1
                out.send_ms.append((last - sent) * 1000)
        with contextlib.suppress(aiohttp.ClientError, OSError):
            out.listener = {pid: _histogram(t) for pid, t in (await workers.metrics()).items()}
        out.pids, out.repins, out.keepalive = (
            sorted(workers.pids),
            workers.repins,
            workers.keepalive,
        )
        return out
    finally:
        await workers.close()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector


# --- throughput -------------------------------------------------------------------------


# bench/request.lua (one fixed GET with BEARER, statuses, p50/p99) plus answers per
# X-Worker-Pid: with kept-alive connections wrk's 50 are split among the workers when it
# connects, and an uneven split moves a run's figure more than anything else.
PIDS_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local bearer = os.getenv("BEARER")
  if bearer then wrk.headers["Authorization"] = "Bearer " .. bearer end
  statuses = {}
  pids = {}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local pid = headers["X-Worker-Pid"] or headers["x-worker-pid"] or "-"
  pids[pid] = (pids[pid] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do
      io.write(string.format("status %d %d\\n", code, n))
    end
    for pid, n in pairs(t:get("pids")) do io.write(string.format("pid %s %d\\n", pid, n)) end
  end
  io.write(string.format("p50_us %d\\np99_us %d\\n",
    latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk(url: str, script: str, token: str, duration: float) -> tuple[WrkResult, dict[str, int]]:
    cmd = wrk_cmd(url + "/protected", connections=CONNECTIONS, duration=duration, script=script)
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BEARER": token, "WRK_THREADS": "1"},
    ).stdout
    pids = {pid: int(n) for pid, n in re.findall(r"^pid (\S+) (\d+)$", out, re.M)}
    return parse_wrk(out), pids


def _split(pids: dict[str, int]) -> str:
    """Share of answers per worker, largest first: ``62/38``."""
    total = sum(pids.values()) or 1
    return "/".join(f"{n / total:.0%}".rstrip("%") for n in sorted(pids.values(), reverse=True))


def _throughput(
    row: Row, example: str, bare: str, token: str, rounds: int, duration: float, script: str
) -> None:
    _wrk(example, script, token, 1)  # one unmeasured second of the same load each
    _wrk(bare, script, token, 1)
    for i in range(rounds):
        order = [("protected", example), ("bare", bare)]
        if i % 2:
            order.reverse()  # ABBA: drift falls on both sides alike
        for side, url in order:
            wait_quiet()
            r, pids = _wrk(url, script, token, duration)
            (row.protected if side == "protected" else row.bare).append(r)
            (row.split_protected if side == "protected" else row.split_bare).append(_split(pids))
            progress(
                f"[subscribers] {row.fw.key} round {i + 1}/{rounds} {side}: {r.rps:,.0f}/s "
                f"p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms, per worker {_split(pids)}% "
                f"{r.bad()}"
            )


# --- one framework --------------------------------------------------------------------


def _measure(row: Row, server: Tokend, logouts: int, rounds: int, duration: float) -> None:
    fw = row.fw
    example_script = ROOT / "examples" / fw.example
    bare_script = APPS / fw.bare
    bodies = asyncio.run(make_sessions(server.url, logouts + 1, concurrency=4))
    tokens = [b["access_token"] for b in bodies]
    steady, tokens = tokens[0], tokens[1:]
    with workdir(f"subscribers-{fw.key}") as wd:
        ex_port, bare_port = free_port(), free_port()
        ex_env = {
            **_example_env(server, server.prefix, ex_port),
            "HOST": "127.0.0.1",
            **fw.env,
        }
        bare_env = {"PORT": str(bare_port), "HOST": "127.0.0.1", **fw.env}
        row.commands = [_command(example_script, ex_env), _command(bare_script, bare_env)]
        try:
            with _serving(
                (example_script, ex_env, ex_port, wd / "example.log"),
                (bare_script, bare_env, bare_port, wd / "bare.log"),
            ) as (example, bare):
                progress(f"[subscribers] {fw.key}: {logouts} logouts")
                row.prop = asyncio.run(_propagate(server, example, fw.workers, tokens))
                p = row.prop
                if p.at_ms:
                    progress(
                        f"[subscribers] {fw.key} propagation over {len(p.pids)} worker(s): "
                        f"p50 {median(p.at_ms):.2f} ms p99 {percentile(p.at_ms, 99):.2f} ms "
                        f"max {max(p.at_ms):.2f} ms; {p.timeouts} timeouts, {p.errors} errors"
                    )
                script = wd / "pids.lua"
                script.write_text(PIDS_LUA)
                _throughput(row, example, bare, steady, rounds, duration, str(script))
        except Exception:
            log_tail = ""
            for name in ("example.log", "bare.log"):
                if (wd / name).exists():
                    log_tail += f"--- {name}\n" + (wd / name).read_text(errors="replace")[-1500:]
            progress(log_tail)
            raise


# --- the section ----------------------------------------------------------------------


def _ms(xs: list[float], fn: str) -> str:
    if not xs:
        return "-"
    value = {"p50": median, "p99": lambda v: percentile(v, 99), "max": max}[fn](xs)
    return f"{value:.2f}"


def subscribers_section(quick: bool) -> Section:
    logouts = 100 if quick else 1000
    rounds, duration = (2, 2.0) if quick else (4, 3.0)
    # 4 frameworks x 2 sides x rounds load runs: a busy machine must not take minutes
    # (unless --quiet-wait was given): each run waits at most this long for a quiet machine
    quiet_wait = harness.QUIET_WAIT
    if not any(a.startswith("--quiet-wait") for a in sys.argv):
        harness.QUIET_WAIT = min(quiet_wait, QUICK_QUIET_WAIT if quick else FULL_QUIET_WAIT)
    waited = harness.QUIET_WAIT
    rows = [Row(fw) for fw in FRAMEWORKS]
    try:
        if not shutil.which("wrk"):
            raise RuntimeError("wrk is not installed (apt-get install wrk)")
        with tokend_server(SESSION_LIMITS_OFF) as server:
            for row in rows:
                if not (ROOT / "examples" / row.fw.example).exists():
                    row.note = f"examples/{row.fw.example} is not there yet"
                    progress(f"[subscribers] {row.fw.key}: skipped, {row.note}")
                    continue
                progress(f"== subscribers: {row.fw.key}")
                try:
                    _measure(row, server, logouts, rounds, duration)
                except Exception as exc:  # one broken framework must not lose the others
                    traceback.print_exc()
                    row.note = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        harness.QUIET_WAIT = quiet_wait
    return _report(rows, logouts, rounds, duration, quick, waited)


def _report(
    rows: list[Row], logouts: int, rounds: int, duration: float, quick: bool, waited: float
) -> Section:
    s = Section(
        f"Subscriber integrations: propagation ({logouts:,} logouts) and verification "
        f"throughput ({rounds} x {duration:g} s per side){' (--quick)' if quick else ''}"
    )
    s.add(
        "Per framework, its example service (`examples/<name>_service.py`, as users start "
        "it, following one `tokend serve` on a fresh prefix) and a bare app of the same "
        "framework under the same server and worker count (`bench/subscriber_apps/`, "
        "`GET /protected` answering a constant document shaped like the claims, no tokend) "
        "run side by side.",
        "",
        "Propagation: each session (one login each) is logged out at tokend "
        "(`POST /auth/logout`), then its access token is presented in rounds until every "
        "worker (by `X-Worker-Pid`) has answered 401: one request per worker per round over "
        "a connection pinned to it where the server keeps connections alive, else a burst "
        "of fresh connections (twice the workers) per round, each answer booked to the pid "
        "that sent it. `at → 401` runs from the event's `at` (tokend's clock when it "
        "revoked, read from the Redis channel) to the last worker's 401; before each logout "
        "one round must get 200 from every connection (the token is in use and cached). "
        "An upper bound: it includes the rest of the logout's response and a poll round "
        "trip.",
        "",
        f"Throughput: wrk (one thread, {CONNECTIONS} connections, the same "
        "`Authorization: Bearer` valid token on every request, both sides) on `GET "
        "/protected`; 1 s of unmeasured warm-up each, then protected and bare alternated "
        f"(ABBA) for {rounds} rounds of {duration:g} s; req/s are the medians, the ratio "
        "the median of the per-round ratios. Before each measured run (the propagation "
        f"included) the harness waits up to {waited:g} s for the CPUs to be under 25% busy "
        "(other work on the machine is noted below the section).",
        "",
    )
    table = []
    for row in rows:
        fw = row.fw
        p = row.prop
        if p is None and not row.protected:
            table.append(
                [fw.key, fw.server, "-", "-", "-", "-", "-", "-", "-", "-", "-", row.note or "-"]
            )
            s.target(f"{fw.key}: propagation p99 < {TARGET_P99_MS:g} ms", row.note, None)
            s.target(f"{fw.key}: protected >= {TARGET_RATIO:.0%} of bare", row.note, None)
            continue
        workers = f"{len(p.pids)}" if p else "?"
        if p and "-" in p.pids:
            workers = "1 (no X-Worker-Pid)"
        p99 = percentile(p.at_ms, 99) if p and p.at_ms else float("nan")
        prop_met = bool(p and p.at_ms and p99 < TARGET_P99_MS and not p.timeouts)
        ratio = median(row.ratios) if row.ratios else float("nan")
        ratio_met = bool(row.ratios) and ratio >= TARGET_RATIO
        table.append(
            [
                fw.key,
                f"{fw.server}, {workers} worker(s)"
                + ("" if not p or p.keepalive else ", no keep-alive"),
                f"{len(p.at_ms):,}" if p else "-",
                _ms(p.at_ms, "p50") if p else "-",
                _ms(p.at_ms, "p99") if p else "-",
                _ms(p.at_ms, "max") if p else "-",
                "met" if prop_met else "missed",
                f"{median([r.rps for r in row.protected]):,.0f}" if row.protected else "-",
                f"{median([r.rps for r in row.bare]):,.0f}" if row.bare else "-",
                f"{ratio:.2f}" if row.ratios else "-",
                "met" if ratio_met else "missed",
                row.note or "-",
            ]
        )
        s.target(
            f"{fw.key}: propagation p99 < {TARGET_P99_MS:g} ms (every worker)",
            f"{p99:.2f} ms" + (f", {p.timeouts} timeouts" if p and p.timeouts else ""),
            prop_met,
        )
        s.target(
            f"{fw.key}: protected >= {TARGET_RATIO:.0%} of bare req/s",
            f"{ratio:.0%}" if row.ratios else "not measured",
            ratio_met if row.ratios else None,
        )
    s.table(
        [
            "framework",
            "server",
            "logouts",
            "at → 401 p50 ms",
            "p99 ms",
            "max ms",
            f"p99 < {TARGET_P99_MS:g} ms",
            "protected req/s",
            "bare req/s",
            "ratio",
            f">= {TARGET_RATIO:.2f}",
            "note",
        ],
        table,
    )
    notes = []
    for row in rows:
        p = row.prop
        if p:
            rounds_info = (
                f"poll rounds per logout median {median(p.rounds):.0f}, max {max(p.rounds)}"
                if p.rounds
                else "no poll rounds"
            )
            notes.append(
                f"- {row.fw.key}: pids {', '.join(p.pids)}; logout sent → last 401 p50 "
                f"{_ms(p.send_ms, 'p50')} ms, p99 {_ms(p.send_ms, 'p99')} ms; every worker "
                f"already refused in the first round in {p.first_round} of {len(p.send_ms)}; "
                f"{rounds_info}; {p.timeouts} not refused by every worker within "
                f"{POLL_DEADLINE:g} s; {p.errors} failed logouts or polls; {p.no_at} without "
                f"an `at` on the channel; {p.repins} re-pins"
            )
            if p.listener:
                notes.append(
                    f"  - {row.fw.key} listener's own `at` → applied (live events, per "
                    "worker): " + "; ".join(f"{pid}: {h}" for pid, h in sorted(p.listener.items()))
                )
        bad = [
            f"{side} {r.bad()}"
            for side, rs in (("protected", row.protected), ("bare", row.bare))
            for r in rs
            if r.bad()
        ]
        if row.protected:
            notes.append(
                f"  - {row.fw.key} wrk: protected p50/p99 "
                f"{median([r.p50_ms for r in row.protected]):.1f}/"
                f"{median([r.p99_ms for r in row.protected]):.1f} ms, bare "
                f"{median([r.p50_ms for r in row.bare]):.1f}/"
                f"{median([r.p99_ms for r in row.bare]):.1f} ms; per-round ratios "
                f"{', '.join(f'{x:.2f}' for x in row.ratios)}"
                + (
                    f"; answers per worker (%, per run) protected {', '.join(row.split_protected)}"
                    f", bare {', '.join(row.split_bare)}"
                    if any("/" in x for x in row.split_protected + row.split_bare)
                    else ""
                )
                + (f"; non-2xx / errors: {'; '.join(bad)}" if bad else "")
            )
    if notes:
        s.add(*notes, "")
    commands = [c for row in rows for c in row.commands]
    if commands:
        s.add(
            "Commands (ports picked free per run; TOKEND_REDIS_URL, TOKEND_ISSUER, "
            "TOKEND_AUDIENCE also set):",
            "",
            "```",
            *commands,
            "BEARER=<token> "
            + shlex.join(
                wrk_cmd(
                    "http://127.0.0.1:PORT/protected",
                    connections=CONNECTIONS,
                    duration=duration,
                    script="pids.lua",
                )
            ),
            "```",
            "",
            "`pids.lua` is `PIDS_LUA` of bench/subscribers.py (bench/request.lua's load, "
            "counting answers per `X-Worker-Pid`), written to the run's work directory.",
            "",
        )
    return s
