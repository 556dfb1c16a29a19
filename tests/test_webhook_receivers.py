"""A webhook receiver cannot mislead or stall delivery (workers/webhooks_store.py post():
no redirects, a total timeout, a capped read): each case through the real WebhookWorker
against a real aiohttp receiver on 127.0.0.1, every request's signature verified with
`standardwebhooks`, as in tests/test_webhooks.py (whose helpers these reuse)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from service.devredis import free_port
from service.settings import Settings
from tests.support.http import LoopbackApp
from tests.support.poll import until
from tests.test_webhooks import SECRET, Worker, emit_many, hooks, status, wait_positions

pytestmark = pytest.mark.timeout(60)

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Misbehaving(LoopbackApp):
    """A receiver on 127.0.0.1: POST /hook verifies the request and then answers as
    ``behaviour`` says (None: 204, delivered); every other path (/target, any method)
    records the request it got and answers 204."""

    def __init__(self) -> None:
        self.verifier = Webhook(SECRET)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/hook"
        self.behaviour: Behaviour | None = None
        self.attempts: list[tuple[str, float]] = []  # webhook-id, when
        self.delivered: list[str] = []  # webhook-ids answered 204
        self.elsewhere: list[str] = []  # "METHOD /path" of requests not to /hook
        self.bad: list[str] = []
        self._runner: web.AppRunner | None = None

    async def hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        self.attempts.append((msg_id, time.monotonic()))
        try:
            self.verifier.verify(body, dict(request.headers))
        except Exception as exc:  # any verification failure is recorded
            self.bad.append(f"{msg_id}: {exc!r}")
            return web.Response(status=400)
        if self.behaviour is not None:
            return await self.behaviour(request)
        self.delivered.append(msg_id)
        return web.Response(status=204)

    async def other(self, request: web.Request) -> web.Response:
        await request.read()
        self.elsewhere.append(f"{request.method} {request.path}")
        return web.Response(status=204)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.hook)
        app.router.add_route("*", "/{tail:.*}", self.other)


@pytest.fixture
async def receiver() -> AsyncIterator[Misbehaving]:
    r = Misbehaving()
    await r.start()
    yield r
    await r.stop()
    assert r.bad == [], r.bad


async def started(settings: Settings, endpoint: str) -> tuple[Worker, dict[int, str]]:
    """A worker, once its deliverers have their start positions; those positions."""
    worker = Worker(settings)
    await wait_positions(settings, endpoint)
    s = await status(settings, endpoint)
    return worker, {p["partition"]: p["position"] for p in s["partitions"]}


async def failed_attempts(settings: Settings, endpoint: str, n: int) -> dict[str, Any]:
    """The endpoint's status once ``n`` failed attempts are recorded."""

    async def enough() -> bool:
        return bool((await status(settings, endpoint))["failed"] >= n)

    await until(enough, 10, f"{n} failed attempt(s)")
    return await status(settings, endpoint)


def not_advanced(s: dict[str, Any], start: dict[int, str]) -> None:
    """The one event emitted is still pending: no position moved."""
    assert {p["partition"]: p["position"] for p in s["partitions"]} == start
    assert s["pending"] == 1 and s["dead"] == 0, s


@pytest.mark.parametrize("code", [302, 307])
async def test_a_redirect_is_not_followed_and_the_event_is_retried(
    code: int,
    receiver: Misbehaving,
    make_settings: Callable[..., Settings],
    emit_revocation: Any,
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": f"{receiver.base}/target"})

    receiver.behaviour = redirect
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("redir", receiver.url)),
        TOKEND_WEBHOOK_BACKOFF="0.05",
        TOKEND_WEBHOOK_MAX_ATTEMPTS="50",
    )
    worker, start = await started(settings, "redir")
    try:
        await emit_many(emit_revocation, 1)
        s = await failed_attempts(settings, "redir", 2)
        # a followed redirect would have reached /target (204 there: "delivered")
        assert receiver.elsewhere == []
        assert receiver.delivered == []
        not_advanced(s, start)
        assert any(f"HTTP {code}" in (p["error"] or "") for p in s["partitions"]), s
        ids = {i for i, _ in receiver.attempts}
        assert len(receiver.attempts) >= 2 and len(ids) == 1  # retried, same webhook-id
        # once the receiver answers 2xx itself, the event is delivered
        receiver.behaviour = None
        await until(lambda: receiver.delivered == list(ids), 10, "the delivery")
        await until(lambda: _pending_is(settings, "redir", 0), 10, "the position advanced")
        assert receiver.elsewhere == []
    finally:
        await worker.stop()


async def test_a_huge_error_body_is_not_read_and_the_attempt_fails_at_once(
    receiver: Misbehaving, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    """500 and a body the receiver keeps writing (up to 2 GiB): the worker reads 1 KiB,
    drops the connection and counts a failure, long before its timeout."""
    chunk = b"x" * 65536
    written: list[int] = []  # bytes each answer got out before the worker hung up
    ended: list[float] = []  # seconds each answer lasted

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=500)
        resp.content_type = "text/plain"
        await resp.prepare(request)
        sent, began = 0, time.monotonic()
        try:
            while sent < 2**31 and time.monotonic() - began < 10:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):  # the client closed the connection
            pass
        finally:
            written.append(sent)
            ended.append(time.monotonic() - began)
        return resp

    receiver.behaviour = flood
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("flood", receiver.url)),
        TOKEND_WEBHOOK_TIMEOUT="3",
        TOKEND_WEBHOOK_BACKOFF="0.05",
        TOKEND_WEBHOOK_MAX_ATTEMPTS="50",
    )
    worker, start = await started(settings, "flood")
    try:
        began = time.monotonic()
        await emit_many(emit_revocation, 1)
        s = await failed_attempts(settings, "flood", 1)
        took = time.monotonic() - began
        not_advanced(s, start)
        error = next(p["error"] for p in s["partitions"] if p["error"])
        assert error.startswith("HTTP 500: xxxx"), error  # from the body's first bytes
        assert len(error) <= 250  # a snippet, not the body
        assert took < 1.5, took  # far inside the 3 s timeout: not read to its end
        await until(lambda: len(written) >= 1, 5, "the receiver saw the worker hang up")
        print(f"\nfirst 500 answer: {written[0] / 2**20:.1f} MiB out in {ended[0]:.2f}s")
        assert ended[0] < 1.5, ended  # the worker closed the connection at once
        # what got out is only what the sockets' buffers hold, not a 3 s flood
        assert written[0] < 64 * 2**20, written
    finally:
        await worker.stop()


async def test_a_receiver_trickling_slower_than_the_timeout_fails_then_a_good_answer_delivers(
    receiver: Misbehaving, make_settings: Callable[..., Settings], emit_revocation: Any
) -> None:
    """200 and its body a byte every 0.2 s for 3 s: past TOKEND_WEBHOOK_TIMEOUT (1 s)
    for the whole exchange, so a failure however steadily bytes come."""
    lasted: list[float] = []

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200)
        resp.content_type = "text/plain"
        await resp.prepare(request)
        began = time.monotonic()
        try:
            for _ in range(15):
                await resp.write(b".")
                await asyncio.sleep(0.2)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            lasted.append(time.monotonic() - began)
        return resp

    receiver.behaviour = trickle
    settings = make_settings(
        TOKEND_WEBHOOKS=hooks(("slow", receiver.url)),
        TOKEND_WEBHOOK_TIMEOUT="1",
        TOKEND_WEBHOOK_BACKOFF="0.05",
        TOKEND_WEBHOOK_MAX_ATTEMPTS="50",
    )
    worker, start = await started(settings, "slow")
    try:
        began = time.monotonic()
        await emit_many(emit_revocation, 1)
        s = await failed_attempts(settings, "slow", 1)
        took = time.monotonic() - began
        not_advanced(s, start)
        error = next(p["error"] for p in s["partitions"] if p["error"])
        assert error == "timed out after 1s", error
        assert 0.9 <= took < 2.0, took  # at the timeout, not at the trickle's end (3 s)
        assert receiver.delivered == []
        # the receiver recovers: the retry (same webhook-id) is delivered
        receiver.behaviour = None
        await until(lambda: len(receiver.delivered) == 1, 10, "the delivery")
        assert {i for i, _ in receiver.attempts} == set(receiver.delivered)
        await until(lambda: _pending_is(settings, "slow", 0), 10, "the position advanced")
        s = await status(settings, "slow")
        assert s["failed"] >= 1 and s["dead"] == 0
        # the worker hung up the trickling answers at its timeout
        await until(lambda: len(lasted) >= 1, 5, "the trickle's end")
        assert lasted[0] < 2.0, lasted
    finally:
        await worker.stop()


async def _pending_is(settings: Settings, endpoint: str, n: int) -> bool:
    return bool((await status(settings, endpoint))["pending"] == n)
