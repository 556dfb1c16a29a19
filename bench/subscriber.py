"""(3) Access-token verification at a subscriber; (4) revocation propagation and replay.

The subscriber is ``examples/protected_service.py`` (tokend_client's TokenVerifier and
RevocationListener behind its middleware), run as users run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import jwt

from bench.contenders import REQUEST_LUA
from bench.harness import (
    HERE,
    NO_LOGIN_LIMITS,
    PYTHON,
    REDIS_URL,
    ROOT,
    Tokend,
    WrkResult,
    cleanup_redis_prefix,
    fmt,
    free_port,
    make_sessions,
    median,
    new_prefix,
    percentile,
    run_wrk,
    serve,
    stop,
    tokend_server,
    wait_quiet,
    workdir,
    write_lines,
)
from bench.report import Section, progress
from service.keyspace import Keyspace

EXAMPLE = ROOT / "examples" / "protected_service.py"
TOKENS_LUA = str(HERE / "tokens.lua")
CONNECTIONS = 50
# The cache-miss run: MISS_TOKENS sessions' tokens in turn through a cache of MISS_CACHE.
MISS_TOKENS = 400
MISS_CACHE = 100
DEFAULT_ISSUER = "http://127.0.0.1:8080"
# make_sessions logs one user in hundreds of times: past tokend's default per-user login
# limit (60 per window) and session cap (100, the least recently used ended first).
SESSION_LIMITS_OFF = {
    **NO_LOGIN_LIMITS,
    "TOKEND_LOGINS_PER_USER": "1000000",
    "TOKEND_MAX_SESSIONS_PER_USER": "0",  # no cap
}


def example_missing() -> Section | None:
    if EXAMPLE.exists():
        return None
    s = Section("3-4. Subscriber")
    s.add(f"Skipped: {EXAMPLE.relative_to(ROOT)} is not there yet.")
    return s


def _example_env(server: Tokend | None, prefix: str, port: int) -> dict[str, str]:
    env = server.env if server else {}
    return {
        "TOKEND_JWKS_URL": (server.url if server else "http://127.0.0.1:9")
        + "/.well-known/jwks.json",
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": prefix,
        "TOKEND_ISSUER": env.get("TOKEND_ISSUER", DEFAULT_ISSUER),
        "TOKEND_AUDIENCE": env.get("TOKEND_AUDIENCE", "tokend"),
        "PORT": str(port),
    }


@contextlib.contextmanager
def example_service(
    server: Tokend, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """The example service following ``server``: (its URL, its pid)."""
    with workdir("example") as wd:
        port = free_port()
        env = {**_example_env(server, server.prefix, port), **(extra_env or {})}
        with serve([PYTHON, str(EXAMPLE)], port=port, cwd=wd, env=env) as proc:
            yield f"http://127.0.0.1:{port}", proc.pid


def _get(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def _bare_decode_rate(
    token: str, jwks_url: str, issuer: str, audience: str, seconds: float
) -> float:
    """jwt.decode of one token in a loop, key loaded once from the JWKS: decodes/s."""
    with urllib.request.urlopen(jwks_url, timeout=5) as resp:
        jwks = json.load(resp)
    wait_quiet()
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = jwt.PyJWK(jwk)
    alg = key.algorithm_name
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for _ in range(100):
            jwt.decode(token, key, algorithms=[alg], audience=audience, issuer=issuer)
        n += 100
        if time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - start)


def verify_section(rounds: int, duration: float) -> Section:
    hit: list[WrkResult] = []
    miss: list[WrkResult] = []
    off: list[WrkResult] = []
    bare: list[float] = []

    def load(url: str, script: str, env: dict[str, str]) -> WrkResult:
        return run_wrk(
            url + "/protected", connections=CONNECTIONS, duration=duration, script=script, env=env
        )

    for i in range(rounds):
        with tokend_server(SESSION_LIMITS_OFF) as server, workdir("verify") as wd:
            tokens = [
                b["access_token"] for b in asyncio.run(make_sessions(server.url, MISS_TOKENS))
            ]
            token = tokens[0]
            token_file = str(write_lines(wd / "tokens.txt", tokens))
            env = _example_env(server, server.prefix, 0)
            with example_service(server) as (url, _pid):
                assert _get(url + "/protected", token) == 200  # fetches the JWKS once
                hit.append(load(url, REQUEST_LUA, {"BEARER": token}))
            with example_service(server, {"TOKEND_VERIFY_CACHE_SIZE": str(MISS_CACHE)}) as (
                url,
                _pid,
            ):
                assert _get(url + "/protected", token) == 200
                miss.append(load(url, TOKENS_LUA, {"TOKEN_FILE": token_file}))
            with example_service(server, {"TOKEND_VERIFY_CACHE_SIZE": "0"}) as (url, _pid):
                assert _get(url + "/protected", token) == 200
                off.append(load(url, TOKENS_LUA, {"TOKEN_FILE": token_file}))
            for name, r in (
                ("one token (cache hits)", hit[-1]),
                (f"{MISS_TOKENS} tokens in turn (cache misses)", miss[-1]),
                (f"{MISS_TOKENS} tokens in turn, cache off", off[-1]),
            ):
                progress(
                    f"[verify] round {i + 1}/{rounds} example /protected, {name}: "
                    f"{r.rps:,.0f}/s p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms {r.bad()}"
                )
            rate = _bare_decode_rate(
                token,
                env["TOKEND_JWKS_URL"],
                env["TOKEND_ISSUER"],
                env["TOKEND_AUDIENCE"],
                duration,
            )
            bare.append(rate)
            progress(f"[verify] round {i + 1}/{rounds} bare jwt.decode: {rate:,.0f}/s")

    s = Section(f"3. Access-token verification at a subscriber ({duration:g} s x {rounds} rounds)")
    s.add(
        "The example service's `GET /protected` under wrk "
        f"({CONNECTIONS} connections; JWKS cached, deny-list check on every request, JSON "
        "answer), against `jwt.decode` of the same token in a loop in one process (key "
        "loaded once from the JWKS, same algorithm, issuer and audience checks). "
        "`TokenVerifier` remembers verified tokens (LRU, default 10,000) and re-checks only "
        'their time claims: "one token" is what a real client sends (the same access '
        f"token on every call), so after the first request every one is a cache hit; "
        f'"{MISS_TOKENS} tokens in turn" cycles through {MISS_TOKENS} sessions\' tokens '
        f"with the cache cut to {MISS_CACHE} (`TOKEND_VERIFY_CACHE_SIZE`), so every request "
        "is a miss (full signature check plus the cache's hashing and eviction); \"cache "
        'off" is the same load with `TOKEND_VERIFY_CACHE_SIZE=0`, the verifier as it was '
        "without a cache, so the two differ only by the cost of the cache on a miss.",
        "",
    )

    def row(name: str, results: list[WrkResult]) -> list[str]:
        ratio = median([r.rps / b for r, b in zip(results, bare, strict=True)])
        return [
            name,
            fmt([r.rps for r in results]),
            fmt([r.p50_ms for r in results], 2),
            fmt([r.p99_ms for r in results], 2),
            f"{min(r.ok_share for r in results):.1%}",
            f"{ratio:.0%}",
        ]

    s.table(
        ["measure", "per second", "p50 ms", "p99 ms", "2xx (worst round)", "of bare decode"],
        [
            row("example service GET /protected, one token (cache hits)", hit),
            row(
                f"example service GET /protected, {MISS_TOKENS} tokens in turn (cache misses)", miss
            ),
            row(f"example service GET /protected, {MISS_TOKENS} tokens in turn, cache off", off),
            ["bare PyJWT decode, in-process", fmt(bare), "-", "-", "-", "100%"],
        ],
    )
    ratio_hit = median([r.rps / b for r, b in zip(hit, bare, strict=True)])
    ratio_miss = median([r.rps / b for r, b in zip(miss, bare, strict=True)])
    s.target(
        "subscriber verification >= 80% of the bare PyJWT decode rate (a client's "
        "repeated token, served from the verified-token cache)",
        f"{ratio_hit:.0%} with cache hits; {ratio_miss:.0%} when every request misses",
        ratio_hit >= 0.8,
    )
    return s


async def _revoke_and_poll(
    server: Tokend, example: str, tokens: list[str], ats: dict[str, float]
) -> tuple[list[float], list[float], int, int]:
    """Log each token's session out and poll the example until it answers 401."""
    since_at: list[float] = []
    since_send: list[float] = []
    first_poll = 0
    errors = 0
    async with aiohttp.ClientSession() as http:
        for token in tokens:
            sid = jwt.decode(token, options={"verify_signature": False})["sid"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(example + "/protected", headers=headers) as resp:
                if resp.status != 200:
                    errors += 1
                    continue
            sent = time.time()
            async with http.post(server.url + "/auth/logout", headers=headers) as resp:
                if resp.status != 204:
                    errors += 1
                    continue
            polls = 0
            while True:
                polls += 1
                async with http.get(example + "/protected", headers=headers) as resp:
                    await resp.read()
                    if resp.status == 401:
                        rejected = time.time()
                        break
            first_poll += polls == 1
            for _ in range(200):
                if sid in ats:
                    break
                await asyncio.sleep(0.005)
            if sid in ats:
                since_at.append(rejected - ats[sid])
            since_send.append(rejected - sent)
    return since_at, since_send, first_poll, errors


async def _collect_ats(prefix: str, ats: dict[str, float], ready: asyncio.Event) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with client.pubsub() as pubsub:
            # every partition's stream has a pub/sub channel of its name
            await pubsub.subscribe(*(part.events for part in Keyspace(prefix).all))
            ready.set()
            async for message in pubsub.listen():
                if message["type"] == "message":
                    event = json.loads(message["data"])
                    if event.get("sid"):
                        ats[event["sid"]] = float(event["at"])
    finally:
        await client.aclose()


async def _propagation(
    server: Tokend, example: str, n: int
) -> tuple[list[float], list[float], int, int]:
    bodies = await make_sessions(server.url, n, concurrency=4)
    ats: dict[str, float] = {}
    ready = asyncio.Event()
    collector = asyncio.create_task(_collect_ats(server.prefix, ats, ready))
    await ready.wait()
    await asyncio.to_thread(wait_quiet)
    try:
        return await _revoke_and_poll(server, example, [b["access_token"] for b in bodies], ats)
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector


def _listener_histogram(example: str) -> str:
    """`at` → applied of live events, from the example service's own histogram."""
    with urllib.request.urlopen(example + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
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
        return "no live events in the example's histogram"
    n = float(count.group(1))
    within = ", ".join(
        f"{buckets[le] / n:.1%} within {le * 1000:g} ms"
        for le in (0.001, 0.0025, 0.005)
        if le in buckets
    )
    return f"mean {float(total.group(1)) / n * 1000:.2f} ms over {n:.0f} events; {within}"


async def _add_revocations(prefix: str, n: int) -> None:
    """``n`` session.revoked events in the stream, through tokend's own Lua scripts."""
    from service.redisconn import make_redis
    from service.sessions import SessionStore
    from service.settings import Settings
    from service.tokens import new_id
    from tokend_client.redis_target import RedisTarget

    redis = make_redis(RedisTarget(url=REDIS_URL), pool_size=32, pool_timeout=30)
    store = SessionStore.from_settings(redis, replace(Settings(), redis_prefix=prefix))
    now = time.time()
    sids = [new_id() for _ in range(n)]
    for i in range(0, n, 1000):
        chunk = sids[i : i + 1000]
        await asyncio.gather(
            *(
                store.create(sid=sid, uid=f"u{sid}", jti=new_id(), now=now, checked_at=now)
                for sid in chunk
            )
        )
        await asyncio.gather(
            *(
                store.revoke(sid=sid, now=now, reason="logout", owner=f"u{sid}", force=True)
                for sid in chunk
            )
        )
    await redis.aclose()


async def _mark_epoch(prefix: str) -> None:
    """Mark a fresh prefix as tokend does when it starts on a Redis (service/fence.py).

    The listener is not ready while tokend's layout marker ``<prefix>:partitions`` or a
    partition's epoch marker is missing (it cannot tell a new Redis from one that lost
    its data), and no tokend runs on the replay's prefix: without the markers every start
    below would wait forever.
    """
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(REDIS_URL)
    keys = Keyspace(prefix)
    try:
        await redis.set(keys.layout, len(keys.all), nx=True)
        for part in keys.all:
            await redis.set(part.epoch, 1, nx=True)
    finally:
        await redis.aclose()


def _start_to_ready(prefix: str, cwd: Path) -> float:
    """Seconds from starting the example service to its /healthz 200 (replay done)."""
    port = free_port()
    env = {**os.environ, **_example_env(None, prefix, port)}
    log = (cwd / "replay.log").open("ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([PYTHON, str(EXAMPLE)], cwd=cwd, env=env, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return time.perf_counter() - t0
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 60:
                    raise RuntimeError("example service did not become ready") from None
                time.sleep(0.002)
    finally:
        stop(proc)
        log.close()


async def _listener_replay(prefix: str) -> tuple[float, int]:
    """In-process: RevocationListener start → ready; (seconds, events applied)."""
    from tokend_client import RevocationListener

    listener = RevocationListener(REDIS_URL, prefix=prefix)
    t0 = time.perf_counter()
    await listener.start()
    await listener.wait_ready()
    elapsed = time.perf_counter() - t0
    applied = sum(listener.applied.values())
    await listener.close()
    return elapsed, applied


def revocation_section(rounds: int, revocations: int, events: int) -> Section:
    s = Section(
        f"4. Revocation propagation ({revocations:,} revocations) and replay of "
        f"{events:,} missed events ({rounds} rounds)"
    )
    with tokend_server(SESSION_LIMITS_OFF) as server, example_service(server) as (example, _pid):
        since_at, since_send, first_poll, errors = asyncio.run(
            _propagation(server, example, revocations)
        )
        listener = _listener_histogram(example)
    progress(
        f"[revocation] {len(since_send)} revocations: median "
        f"{median(since_send) * 1000:.2f} ms p99 {percentile(since_send, 99) * 1000:.2f} ms"
    )
    s.add(
        "Each session (one login each) is logged out at tokend (`POST /auth/logout`), then "
        "the example service is polled with its access token until it answers 401. "
        "`at → 401` runs from the event's `at` (tokend's clock when it revoked, read from the "
        "channel) to the 401's arrival; `logout sent → 401` includes the logout request.",
        "",
    )
    ms = [x * 1000 for x in since_at]
    ms_send = [x * 1000 for x in since_send]
    s.table(
        ["measure", "median ms", "p99 ms", "max ms", "n"],
        [
            [
                "revoked at tokend (`at`) → 401 at the example",
                f"{median(ms):.2f}",
                f"{percentile(ms, 99):.2f}",
                f"{max(ms):.2f}",
                len(ms),
            ],
            [
                "logout sent → 401 at the example",
                f"{median(ms_send):.2f}",
                f"{percentile(ms_send, 99):.2f}",
                f"{max(ms_send):.2f}",
                len(ms_send),
            ],
        ],
    )
    s.add(
        f"The first poll after the logout's 204 was already refused in {first_poll} of "
        f"{len(ms_send)} cases; {errors} logouts or polls failed. Inside the example service, "
        f"`at` → applied to its deny list (its own histogram): {listener}. The client-side "
        "figures are upper bounds: they include the rest of the logout's response and one "
        "`GET /protected` round trip.",
        "",
    )
    s.target(
        "propagation p99 < 5 ms on loopback",
        f"{percentile(ms, 99):.2f} ms",
        percentile(ms, 99) < 5.0,
    )

    cold_empty: list[float] = []
    cold_full: list[float] = []
    inproc: list[float] = []
    applied = 0
    for i in range(rounds):
        prefix = new_prefix("replay")
        try:
            # Before any listener starts on it: not ready while the epoch marker is missing.
            asyncio.run(_mark_epoch(prefix))
            with workdir("replay") as wd:
                cold_empty.append(_start_to_ready(prefix, wd))
                t0 = time.perf_counter()
                asyncio.run(_add_revocations(prefix, events))
                added = time.perf_counter() - t0
                cold_full.append(_start_to_ready(prefix, wd))
                seconds, applied = asyncio.run(_listener_replay(prefix))
                inproc.append(seconds)
        finally:
            cleanup_redis_prefix(prefix)
        progress(
            f"[replay] round {i + 1}/{rounds}: start→ready empty {cold_empty[-1]:.3f} s, "
            f"with {events} events {cold_full[-1]:.3f} s, in-process {seconds:.3f} s "
            f"({applied} applied; events written in {added:.1f} s)"
        )
    diff = [a - b for a, b in zip(cold_full, cold_empty, strict=True)]
    s.add(
        f"Replay: {events:,} `session.revoked` events are written to a fresh prefix's stream "
        "by tokend's own scripts while the example service is down; then the service is "
        "started and timed until `/healthz` answers 200 (the listener's replay is done), "
        "next to the same start on an empty stream, and to `RevocationListener` started "
        "in-process (no interpreter start).",
        "",
    )
    s.table(
        ["measure", "seconds"],
        [
            [f"start → ready, {events:,} missed events", fmt(cold_full, 3)],
            ["start → ready, empty stream", fmt(cold_empty, 3)],
            ["difference (the replay)", fmt(diff, 3)],
            [f"RevocationListener in-process start → ready ({applied:,} applied)", fmt(inproc, 3)],
        ],
    )
    s.target(
        f"{events:,} missed events replayed in < 0.5 s",
        f"{median(inproc):.3f} s in-process; service start→ready {median(cold_full):.3f} s "
        f"vs {median(cold_empty):.3f} s on an empty stream",
        median(inproc) < 0.5,
    )
    return s
