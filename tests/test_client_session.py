"""tokend_client.TokenSession against a real tokend on a real socket and a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from yarl import URL

from service.devredis import free_port
from service.http.appkeys import SETTINGS
from tests.support import PASSWORD, bearer, register
from tests.support.redisdata import stream_events
from tokend_client import (
    FileTokenStore,
    LoginFailed,
    LoginRequired,
    MemoryTokenStore,
    TokendUnavailable,
    Tokens,
    TokenSession,
)
from tokend_client._wire import challenges


class Traffic:
    """Counts what a client sends and gets, by path: an aiohttp TraceConfig."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._start)
        self.config.on_request_end.append(self._end)

    async def _start(self, _session: Any, _ctx: Any, params: Any) -> None:
        self.sent[params.url.path] += 1

    async def _end(self, _session: Any, _ctx: Any, params: Any) -> None:
        self.statuses[(params.url.path, params.response.status)] += 1


@pytest.fixture
async def make_session() -> AsyncIterator[Callable[..., Awaitable[tuple[TokenSession, Traffic]]]]:
    """``await make_session(url, **kwargs)``: a TokenSession on a traced aiohttp session."""
    made: list[tuple[TokenSession, aiohttp.ClientSession]] = []

    async def make(url: Any, **kwargs: Any) -> tuple[TokenSession, Traffic]:
        traffic = Traffic()
        http = aiohttp.ClientSession(trace_configs=[traffic.config])
        session = TokenSession(str(url), session=http, **kwargs)
        made.append((session, http))
        return session, traffic

    yield make
    for session, http in made:
        await session.close()
        await http.close()


async def refresh_outcomes(tokend: Any) -> dict[str, float]:
    """tokend's ``tokend_refreshes_total`` by result, from its /metrics."""
    text = await (await tokend.get("/metrics")).text()
    found = re.findall(r'^tokend_refreshes_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in found if float(value)}


async def reuse_events(tokend: Any) -> list[dict[str, Any]]:
    """``refresh_token_reuse`` events on tokend's stream."""
    prefix = tokend.app[SETTINGS].redis_prefix
    client = aioredis.Redis.from_url(tokend.app[SETTINGS].redis_url, decode_responses=True)
    try:
        events = await stream_events(client, prefix)
    finally:
        await client.aclose()
    return [e for e in events if e["reason"] == "refresh_token_reuse"]


# --- the seed's flow over time ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "leeway",
    [
        pytest.param(-0.5, id="refreshed-after-401"),
        pytest.param(1.5, id="refreshed-ahead"),
    ],
)
async def test_hundred_calls_over_ten_seconds(make_client, make_session, leeway) -> None:
    tokend = await make_client(TOKEND_ACCESS_TTL="2")
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"), leeway=leeway)
    await session.login("alice", PASSWORD)
    sids = set()
    started = time.monotonic()
    for i in range(100):
        # A steady 10 calls a second, whatever each took.
        await asyncio.sleep(max(0.0, started + i * 0.1 - time.monotonic()))
        async with session.get("/auth/me") as resp:
            assert resp.status == 200, await resp.text()
            me = await resp.json()
        assert me["username"] == "alice"
        sids.add(me["sid"])
    assert sids == {me["sid"]}  # one session all along: never logged out, never reused
    refreshes = traffic.sent["/auth/refresh"]
    assert refreshes >= 4  # ten seconds of two-second tokens
    assert session.refreshes == refreshes
    assert await refresh_outcomes(tokend) == {"rotated": refreshes}
    assert await reuse_events(tokend) == []
    unauthorized = traffic.statuses[("/auth/me", 401)]
    if leeway < 0:
        # the token is used past its lifetime: tokend's 401 drives (nearly) every refresh
        assert unauthorized >= refreshes - 1 >= 3
        assert session.retried == unauthorized
    else:
        assert unauthorized == 0
        assert session.retried == 0
    assert traffic.statuses[("/auth/me", 200)] == 100


@pytest.mark.parametrize("who_knows", ["client-and-tokend", "only-tokend"])
async def test_fifty_concurrent_calls_at_expiry_refresh_once(
    make_client, make_session, clock, who_knows
) -> None:
    # No reuse grace: a second refresh with the same refresh token would end the session.
    tokend = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="0")
    await register(tokend, "alice")
    # only-tokend: the client's clock says the token is fresh; every call meets the 401.
    client_clock = clock if who_knows == "client-and-tokend" else time.time
    session, traffic = await make_session(tokend.make_url("/"), leeway=0, clock=client_clock)
    before = await session.login("alice", PASSWORD)
    assert (await (await session.get("/auth/me")).json())["username"] == "alice"
    clock.advance(900)  # the access token's exp: expired from this instant on

    async def call() -> int:
        async with session.get("/auth/me") as resp:
            assert (await resp.json())["username"] == "alice"
            return resp.status

    assert await asyncio.gather(*(call() for _ in range(50))) == [200] * 50
    assert traffic.sent["/auth/refresh"] == 1
    assert await refresh_outcomes(tokend) == {"rotated": 1}
    assert await reuse_events(tokend) == []
    after = session.tokens
    assert after is not None and after.refresh_token != before.refresh_token
    assert await session.store.load() == after
    if who_knows == "only-tokend":
        assert traffic.statuses[("/auth/me", 401)] == 50
        assert session.retried == 50


# --- the end of a session ---------------------------------------------------------------


async def test_expired_refresh_token_requires_login(make_client, make_session, clock) -> None:
    tokend = await make_client(clock=clock, TOKEND_ACCESS_TTL="30", TOKEND_REFRESH_IDLE_TTL="60")
    await register(tokend, "alice")
    store = MemoryTokenStore()
    session, traffic = await make_session(tokend.make_url("/"), store=store, clock=clock, leeway=5)
    await session.login("alice", PASSWORD)
    clock.advance(61)
    calls = await asyncio.gather(
        *(session.get("/auth/me") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(c, LoginRequired) for c in calls), calls
    assert "log in again" in str(calls[0])
    assert traffic.sent["/auth/refresh"] == 1
    assert await store.load() is None
    assert session.tokens is None
    # nothing stored: the next call does not even ask tokend
    with pytest.raises(LoginRequired, match="not logged in"):
        await session.get("/auth/me")
    assert traffic.sent["/auth/refresh"] == 1


async def test_revoked_session_requires_login(make_client, make_session) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"))
    tokens = await session.login("alice", PASSWORD)
    # the session is revoked elsewhere (say, logout-all from another device)
    resp = await tokend.post("/auth/logout", headers=bearer(tokens.access_token))
    assert resp.status == 204
    with pytest.raises(LoginRequired, match="log in again"):
        await session.get("/auth/me")
    assert traffic.statuses[("/auth/me", 401)] == 1
    assert traffic.statuses[("/auth/refresh", 401)] == 1
    assert await session.store.load() is None


async def test_login_hook_logs_in_again_once_for_all_callers(
    make_client, make_session, clock
) -> None:
    tokend = await make_client(clock=clock, TOKEND_ACCESS_TTL="30", TOKEND_REFRESH_IDLE_TTL="60")
    await register(tokend, "alice")
    hook_calls = 0

    async def log_in_again(session: TokenSession) -> bool:
        nonlocal hook_calls
        hook_calls += 1
        await session.login("alice", PASSWORD)
        return True

    session, traffic = await make_session(
        tokend.make_url("/"), clock=clock, on_login_required=log_in_again
    )
    first = await session.login("alice", PASSWORD)
    clock.advance(61)
    responses = await asyncio.gather(*(session.get("/auth/me") for _ in range(10)))
    assert [r.status for r in responses] == [200] * 10
    assert hook_calls == 1
    assert traffic.sent["/auth/login"] == 2
    second = await session.store.load()
    assert second is not None and second.refresh_token != first.refresh_token
    # a hook that declines lets LoginRequired through
    session.on_login_required = _decline
    clock.advance(61)
    with pytest.raises(LoginRequired):
        await session.get("/auth/me")


async def _decline(_session: TokenSession) -> bool:
    return False


async def test_not_logged_in_and_bad_credentials(make_client, make_session) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    session, _ = await make_session(tokend.make_url("/"))
    with pytest.raises(LoginRequired, match="not logged in"):
        await session.get("/auth/me")
    with pytest.raises(LoginFailed) as info:
        await session.login("alice", "wrong password entirely")
    assert info.value.status == 401
    assert session.tokens is None


# --- tokend unavailable during a refresh ------------------------------------------------


class FlakyProxy:
    """A real HTTP hop in front of tokend that answers the first ``failures`` refreshes
    with 503 and ``Retry-After: 1``, as tokend does while Redis is away."""

    def __init__(self, upstream: URL, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.refresh_attempts: list[float] = []
        self.stored_during_503: list[Tokens | None] = []
        self.store: MemoryTokenStore | None = None
        self.app = web.Application()
        self.app.cleanup_ctx.append(self._http)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def _http(self, app: web.Application) -> AsyncIterator[None]:
        self.session = aiohttp.ClientSession()
        yield
        await self.session.close()

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/auth/refresh":
            self.refresh_attempts.append(time.monotonic())
            if self.failures > 0:
                self.failures -= 1
                if self.store is not None:
                    self.stored_during_503.append(await self.store.load())
                return web.json_response(
                    {"error": "temporarily_unavailable", "error_description": "try later"},
                    status=503,
                    headers={"Retry-After": "1"},
                )
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        async with self.session.request(
            request.method,
            self.upstream.join(request.rel_url),
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as up:
            body = await up.read()
            passed = ("Authorization", "X-Refresh-Token", "WWW-Authenticate", "Content-Type")
            return web.Response(
                status=up.status,
                body=body,
                headers={k: v for k, v in up.headers.items() if k in passed},
            )


@pytest.fixture
async def flaky(make_client, aiohttp_server, clock) -> tuple[Any, FlakyProxy, Any]:
    """(tokend on a frozen clock, a FlakyProxy in front of it, the proxy's server)."""
    tokend = await make_client(clock=clock)
    await register(tokend, "alice")
    proxy = FlakyProxy(tokend.make_url("/"), failures=0)
    server = await aiohttp_server(proxy.app)
    return tokend, proxy, server


async def test_refresh_retries_503_honouring_retry_after(flaky, make_session, clock) -> None:
    tokend, proxy, server = flaky
    store = MemoryTokenStore()
    session, _traffic = await make_session(server.make_url("/"), store=store, clock=clock, leeway=0)
    before = await session.login("alice", PASSWORD)
    proxy.store, proxy.failures = store, 2
    clock.advance(900)
    resp = await asyncio.gather(*(session.get("/auth/me") for _ in range(5)))
    assert [r.status for r in resp] == [200] * 5
    assert len(proxy.refresh_attempts) == 3 == session.refreshes
    gaps = [b - a for a, b in zip(proxy.refresh_attempts, proxy.refresh_attempts[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # Retry-After: 1 was honoured
    assert proxy.stored_during_503 == [before, before]  # a 503 never emptied the store
    after = await store.load()
    assert after is not None and after.refresh_token != before.refresh_token
    assert await refresh_outcomes(tokend) == {"rotated": 1}


async def test_tokend_staying_away_keeps_the_tokens(flaky, make_session, clock) -> None:
    _tokend, proxy, server = flaky
    session, _ = await make_session(
        server.make_url("/"), clock=clock, leeway=0, max_retries=2, max_retry_delay=0.1
    )
    before = await session.login("alice", PASSWORD)
    proxy.failures = 1000
    clock.advance(900)
    with pytest.raises(TokendUnavailable) as info:
        await session.get("/auth/me")
    assert info.value.retry_after == 1
    assert len(proxy.refresh_attempts) == 3  # the first try and max_retries=2
    assert await session.store.load() == before == session.tokens
    proxy.failures = 0  # tokend is back
    assert (await session.get("/auth/me")).status == 200
    assert session.tokens is not None and session.tokens != before


async def test_refresh_ahead_uses_the_valid_token_while_tokend_is_away(
    flaky, make_session, clock
) -> None:
    _tokend, proxy, server = flaky
    # leeway longer than the token's life: every call wants to refresh ahead
    session, _traffic = await make_session(
        server.make_url("/"), clock=clock, leeway=1000, max_retries=1, max_retry_delay=0.05
    )
    before = await session.login("alice", PASSWORD)
    proxy.failures = 1000
    resp = await session.get("/auth/me")
    assert resp.status == 200  # sent with the still-valid token
    assert session.tokens == before
    proxy.failures = 0
    assert (await session.get("/auth/me")).status == 200
    assert session.tokens != before


async def test_tokend_unreachable_during_refresh(make_session) -> None:
    expired = Tokens("access", "refresh", time.time() - 1, time.time() + 100)
    store = MemoryTokenStore(expired)
    session, _ = await make_session(
        f"http://127.0.0.1:{free_port()}", store=store, max_retries=2, backoff=0.01
    )
    with pytest.raises(TokendUnavailable, match="cannot reach tokend"):
        await session.get("/auth/me")
    assert session.refreshes == 3
    assert await store.load() == expired


async def test_real_redis_outage_during_refresh(make_client, make_session, private_redis) -> None:
    """tokend itself answers 503 while its Redis is down; the client waits it out."""
    tokend = await make_client(TOKEND_REDIS_URL=private_redis.url, TOKEND_ACCESS_TTL="1")
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"), leeway=0, max_retry_delay=1)
    before = await session.login("alice", PASSWORD)
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        await admin.save()  # the restarted server reloads this snapshot: sessions survive
    finally:
        await admin.aclose()
    private_redis.kill()
    await asyncio.sleep(max(0.0, before.access_expires_at - time.time()) + 0.05)

    async def restart_later() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_redis.start)

    restarter = asyncio.create_task(restart_later())
    resp = await session.get("/auth/me")
    await restarter
    assert resp.status == 200, await resp.text()
    assert traffic.statuses[("/auth/refresh", 503)] >= 1
    assert traffic.statuses[("/auth/refresh", 200)] == 1
    assert session.tokens is not None and session.tokens.refresh_token != before.refresh_token


# --- request bodies, headers, challenges ------------------------------------------------


async def test_json_body_is_sent_again_after_the_refresh(make_client, make_session, clock) -> None:
    tokend = await make_client(clock=clock)
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"), clock=time.time)
    await session.login("alice", PASSWORD)
    clock.advance(900)  # only tokend knows: the POST meets a 401 and is repeated
    resp = await session.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "another good passphrase"},
    )
    assert resp.status == 200, await resp.text()
    assert traffic.sent["/auth/password"] == 2 and session.retried == 1


async def test_streaming_body_is_not_repeated(make_client, make_session, clock) -> None:
    tokend = await make_client(clock=clock)
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"), clock=time.time)
    before = await session.login("alice", PASSWORD)
    clock.advance(900)

    async def body() -> AsyncIterator[bytes]:
        yield b"{}"

    resp = await session.post("/auth/logout", data=body())
    assert resp.status == 401  # handed back as it came ...
    assert (await resp.json())["error"] == "invalid_token"
    assert session.tokens != before  # ... but the pair is fresh for the next call
    assert traffic.sent["/auth/logout"] == 1
    assert (await session.post("/auth/logout", data=b"")).status == 204


async def test_authorization_is_the_sessions_own(make_session) -> None:
    session, _ = await make_session("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="Authorization"):
        await session.get("/x", headers={"Authorization": "Bearer mine"})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer realm="tokend", error="invalid_token", error_description="a, b"', True),
        ('Bearer realm="tokend"', False),
        ('Basic realm="x", Bearer error=invalid_token', True),
        ('Basic abc==, Bearer realm="y", error="invalid_token"', True),
        ('Basic realm="x", error="invalid_token"', False),
        ('Bearer error="insufficient_scope"', False),
        ("garbage ===", False),
    ],
)
def test_only_bearer_invalid_token_challenges_refresh(header: str, expected: bool) -> None:
    found = any(
        scheme == "bearer" and params.get("error") == "invalid_token"
        for scheme, params in challenges(header)
    )
    assert found is expected


# --- FileTokenStore ---------------------------------------------------------------------

PAIR = Tokens("a.b.c", "d.e.f", 1000.0, 2000.0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_file_store_round_trip_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "config" / "tokend" / "tokens.json"
    store = FileTokenStore(path, key="http://a")
    assert await store.load() is None
    old_umask = os.umask(0)  # even a permissive umask gives a private file
    try:
        await store.save(PAIR)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert await FileTokenStore(path, key="http://a").load() == PAIR
    inode = path.stat().st_ino
    newer = Tokens("g.h.i", "j.k.l", 3000.0, None)
    await store.save(newer)
    assert path.stat().st_ino != inode  # replaced, never rewritten in place
    assert _mode(path) == 0o600
    assert await store.load() == newer
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]  # no temp files
    # a second key lives beside the first; clearing one keeps the other
    other = FileTokenStore(path, key="http://b")
    await other.save(PAIR)
    await store.clear()
    assert await store.load() is None
    assert await other.load() == PAIR
    await other.clear()
    assert not path.exists()  # nothing left: no file


async def test_file_store_failed_write_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    await store.save(PAIR)

    def broken_replace(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        await store.save(Tokens("x", "y", 1.0))
    monkeypatch.undo()
    assert await store.load() == PAIR
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]


async def test_file_store_damaged_or_open_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    store = FileTokenStore(path)
    assert await store.load() is None
    path.write_text(json.dumps({"version": 1, "tokens": {"default": {"access_token": 1}}}))
    assert await store.load() is None
    path.chmod(0o644)
    await store.save(PAIR)
    assert _mode(path) == 0o600
    assert await store.load() == PAIR


async def test_file_store_session_survives_and_logout_clears(make_client, tmp_path) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    path = tmp_path / "tokens.json"
    async with TokenSession(tokend.make_url("/"), store=FileTokenStore(path)) as session:
        tokens = await session.login("alice", PASSWORD)
    assert _mode(path) == 0o600
    # a new process, as it were: the stored pair is picked up without a login
    async with TokenSession(tokend.make_url("/"), store=FileTokenStore(path)) as session:
        assert (await session.me())["username"] == "alice"
        await session.logout()
        assert session.tokens is None
    assert not path.exists()
    # the session really ended at tokend
    resp = await tokend.get("/auth/me", headers=bearer(tokens.access_token))
    assert resp.status == 401
    resp = await tokend.post("/auth/refresh", headers=bearer(tokens.refresh_token))
    assert resp.status == 401


async def test_logout_refreshes_an_expired_token_first_and_clears_on_401(
    make_client, make_session, clock
) -> None:
    tokend = await make_client(clock=clock)
    await register(tokend, "alice")
    session, traffic = await make_session(tokend.make_url("/"), clock=clock, leeway=0)
    tokens = await session.login("alice", PASSWORD)
    clock.advance(900)
    await session.logout()
    assert traffic.statuses[("/auth/logout", 204)] == 1
    assert traffic.sent["/auth/refresh"] == 1
    assert await session.store.load() is None
    # a session that already ended at tokend: the store is cleared all the same
    session2, _ = await make_session(tokend.make_url("/"), store=MemoryTokenStore(tokens))
    await session2.logout()
    assert await session2.store.load() is None
