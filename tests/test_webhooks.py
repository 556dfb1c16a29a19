"""Signed webhooks (docs/webhooks.md): real Redis, real HTTP receivers on 127.0.0.1, the
worker in-process or as `tokend work` processes. Every delivery is verified with the
`standardwebhooks` package, as a receiver would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from service.devredis import free_port
from service.keyspace import Keyspace
from service.redisconn import close_redis, make_redis
from service.settings import Settings
from tests.conftest import FAST_ARGON2, TEST_KEK
from tests.support.http import LoopbackApp
from tests.support.poll import until
from workers.webhooks import WebhookWorker, backoff
from workers.webhooks_store import WebhookStore

TOKEND = Path(sys.executable).with_name("tokend")
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
pytestmark = pytest.mark.timeout(120)


class Receiver(LoopbackApp):
    """A webhook receiver on 127.0.0.1 that verifies every request; ``mode`` is ok, fail
    (HTTP 500), hang (never answers), or a callable deciding the status."""

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.mode: str = "ok"
        self.received: list[tuple[str, dict[str, Any], float]] = []  # id, event, when
        self.attempts: list[tuple[str, float]] = []
        self.bad: list[str] = []
        self.delay = 0.0
        self.retry_after: str | None = None
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        self.attempts.append((msg_id, time.time()))
        try:
            event = self.verifier.verify(body, dict(request.headers))
        except Exception as exc:  # any verification failure is recorded
            self.bad.append(f"{msg_id}: {exc!r}")
            return web.Response(status=400)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "fail":
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=500, text="broken", headers=headers)
        assert request.headers["Content-Type"].startswith("application/json")
        self.received.append((msg_id, event, time.time()))
        return web.Response(status=204)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.handle)

    @property
    def ids(self) -> set[str]:
        return {r[0] for r in self.received}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def hooks(*endpoints: tuple[str, str], **extra: Any) -> str:
    return json.dumps([{"id": i, "url": u, "secret": SECRET, **extra} for i, u in endpoints])


def env_for(settings_env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    return {**base, **FAST_ARGON2, **settings_env}


@pytest.fixture
def work_env(
    redis_env: dict[str, str], redis_prefix: str, migrated_sqlite: str
) -> Callable[..., dict[str, str]]:
    def make(**env: str) -> dict[str, str]:
        return env_for(
            {
                **redis_env,
                "TOKEND_REDIS_PREFIX": redis_prefix,
                "TOKEND_DATABASE_URL": migrated_sqlite,
                "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
                **env,
            }
        )

    return make


class Worker:
    """A WebhookWorker running in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = make_redis(settings.redis, pool_size=32, pool_timeout=5.0)
        self.worker = WebhookWorker(redis=self.redis, settings=settings)
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        await self.worker.close()
        await asyncio.wait_for(self.task, 15)
        await close_redis(self.redis)


def metric(worker: Worker, name: str, endpoint: str) -> float:
    """A sample of the worker's /metrics text (0 when absent)."""
    text = worker.worker.metrics.render().decode()
    found = re.search(rf'^{name}{{endpoint="{re.escape(endpoint)}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def status(settings: Settings, endpoint: str) -> dict[str, Any]:
    redis = make_redis(settings.redis, pool_size=2, pool_timeout=5.0)
    try:
        store = WebhookStore(redis, Keyspace(settings.redis_prefix, settings.redis_partitions))
        ep = next(e for e in settings.webhooks if e.id == endpoint)
        return await store.status(ep, time.time())
    finally:
        await close_redis(redis)


async def wait_positions(settings: Settings, endpoint: str) -> None:
    """Until the deliverers have taken their start positions (events before are not theirs)."""

    async def ready() -> bool:
        s = await status(settings, endpoint)
        return all(p["position"] is not None for p in s["partitions"])

    await until(ready, 20, "every partition's start position")


async def emit_many(emit: Any, n: int, start: int = 0) -> dict[str, float]:
    """n session.revoked events spread over the partitions; their sids and times."""
    sent = {}
    for i in range(start, start + n):
        at = time.time()
        await emit("session.revoked", sub=f"user-{i}", sid=f"sid-{i}", reason="logout", at=at)
        sent[f"sid-{i}"] = at
    return sent


def start_work(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([str(TOKEND), "work"], env=env, stdout=out, stderr=out)


def stop_work(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- in-process -------------------------------------------------------------------------


async def test_a_receiver_down_while_100_revocations_happen_gets_all_of_them(
    receiver: Receiver, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("down", receiver.url)),
        TOKEND_WEBHOOK_BACKOFF="0.05",
        TOKEND_WEBHOOK_MAX_ATTEMPTS="30",
        TOKEND_WEBHOOK_TIMEOUT="1",
    )
    worker = Worker(settings)
    try:
        await wait_positions(settings, "down")
        await receiver.stop()
        down_at = time.monotonic()
        sent = await emit_many(emit_revocation, 100)

        async def failing() -> bool:
            return (await status(settings, "down"))["failed"] > 0

        await until(failing, 10, "failed attempts while the receiver is down")
        await until(lambda: metric(worker, "tokend_webhook_lag_seconds", "down") > 0, 10, "lag")
        assert metric(worker, "tokend_webhook_failed_attempts_total", "down") > 0
        # down for 30 s, every revocation written while it was (the backoff has grown
        # to seconds by then: the next attempt after it returns comes within one of them)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert receiver.received == []
        await receiver.start()
        await until(lambda: {e["sid"] for _, e, _ in receiver.received} >= set(sent), 90, "all 100")
        assert receiver.bad == []
        s = await status(settings, "down")
        assert (s["dead"], s["lost"]) == (0, 0)
        assert metric(worker, "tokend_webhook_delivered_total", "down") >= 100
        await until(lambda: metric(worker, "tokend_webhook_lag_seconds", "down") == 0, 10, "no lag")
        # one webhook-id per event, each received at least once
        assert len(receiver.ids) == 100
        for msg_id, event, _ in receiver.received:
            assert msg_id.startswith("down:")
            assert event["type"] == "session.revoked" and event["v"] == 1 and "id" not in event
        # latency once the receiver is up: event time to receipt
        before = len(receiver.received)
        fresh = await emit_many(emit_revocation, 20, start=1000)
        await until(lambda: len(receiver.received) >= before + 20, 20, "20 fresh events")
        got = {e["sid"]: when for _, e, when in receiver.received[before:]}
        latencies = sorted(got[sid] - at for sid, at in fresh.items())
        print(f"\ndelivery latency: median {latencies[10]:.3f}s, max {latencies[-1]:.3f}s")
        assert latencies[-1] < 2.0
    finally:
        await worker.stop()


async def test_a_receiver_that_never_answers_does_not_delay_another_endpoint(
    make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    stuck, fine = Receiver(), Receiver()
    stuck.mode = "hang"
    await stuck.start()
    await fine.start()
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("stuck", stuck.url), ("fine", fine.url)),
        TOKEND_WEBHOOK_TIMEOUT="2",
        TOKEND_WEBHOOK_BACKOFF="0.05",
    )
    worker = Worker(settings)
    try:
        await wait_positions(settings, "stuck")
        await wait_positions(settings, "fine")
        sent = await emit_many(emit_revocation, 30)
        await until(lambda: len(fine.ids) >= 30, 20, "the healthy endpoint's 30 events")
        got = {e["sid"]: when for _, e, when in fine.received}
        worst = max(got[sid] - at for sid, at in sent.items())
        assert worst < 2.0, worst  # below the timeout the stuck endpoint waits for
        assert stuck.attempts  # it was tried, and is still hanging
        assert stuck.received == []
    finally:
        await worker.stop()
        await stuck.stop()
        await fine.stop()


async def test_max_attempts_make_a_dead_letter_and_retry_redelivers_it(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    work_env: Callable[..., dict[str, str]],
    emit_revocation: Any,
    tmp_path: Path,
) -> None:
    receiver.mode = "fail"
    spec = hooks(("dl", receiver.url))
    settings = make_settings(
        TOKEND_WEBHOOKS=spec, TOKEND_WEBHOOK_MAX_ATTEMPTS="3", TOKEND_WEBHOOK_BACKOFF="0.02"
    )
    worker = Worker(settings)
    try:
        await wait_positions(settings, "dl")
        await emit_many(emit_revocation, 2)

        async def dead() -> bool:
            return (await status(settings, "dl"))["dead"] == 2

        await until(dead, 20, "two dead letters")
        assert Counter(i for i, _ in receiver.attempts).most_common()[0][1] == 3
        assert len(receiver.attempts) == 6
        s = await status(settings, "dl")
        assert s["failed"] == 6 and s["pending"] == 0
        assert any("HTTP 500" in (p["error"] or "") for p in s["partitions"])
        # a later event is not held up by them
        receiver.mode = "ok"
        await emit_many(emit_revocation, 1, start=50)
        await until(lambda: len(receiver.ids) == 1, 20, "the next event")
    finally:
        await worker.stop()
    first_ids = {i for i, _ in receiver.attempts[:6]}
    env = work_env(TOKEND_WEBHOOKS=spec)
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "webhooks", "retry", "dl", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert (report["redelivered"], report["failed"]) == (2, 0)
    assert first_ids <= receiver.ids  # the same webhook-ids as the failed attempts
    assert (await status(settings, "dl"))["dead"] == 0
    assert receiver.bad == []
    # an unknown endpoint: one line
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "webhooks", "retry", "nope", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and len(err.decode().splitlines()) == 1, err.decode()


async def test_retry_after_is_honoured(
    receiver: Receiver, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    receiver.mode = "fail"
    receiver.retry_after = "1"
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("ra", receiver.url)), TOKEND_WEBHOOK_BACKOFF="0.01"
    )
    worker = Worker(settings)
    try:
        await wait_positions(settings, "ra")
        await emit_many(emit_revocation, 1)
        await until(lambda: len(receiver.attempts) >= 2, 20, "a second attempt")
        gap = receiver.attempts[1][1] - receiver.attempts[0][1]
        assert gap >= 0.95, gap  # not the 0.01 s backoff
        assert receiver.attempts[0][0] == receiver.attempts[1][0]  # same webhook-id
    finally:
        await worker.stop()
    assert 0.5 <= backoff(1, 1.0) <= 1.0 and 4.0 <= backoff(4, 1.0) <= 8.0
    assert backoff(30, 1.0) <= 300 and backoff(2, 1.0, retry_after=7) == 7


async def test_events_trimmed_before_delivery_are_reported_lost(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    work_env: Callable[..., dict[str, str]],
    emit_revocation: Any,
    redis_client: Any,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    spec = hooks(("lossy", receiver.url))
    settings = make_settings(TOKEND_WEBHOOKS=spec)
    worker = Worker(settings)
    await wait_positions(settings, "lossy")
    await worker.stop()
    # while no worker runs, 5 events of partition 0 pass out of the retention
    for i in range(5):
        await emit_revocation("session.revoked", sid=f"old-{i}", partition=0)
    events = Keyspace(redis_prefix).partition(0).events
    await redis_client.xtrim(events, minid=f"{int(time.time() * 1000) + 1}-0", approximate=False)
    assert await redis_client.xlen(events) == 0
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "webhooks", "status", env=work_env(TOKEND_WEBHOOKS=spec), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    line = json.loads(out)
    assert line["endpoint"] == "lossy" and line["lost"] == 5
    assert line["partitions"][0]["lost"] == 5 and line["partitions"][1]["lost"] == 0
    assert "lossy lost 5 events" in err.decode()
    # the deliverer notices, says so in its metrics, and goes on with what follows
    worker = Worker(settings)
    try:
        await emit_revocation("session.revoked", sid="after", partition=0)
        await until(lambda: "after" in {e["sid"] for _, e, _ in receiver.received}, 20, "after")
        await until(
            lambda: (
                b'tokend_webhook_lost_partitions{endpoint="lossy"} 1.0'
                in worker.worker.metrics.render()
            ),
            10,
            "the lost gauge",
        )
        text = worker.worker.metrics.render().decode()
        assert 'tokend_webhook_lost_events_total{endpoint="lossy"} 5.0' in text
        assert 'tokend_webhook_delivered_total{endpoint="lossy"} 1.0' in text
        assert (await status(settings, "lossy"))["lost"] == 5  # marked, not counted twice
    finally:
        await worker.stop()


async def test_real_revocations_are_delivered_and_kept_for_the_webhook_retention(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    redis_client: Any,
    redis_prefix: str,
) -> None:
    from service.sessions import SessionStore

    uid = "user-real"
    stream = Keyspace(redis_prefix).of(uid).events
    for spec, kept in ((hooks(("real", receiver.url)), True), ("", False)):
        settings = make_settings(TOKEND_WEBHOOKS=spec)
        redis = make_redis(settings.redis, pool_size=4, pool_timeout=5.0)
        try:
            store = SessionStore.from_settings(redis, settings)
            await redis_client.delete(stream)
            # an entry an hour old: past the access-token retention, within the webhooks'
            old = f"{int((time.time() - 3600) * 1000)}-0"
            await redis_client.xadd(stream, {"event": "{}"}, id=old)
            now = time.time()
            await store.create(sid="s-old", uid=uid, jti="j", now=now, checked_at=now)
            assert await store.revoke(sid="s-old", now=now, reason="logout", owner=uid)
            ids = [e[0] for e in await redis_client.xrange(stream)]
            assert (old in ids) is kept, (spec, ids)
        finally:
            await close_redis(redis)
    settings = make_settings(TOKEND_WEBHOOKS=hooks(("real", receiver.url)))
    worker = Worker(settings)
    redis = make_redis(settings.redis, pool_size=4, pool_timeout=5.0)
    try:
        await wait_positions(settings, "real")
        store = SessionStore.from_settings(redis, settings)
        for i in range(10):
            now = time.time()
            await store.create(sid=f"s{i}", uid=uid, jti=f"j{i}", now=now, checked_at=now)
            await store.revoke(sid=f"s{i}", now=now, reason="logout", owner=uid)
        await until(lambda: len(receiver.ids) == 10, 20, "ten revocations")
        # one user, one partition: in the order they happened
        assert [e["sid"] for _, e, _ in receiver.received] == [f"s{i}" for i in range(10)]
        assert all(e["reason"] == "logout" and e["sub"] == uid for _, e, _ in receiver.received)
    finally:
        await close_redis(redis)
        await worker.stop()


async def test_a_writer_keeps_the_retention_a_deliverer_advertised(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    redis_client: Any,
    redis_prefix: str,
) -> None:
    """The stream is trimmed by the process that writes an event (XADD MINID), not by
    the worker; the worker advertises the retention its endpoints need (P:retention), so
    an API started without TOKEND_WEBHOOKS keeps an undelivered hour-old event too. Only
    with no advertisement (no deliverer ran) does such an API trim it, and the worker
    then reports it lost (service/retention.py, docs/webhooks.md)."""
    from service.sessions import SessionStore

    uid = "user-writer"
    part = Keyspace(redis_prefix).of(uid)
    retention_key = Keyspace(redis_prefix).retention
    cases = (
        ("unadvertised", {}, True, 1),
        ("advertised", {}, False, 0),
        ("configured", None, True, 0),
    )
    for endpoint, api_env, forget, lost in cases:
        spec = hooks((endpoint, receiver.url))
        settings = make_settings(TOKEND_WEBHOOKS=spec)
        api = make_settings(**(api_env if api_env is not None else {"TOKEND_WEBHOOKS": spec}))
        await redis_client.delete(part.events)
        worker = Worker(settings)  # takes its start positions at the (empty) streams' ends
        await wait_positions(settings, endpoint)
        await worker.stop()
        advertised = await redis_client.get(retention_key)
        assert advertised is not None and int(advertised) == settings.stream_retention
        if forget:  # as if no deliverer had ever run
            await redis_client.delete(retention_key)
        # an event the endpoint has not received yet, an hour old (the receiver was down)
        hour_ago = time.time() - 3600
        old = {
            "v": 1,
            "type": "session.revoked",
            "sub": uid,
            "sid": f"{endpoint}-old",
            "jti": None,
            "reason": "logout",
            "at": hour_ago,
            "until": hour_ago + 960,
        }
        await redis_client.xadd(
            part.events, {"event": json.dumps(old)}, id=f"{int(hour_ago * 1000)}-0"
        )
        # the API writes the next revocation of that partition, trimming as it was set up
        redis = make_redis(api.redis, pool_size=4, pool_timeout=5.0)
        try:
            store = SessionStore.from_settings(redis, api)
            now = time.time()
            new_sid = f"{endpoint}-new"
            await store.create(sid=new_sid, uid=uid, jti="j", now=now, checked_at=now)
            assert await store.revoke(sid=new_sid, now=now, reason="logout", owner=uid)
        finally:
            await close_redis(redis)
        worker = Worker(settings)
        try:
            await until(
                lambda sid=new_sid: sid in {e["sid"] for _, e, _ in receiver.received}, 20, new_sid
            )
            got = {e["sid"] for _, e, _ in receiver.received}
            assert (f"{endpoint}-old" in got) is (not lost), (endpoint, got)
            s = await status(settings, endpoint)
            assert s["lost"] == lost and s["partitions"][part.index]["lost"] == lost, s
        finally:
            await worker.stop()


async def test_an_endpoint_gets_only_its_event_types_and_passes_the_others(
    receiver: Receiver, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("users", receiver.url), events=["user.revoked"])
    )
    worker = Worker(settings)
    try:
        await wait_positions(settings, "users")
        for i in range(5):
            await emit_revocation("session.revoked", sub="u", sid=f"s{i}")
            await emit_revocation("key.rotated", partition=0)
        await emit_revocation("user.revoked", sub="u", reason="logout_all")
        await until(lambda: len(receiver.received) == 1, 20, "the user.revoked event")
        assert receiver.received[0][1]["type"] == "user.revoked"

        async def passed() -> bool:
            return (await status(settings, "users"))["pending"] == 0

        await until(passed, 10, "the other events passed")  # nothing left behind
        assert len(receiver.received) == 1
    finally:
        await worker.stop()


class PollingWorker:
    """A WebhookWorker with its own idle poll interval, running in this process."""

    def __init__(self, settings: Settings, poll_interval: float) -> None:
        self.redis = make_redis(settings.redis, pool_size=8, pool_timeout=5.0)
        self.worker = WebhookWorker(
            redis=self.redis, settings=settings, poll_interval=poll_interval
        )
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        await self.worker.close()
        await asyncio.wait_for(self.task, 15)
        await close_redis(self.redis)


@pytest.mark.redis_modes()  # cluster: subscribed at one node, published at another
async def test_an_idle_deliverer_is_woken_by_the_event_not_by_its_poll(
    receiver: Receiver, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    settings = make_settings(TOKEND_WEBHOOKS=hooks(("prompt", receiver.url)))
    worker = PollingWorker(settings, poll_interval=30)
    try:
        await wait_positions(settings, "prompt")
        await until(lambda: worker.worker.wakeups.subscriptions >= 1, 10, "the subscription")
        # Idle, each pair's wait doubles from 0.05 s: after 6.5 s it is in a wait of 6.4 s
        # that began at 6.35 s. A deliverer that only polled would send the event at
        # 12.75 s, six seconds after it was written; the bound below is a third of that.
        await asyncio.sleep(6.5)
        written = time.time()
        await emit_revocation("session.revoked", sub="u-prompt", sid="s-prompt")
        await until(lambda: len(receiver.received) == 1, 20, "the event")
        delay = receiver.received[0][2] - written
        assert delay < 2.0, f"sent {delay:.2f}s after it was written: not woken"
        assert worker.worker.wakeups.messages >= 1
    finally:
        await worker.stop()


async def test_an_event_whose_wake_up_is_missed_is_sent_at_the_next_poll(
    receiver: Receiver, make_settings: Callable[..., Settings], redis_client: Any
) -> None:
    settings = make_settings(TOKEND_WEBHOOKS=hooks(("backstop", receiver.url)))
    worker = PollingWorker(settings, poll_interval=0.5)
    try:
        await wait_positions(settings, "backstop")
        now = time.time()
        event = {"type": "session.revoked", "sub": "u-quiet", "sid": "s-quiet", "jti": None,
                 "reason": "test", "at": now, "until": now + 960, "v": 1}  # fmt: skip
        part = Keyspace(settings.redis_prefix, settings.redis_partitions).of("u-quiet")
        # appended without its PUBLISH: no wake-up comes
        await redis_client.xadd(part.events, {"event": json.dumps(event)})
        await until(lambda: len(receiver.received) == 1, 20, "the event, by the poll")
        assert receiver.received[0][1]["sid"] == "s-quiet"
    finally:
        await worker.stop()


# -- `tokend work` processes --------------------------------------------------------------


async def test_a_worker_killed_mid_delivery_and_restarted_loses_nothing(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    work_env: Callable[..., dict[str, str]],
    emit_revocation: Any,
    tmp_path: Path,
) -> None:
    receiver.delay = 0.02  # slow enough to be killed in the middle
    spec = hooks(("crash", receiver.url))
    env = work_env(TOKEND_WEBHOOKS=spec, TOKEND_WEBHOOK_TIMEOUT="1")
    settings = make_settings(TOKEND_WEBHOOKS=spec)
    proc = start_work(env, tmp_path / "work.log")
    try:
        await wait_positions(settings, "crash")
        sent = await emit_many(emit_revocation, 100)
        await until(lambda: len(receiver.received) >= 20, 30, "the first deliveries")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        killed_at = len(receiver.ids)
        assert killed_at < 100, "killed too late to test anything"
        proc = start_work(env, tmp_path / "work.log")
        await until(lambda: {e["sid"] for _, e, _ in receiver.received} >= set(sent), 90, "all 100")
        assert receiver.bad == []

        async def settled() -> bool:
            return (await status(settings, "crash"))["pending"] == 0

        await until(settled, 20, "every position at the end")
        dups = len(receiver.received) - len(receiver.ids)
        print(f"\nkilled after {killed_at} of 100; duplicates after restart: {dups}")
        assert dups <= 16  # at most the one in flight per partition
    finally:
        stop_work(proc)


async def test_two_worker_processes_deliver_everything_with_few_duplicates(
    receiver: Receiver,
    make_settings: Callable[..., Settings],
    work_env: Callable[..., dict[str, str]],
    emit_revocation: Any,
    tmp_path: Path,
) -> None:
    """Both run; the one holding the leases stops halfway (SIGTERM) and the other one
    takes over every partition."""
    receiver.delay = 0.01
    spec = hooks(("pair", receiver.url))
    env = work_env(TOKEND_WEBHOOKS=spec, TOKEND_WEBHOOK_TIMEOUT="1")
    settings = make_settings(TOKEND_WEBHOOKS=spec)
    first = start_work(env, tmp_path / "work0.log")
    procs = [first]
    try:
        await wait_positions(settings, "pair")  # the first holds every lease

        async def holders() -> set[str]:
            parts = (await status(settings, "pair"))["partitions"]
            return {p["holder"].split(":")[0] for p in parts if p["holder"]}

        await until(lambda: _len_is(holders(), 1), 20, "the first worker's leases")
        before = await holders()
        procs.append(start_work(env, tmp_path / "work1.log"))
        sent = await emit_many(emit_revocation, 200)
        await until(lambda: len(receiver.received) >= 50, 30, "the first 50")
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.wait, 20)  # the receivers keep answering meanwhile
        assert first.returncode == 0
        await until(lambda: {e["sid"] for _, e, _ in receiver.received} >= set(sent), 60, "all 200")
        after = await holders()
        assert after and not after & before  # the second one took every partition over

        async def settled() -> bool:  # every position past the last event: none in flight
            return (await status(settings, "pair"))["pending"] == 0

        await until(settled, 20, "every position at the end")
        dups = len(receiver.received) - len(receiver.ids)
        print(f"\ntwo workers, hand-over halfway: 200 events, {dups} duplicates")
        assert receiver.bad == []
        assert dups <= 4
    finally:
        for proc in procs:
            stop_work(proc)


async def _len_is(values: Awaitable[set[str]], n: int) -> bool:
    return len(await values) == n


async def test_a_bad_webhooks_entry_stops_start_up_with_one_line(
    work_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    bad = json.dumps([{"url": "http://127.0.0.1:1/h", "secret": "not-whsec"}])
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND), "work", env=work_env(TOKEND_WEBHOOKS=bad), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err.decode()
    assert lines[0].startswith("tokend: TOKEND_WEBHOOKS: ") and "secret" in lines[0]
    assert "Traceback" not in err.decode()
