"""Webhook delivery latency: an event written → its POST at the receiver.

    .venv/bin/python -m bench webhooks [--quick] [--out FILE]

One ``WebhookWorker`` in this process delivers to a local receiver (aiohttp on
127.0.0.1, no signature check: the same for both sides) from the Redis at
$TOKEND_REDIS_URL, under a fresh prefix. Each event is written the way tokend writes it
(one script: XADD to the partition's stream, PUBLISH on its channel), then waited for;
the next follows after a pause, so the deliverer is idle each time, as it is between
revocations in production. Two sides, in alternating rounds of the same run:

- woken: as shipped, the deliverer wakes on the channel's message (poll backstop 1 s);
- baseline: poll only, the idle poll doubling up to 0.25 s (how it delivered before the
  wake-ups).

The figure is written → received, on one clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass, field

from aiohttp import web

from bench.harness import cleanup_redis_prefix, median, new_prefix, percentile
from bench.report import Section, progress
from service.keyspace import Keyspace
from service.redisconn import close_redis, make_redis
from service.settings import Settings
from workers.webhooks import WebhookWorker

SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-32-bytes!!").decode()
# the script tokend's writes end with (service/lua/common.lua: XADD, then PUBLISH)
EMIT = """
local id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return id
"""
SIDES = (("woken", True, 1.0), ("baseline", False, 0.25))  # name, wake-ups, idle poll cap


@dataclass
class Side:
    name: str
    ms: list[float] = field(default_factory=list)


async def _round(wake: bool, poll: float, events: int, gap: float) -> list[float]:
    got: dict[str, float] = {}

    async def receive(request: web.Request) -> web.Response:
        got[json.loads(await request.read())["sid"]] = time.time()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    prefix = new_prefix("webhooks")
    url = f"http://127.0.0.1:{port}/hook"
    settings = Settings.from_env(
        {
            **os.environ,
            "TOKEND_REDIS_PREFIX": prefix,
            "TOKEND_WEBHOOKS": json.dumps([{"id": "bench", "url": url, "secret": SECRET}]),
        }
    )
    redis = make_redis(settings.redis, pool_size=8, pool_timeout=5.0)
    worker = WebhookWorker(redis=redis, settings=settings, poll_interval=poll, wake=wake)
    task = asyncio.create_task(worker.run())
    keys = Keyspace(prefix, settings.redis_partitions)
    out: list[float] = []
    try:
        await asyncio.sleep(2.0)  # the deliverers have taken their start positions
        for i in range(events):
            now = time.time()
            event = {"type": "session.revoked", "sub": f"u{i}", "sid": f"s{i}", "jti": None,
                     "reason": "bench", "at": now, "until": now + 900, "v": 1}  # fmt: skip
            written = time.time()
            await redis.eval(EMIT, 1, keys.of(f"u{i}").events, json.dumps(event))  # type: ignore[misc]
            deadline = time.monotonic() + 10
            while f"s{i}" not in got and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            if f"s{i}" in got:
                out.append((got[f"s{i}"] - written) * 1000)
            await asyncio.sleep(gap)
    finally:
        await worker.close()
        await task
        await close_redis(redis)
        await runner.cleanup()
        cleanup_redis_prefix(prefix)
    return out


def webhooks_section(quick: bool) -> Section:
    rounds, events, gap = (2, 20, 0.3) if quick else (4, 40, 0.4)
    sides = {name: Side(name) for name, _, _ in SIDES}
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for name, wake, poll in order:
            ms = asyncio.run(_round(wake, poll, events, gap))
            sides[name].ms.extend(ms)
            progress(f"[webhooks] round {r + 1} {name}: {len(ms)} sent, p50 {median(ms):.1f} ms")
    s = Section(
        f"Webhook delivery: event written → POST received ({rounds} rounds of {events} events, "
        f"{gap} s apart, sides alternated)"
    )
    rows = []
    for name, _, _ in SIDES:
        ms = sides[name].ms
        rows.append(
            [
                "woken by the channel (poll backstop 1 s)" if name == "woken" else
                "baseline: poll only, up to 0.25 s when idle",
                len(ms),
                f"{median(ms):.1f}",
                f"{percentile(ms, 99):.1f}",
                f"{max(ms):.1f}" if ms else "-",
            ]
        )  # fmt: skip
    s.table(["deliverer", "events", "p50 ms", "p99 ms", "max ms"], rows)
    woken, base = median(sides["woken"].ms), median(sides["baseline"].ms)
    s.add(f"Median ratio baseline / woken: {base / woken:.0f}x.")
    return s
