"""Redis killed, emptied and rolled back under tokend, on private redis-servers (never the
shared one): answers stay 200 or 503, refresh fails closed, revoked tokens stay revoked at
tokend and at the subscriber library, and a consumed refresh token never comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from service.auth import ClientInfo
from service.http.appkeys import AUTH, FENCE, SETTINGS
from service.keyspace import Keyspace
from tests.support import RedisServer, bearer, login, register, unverified
from tests.support.redisdata import stream_events

pytestmark = pytest.mark.security


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "redis"
    directory.mkdir()
    return directory


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    made: list[RedisServer] = []
    yield made
    for server in made:
        server.kill()


async def eventually(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def claims(tokens: dict[str, Any]) -> dict[str, Any]:
    return unverified(tokens["access_token"])[1]


async def status_of(resp: Any) -> int:
    await resp.read()
    return int(resp.status)


async def refresh_status(client: Any, token: str) -> int:
    return await status_of(await client.post("/auth/refresh", headers=bearer(token)))


async def me_status(client: Any, token: str) -> int:
    return await status_of(await client.get("/auth/me", headers=bearer(token)))


async def events(url: str, prefix: str) -> list[dict[str, Any]]:
    """Every partition's events (each with its ``partition``)."""
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await stream_events(admin, prefix)
    finally:
        await admin.aclose()


async def fences_of(url: str, prefix: str) -> dict[int, list[str]]:
    """The reasons of the all.revoked events, by partition."""
    found: dict[int, list[str]] = {}
    for e in await events(url, prefix):
        if e["type"] == "all.revoked":
            found.setdefault(e["partition"], []).append(e["reason"])
    return found


# A loss of everything fences every partition tokend knew a position of: all of them
# once tokend has started (it checks every partition at start). The fences run one
# after the other, each waiting for the second to turn: give them time.
FENCE_ALL_TIMEOUT = 45


# --- kill -9 during 500 concurrent refreshes -------------------------------------------------

SESSIONS = 100
BURST = 5  # concurrent refreshes of each session's current token: 500 in flight


@pytest.mark.parametrize("persistence", ["aof-always", "none"])
async def test_kill_9_during_500_concurrent_refreshes(
    make_client, servers, redis_dir, persistence
) -> None:
    extra = ("--appendonly", "yes", "--appendfsync", "always") if persistence != "none" else ()
    server = RedisServer(redis_dir, *extra)
    servers.append(server)
    server.start()
    client = await make_client(TOKEND_REDIS_URL=server.url)
    auth = client.app[AUTH]
    await register(client, "alice")
    user = await auth.users.by_username("alice")
    assert user is not None
    pairs = [await auth.start_session(user, ClientInfo()) for _ in range(SESSIONS)]
    chains = [[unverified(p.refresh_token)[1]["jti"]] for p in pairs]
    current = [p.refresh_token for p in pairs]
    statuses: list[int] = []
    forks: list[Any] = []
    url = str(client.make_url("/auth/refresh"))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(token: str) -> tuple[int, str | None]:
            try:
                async with http.post(url, headers=bearer(token)) as resp:
                    body = await resp.json()
                    return resp.status, body.get("refresh_token")
            except aiohttp.ClientError as exc:  # the test's own socket failing is a bug too
                raise AssertionError(f"no HTTP answer: {exc!r}") from exc

        async def burst(i: int) -> None:
            results = await asyncio.gather(*(one(current[i]) for _ in range(BURST)))
            statuses.extend(s for s, _ in results)
            successors = {t for s, t in results if s == 200}
            if len(successors) > 1:
                forks.append((i, successors))
            if successors:
                current[i] = successors.pop()
                chains[i].append(unverified(current[i])[1]["jti"])

        killed = asyncio.Event()

        async def killer() -> None:
            # mid-flight: a round and a half of answers in, the rest on their way
            await eventually(lambda: len(statuses) >= SESSIONS * BURST * 3 // 2, timeout=60)
            server.kill()
            killed.set()

        kill = asyncio.create_task(killer())
        rounds_after_kill = 0
        while rounds_after_kill < 2:
            await asyncio.gather(*(burst(i) for i in range(SESSIONS)))
            if killed.is_set():
                rounds_after_kill += 1
        await kill
    rounds = len(statuses) // (SESSIONS * BURST)
    print(f"\n{rounds} rounds of {SESSIONS * BURST} concurrent refreshes, killed during one")

    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert 200 in statuses and 503 in statuses
    assert forks == []  # every burst got one successor at most: no chain forked

    await asyncio.to_thread(server.start)
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    prefix = client.app[SETTINGS].redis_prefix
    try:
        for i, pair in enumerate(pairs):
            state = await admin.hgetall(Keyspace(prefix).of(user.id).session(pair.sid))
            if persistence == "none":
                assert state == {}
                continue
            # at most one token any client holds is current: the newest one, or none
            # (then the rotation's answer was lost and the newest is its predecessor)
            held = chains[i]
            assert state["cur"] == held[-1] or (
                state["cur"] not in held and state["prev"] == held[-1]
            ), (state, held)
    finally:
        await admin.aclose()

    # recovery without restarting tokend
    expected = 200 if persistence != "none" else 401
    for token in current[:20]:
        assert await refresh_status(client, token) == expected
    fresh = await login(client, "alice")
    assert await me_status(client, fresh["access_token"]) == 200
    assert await refresh_status(client, fresh["refresh_token"]) == 200
    # the fence fired only when the data was really gone: then once for every partition
    # (all of them had a known position), alice's first
    fence = client.app[FENCE]
    if persistence == "none":
        partitions = len(Keyspace(prefix).all)
        await eventually(lambda: fence.fences >= partitions, timeout=FENCE_ALL_TIMEOUT)
        fenced = await fences_of(server.url, prefix)
        assert fenced == {n: ["redis_data_loss"] for n in range(partitions)}
        assert fence.fences == partitions
    else:
        assert fence.fences == 0
        assert await fences_of(server.url, prefix) == {}


# --- restart without data --------------------------------------------------------------------


async def test_restart_without_data_fails_closed_everywhere(
    make_client, make_listener, servers, redis_dir
) -> None:
    server = RedisServer(redis_dir)
    servers.append(server)
    server.start()
    client = await make_client(TOKEND_REDIS_URL=server.url)
    prefix = client.app[SETTINGS].redis_prefix
    running = await make_listener(server.url, backoff_initial=0.05, backoff_max=0.3)
    async with asyncio.timeout(10):
        await running.wait_ready()
    await register(client, "alice")
    revoked, other = await login(client, "alice"), await login(client, "alice")
    resp = await client.post("/auth/logout", headers=bearer(revoked["access_token"]))
    assert resp.status == 204
    await eventually(lambda: running.is_revoked(claims(revoked)))

    server.kill()
    await asyncio.to_thread(server.start)  # same port, nothing in it

    # every refresh fails closed
    for tokens in (revoked, other):
        resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    # the revoked access token stays rejected at tokend (and so is every token issued
    # before the loss: their sessions' state is gone)
    assert await me_status(client, revoked["access_token"]) == 401
    assert await me_status(client, other["access_token"]) == 401
    # alice's partition was fenced at once (by her requests), once
    own = Keyspace(prefix).of(claims(revoked)["sub"]).index
    assert (await fences_of(server.url, prefix))[own] == ["redis_data_loss"]
    # every partition is fenced, each once
    partitions = len(Keyspace(prefix).all)
    fence = client.app[FENCE]
    await eventually(lambda: fence.fences >= partitions, timeout=FENCE_ALL_TIMEOUT)
    fenced = await fences_of(server.url, prefix)
    assert fenced == {n: ["redis_data_loss"] for n in range(partitions)}
    # ... and at a subscriber that was running (ready once every partition is fenced)
    await eventually(
        lambda: running.ready and running.applied["all.revoked"] == partitions,
        timeout=FENCE_ALL_TIMEOUT,
    )
    assert running.is_revoked(claims(revoked)) and running.is_revoked(claims(other))
    # ... and at one started after the loss
    late = await make_listener(server.url)
    async with asyncio.timeout(10):
        await late.wait_ready()
    assert late.is_revoked(claims(revoked)) and late.is_revoked(claims(other))

    # recovered without a restart: new sessions work everywhere
    fresh = await login(client, "alice")
    assert await me_status(client, fresh["access_token"]) == 200
    assert await refresh_status(client, fresh["refresh_token"]) == 200
    assert not running.is_revoked(claims(fresh)) and not late.is_revoked(claims(fresh))


async def test_a_subscriber_holds_back_until_tokend_has_fenced(
    make_client, make_listener, servers, redis_dir
) -> None:
    """Between the loss and tokend's fence the subscriber answers 'not ready' (503)."""
    server = RedisServer(redis_dir)
    servers.append(server)
    server.start()
    client = await make_client(TOKEND_REDIS_URL=server.url)
    listener = await make_listener(server.url, backoff_initial=0.05, backoff_max=0.2)
    async with asyncio.timeout(10):
        await listener.wait_ready()
    await client.close()  # no tokend to fence: the loss stays unfenced
    server.kill()
    await asyncio.to_thread(server.start)
    await eventually(lambda: listener.reconnects >= 3)
    assert not listener.ready
    # tokend comes back, notices the loss of every partition from its SQL marks, fences
    # each; the listener follows
    again = await make_client(settings=client.app[SETTINGS])
    partitions = len(Keyspace(listener.prefix).all)
    await eventually(lambda: listener.ready, timeout=FENCE_ALL_TIMEOUT)
    assert listener.applied["all.revoked"] == partitions
    assert again.app[FENCE].fences == partitions


# --- restored from an older snapshot ---------------------------------------------------------


async def _snapshot_then_rotate(client: Any, server: RedisServer) -> dict[str, Any]:
    """Log in twice, SAVE, then rotate one session and log the other out."""
    await register(client, "alice")
    victim, other = await login(client, "alice"), await login(client, "alice")
    admin = aioredis.Redis.from_url(server.url)
    try:
        await admin.save()
    finally:
        await admin.aclose()
    resp = await client.post("/auth/refresh", headers=bearer(victim["refresh_token"]))
    assert resp.status == 200
    rotated = await resp.json()
    resp = await client.post("/auth/logout", headers=bearer(other["access_token"]))
    assert resp.status == 204
    return {"victim": victim, "rotated": rotated, "other": other}


async def _assert_fenced(client: Any, server: RedisServer, t: dict[str, Any]) -> None:
    # the consumed refresh token is current again in the restored data: refused
    resp = await client.post("/auth/refresh", headers=bearer(t["victim"]["refresh_token"]))
    body = await resp.json()
    assert resp.status == 401 and body["error"] == "invalid_token", body
    # the whole session is fenced: its newest refresh token and access tokens too
    assert await refresh_status(client, t["rotated"]["refresh_token"]) == 401
    assert await me_status(client, t["victim"]["access_token"]) == 401
    assert await me_status(client, t["rotated"]["access_token"]) == 401
    # the logout that the snapshot does not contain still holds
    assert await me_status(client, t["other"]["access_token"]) == 401
    assert await refresh_status(client, t["other"]["refresh_token"]) == 401
    # only alice's partition went back (nothing else was written after the snapshot)
    prefix = client.app[SETTINGS].redis_prefix
    own = Keyspace(prefix).of(unverified(t["victim"]["access_token"])[1]["sub"]).index
    assert await fences_of(server.url, prefix) == {own: ["redis_rollback"]}
    # and tokend carries on: a new login works
    fresh = await login(client, "alice")
    assert await me_status(client, fresh["access_token"]) == 200
    assert await refresh_status(client, fresh["refresh_token"]) == 200


async def test_restored_snapshot_cannot_revive_a_consumed_refresh_token(
    make_client, servers, redis_dir
) -> None:
    server = RedisServer(redis_dir)
    servers.append(server)
    server.start()
    client = await make_client(TOKEND_REDIS_URL=server.url)
    tokens = await _snapshot_then_rotate(client, server)
    server.kill()
    await asyncio.to_thread(server.start)  # loads dump.rdb: the state before the rotation
    await _assert_fenced(client, server, tokens)


async def test_restored_snapshot_is_caught_by_a_new_process_from_the_sql_mark(
    make_client, servers, redis_dir
) -> None:
    """No process remembers the rotation: the position checkpointed in SQL does."""
    server = RedisServer(redis_dir)
    servers.append(server)
    server.start()
    first = await make_client(TOKEND_REDIS_URL=server.url)
    tokens = await _snapshot_then_rotate(first, server)
    await first.app[FENCE].checkpoint()  # what the periodic checkpoint does every 5 s
    settings = first.app[SETTINGS]
    server.kill()  # tokend and Redis die together
    await asyncio.to_thread(server.start)
    client = await make_client(settings=settings)
    await _assert_fenced(client, server, tokens)
