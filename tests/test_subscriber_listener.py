"""tokend_client.RevocationListener against real Redis and a real tokend: every revocation
reaches the deny list once, survives restarts and reconnects, and expires with ``until``."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from service.clock import FrozenClock
from service.keyspace import Keyspace
from tests.support import bearer, login, register, unverified
from tests.support.redisdata import mark_fresh, stream_entries

READY_TIMEOUT = 10

# Every test on standalone, cluster and Sentinel, but those that kill, stop or restart a
# private server of their own (standalone_only).
pytestmark = pytest.mark.redis_modes()


async def eventually(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds (a hang guard only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def mark_like_tokend(client: aioredis.Redis, prefix: str) -> None:
    """Set the partition count and every partition's epoch marker as a starting tokend
    does (service/fence.py): a listener is not ready on a Redis without them. Tests with
    a real tokend get them from tokend itself."""
    await mark_fresh(client, prefix)


async def ready(listener: Any) -> Any:
    async with asyncio.timeout(READY_TIMEOUT):
        await listener.wait_ready()
    return listener


def claims_of(tokens: dict[str, Any]) -> dict[str, Any]:
    return unverified(tokens["access_token"])[1]


def sample(listener: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = listener.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


async def me_status(tokend: Any, tokens: dict[str, Any]) -> int:
    return (await tokend.get("/auth/me", headers=bearer(tokens["access_token"]))).status


async def test_logout_is_denied_and_other_sessions_are_not(make_client, make_listener) -> None:
    tokend = await make_client()
    listener = await ready(await make_listener())
    await register(tokend, "alice")
    first, second = await login(tokend, "alice"), await login(tokend, "alice")
    assert not listener.is_revoked(claims_of(first))
    resp = await tokend.post("/auth/logout", headers=bearer(first["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.is_revoked(claims_of(first)))
    assert not listener.is_revoked(claims_of(second))
    assert listener.applied == {"session.revoked": 1}
    assert sample(listener, "tokend_listener_events_applied_total", {"type": "session.revoked"})
    assert sample(listener, "tokend_listener_deny_list_size", {"kind": "sid"}) == 1
    assert sample(listener, "tokend_listener_propagation_seconds_count", {"source": "live"}) == 1
    assert listener.lag is not None and listener.lag >= 0
    print(f"\nlogout → listener: {listener.last_propagation * 1000:.2f} ms")


async def test_session_delete_is_denied(make_client, make_listener) -> None:
    tokend = await make_client()
    listener = await ready(await make_listener())
    await register(tokend, "alice")
    first, second = await login(tokend, "alice"), await login(tokend, "alice")
    sid = claims_of(first)["sid"]
    resp = await tokend.delete(f"/auth/sessions/{sid}", headers=bearer(second["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.is_revoked(claims_of(first)))
    assert not listener.is_revoked(claims_of(second))


async def test_logout_all_denies_tokens_issued_up_to_its_second(
    make_client, make_listener, clock
) -> None:
    """Tokens of sessions authenticated up to the revocation are denied, by auth_time
    (microseconds, on tokend's Redis clock like the event's `at`), not by iat (whole
    seconds, the issuing process's clock): a login in the revocation's own second gets
    tokens that both tokend and the listener accept."""
    clock.now = float(int(clock.now))  # logins and the revocation share one whole second
    tokend = await make_client(clock=clock)
    listener = await ready(await make_listener(clock=clock))
    await register(tokend, "alice")
    first, second = await login(tokend, "alice"), await login(tokend, "alice")
    resp = await tokend.post("/auth/logout-all", headers=bearer(first["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.applied["user.revoked"] == 1)
    clock.advance(0.5)
    same_second = await login(tokend, "alice")  # iat == int(at), auth_time > at
    clock.advance(1)
    next_second = await login(tokend, "alice")
    for tokens, denied, at_server in (
        (first, True, 401),
        (second, True, 401),
        (same_second, False, 200),  # a new session: authenticated after the mark
        (next_second, False, 200),
    ):
        assert listener.is_revoked(claims_of(tokens)) is denied
        assert await me_status(tokend, tokens) == at_server
    assert sample(listener, "tokend_listener_deny_list_size", {"kind": "sub"}) == 1


async def test_refresh_token_reuse_denies_the_session(make_client, make_listener, clock) -> None:
    tokend = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    listener = await ready(await make_listener(clock=clock))
    await register(tokend, "alice")
    tokens = await login(tokend, "alice")
    resp = await tokend.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    rotated = await resp.json()
    assert not listener.is_revoked(claims_of(rotated))
    clock.advance(11)
    resp = await tokend.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert resp.status == 401
    await eventually(lambda: listener.is_revoked(claims_of(rotated)))
    assert listener.is_revoked(claims_of(tokens))


async def test_started_after_the_revocations_it_replays_them(make_client, make_listener) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    sessions = [await login(tokend, "alice") for _ in range(3)]
    for tokens in sessions[:2]:
        assert (await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))).status
    listener = await ready(await make_listener())
    # ready means replayed: no waiting for anything live
    assert [listener.is_revoked(claims_of(t)) for t in sessions] == [True, True, False]
    assert listener.replays == 1
    assert listener.applied == {"session.revoked": 2}
    assert sample(listener, "tokend_listener_propagation_seconds_count", {"source": "replay"}) == 2


async def test_each_event_is_applied_once(
    make_listener, emit_revocation, redis_client, redis_prefix
) -> None:
    await mark_like_tokend(redis_client, redis_prefix)
    listener = await ready(await make_listener())
    now = time.time()
    # (the users live in different partitions: each event goes to its user's stream)
    assert len({Keyspace(redis_prefix).of(u).index for u in ("u1", "u2", "u3", "u4")}) > 1
    ids = [
        await emit_revocation("session.revoked", sub="u1", sid="s1", at=now),
        await emit_revocation("user.revoked", sub="u2", at=now),
        await emit_revocation("token.revoked", sub="u3", sid="s3", jti="j3", at=now),
    ]
    await eventually(lambda: sum(listener.applied.values()) == 3)
    # the last one alone, so it is the last applied whatever the wake-ups coalesced
    ids.append(await emit_revocation("session.expired", sub="u4", sid="s4", at=now))
    await eventually(lambda: sum(listener.applied.values()) == 4)
    probes = [
        {"sid": "s1", "sub": "x", "jti": "x", "iat": int(now)},
        {"sid": "x", "sub": "u2", "jti": "x", "iat": int(now)},
        {"sid": "x", "sub": "u2", "jti": "x", "iat": int(now) + 1},
        {"sid": "s3", "sub": "u3", "jti": "j3", "iat": int(now)},
        {"sid": "s3", "sub": "u3", "jti": "other", "iat": int(now)},
        {"sid": "s4", "sub": "u4", "jti": "x", "iat": int(now)},
    ]
    expected = [True, True, False, True, False, False]
    assert [listener.is_revoked(p) for p in probes] == expected
    before = (dict(listener.applied), listener.deny_list_size, listener.last_id)
    assert before[2] == ids[-1]
    positions = dict(listener._last_id)
    # the same messages delivered again (each on its partition's channel) only wake the
    # listener up: no stream has anything after its last applied id, so nothing changes
    wakeups = listener.wakeups
    entries = await stream_entries(redis_client, listener.prefix)
    assert sorted(entry_id for _, entry_id, _ in entries) == sorted(ids)
    keys = Keyspace(listener.prefix)
    for part, entry_id, fields in entries:
        payload = fields["event"][:-1] + f',"id":"{entry_id}"}}'
        await redis_client.publish(keys.partition(part).events, payload)
    await eventually(lambda: listener.wakeups == wakeups + 4)
    assert (dict(listener.applied), listener.deny_list_size, listener.last_id) == before
    assert listener._last_id == positions
    assert [listener.is_revoked(p) for p in probes] == expected
    assert listener.skipped == 0
    assert sample(listener, "tokend_listener_events_applied_total", {"type": "user.revoked"}) == 1
    # and a reconnect replays from the last id: nothing is applied twice
    await kill_listener_connection(redis_client, listener)
    await eventually(lambda: listener.replays == 2)
    assert (dict(listener.applied), listener.deny_list_size) == before[:2]
    assert listener._last_id == positions


async def test_entries_are_dropped_after_until(
    make_listener, emit_revocation, redis_client, redis_prefix
) -> None:
    await mark_like_tokend(redis_client, redis_prefix)
    now = time.time()
    clock = FrozenClock(now)
    listener = await ready(await make_listener(clock=clock, prune_interval=3600))
    await emit_revocation("session.revoked", sub="u1", sid="s1", at=now, until=now + 100)
    await emit_revocation("user.revoked", sub="u2", at=now, until=now + 100)
    await emit_revocation("token.revoked", sub="u3", sid="s3", jti="j3", at=now, until=now + 200)
    await eventually(lambda: sum(listener.applied.values()) == 3)
    s1 = {"sid": "s1", "sub": "u1", "jti": "a", "iat": int(now)}
    u2 = {"sid": "s2", "sub": "u2", "jti": "b", "iat": int(now)}
    j3 = {"sid": "s9", "sub": "u3", "jti": "j3", "iat": int(now)}
    assert listener.deny_list_size == 3
    clock.advance(100)  # until itself still denies
    assert [listener.is_revoked(c) for c in (s1, u2, j3)] == [True, True, True]
    clock.advance(0.001)
    # lazily dropped on lookup ...
    assert [listener.is_revoked(c) for c in (s1, u2, j3)] == [False, False, True]
    assert listener.deny_list_size == 1
    # ... and by the periodic prune
    clock.advance(100)
    assert listener.prune() == 1
    assert listener.deny_list_size == 0
    assert sample(listener, "tokend_listener_deny_list_size", {"kind": "jti"}) == 0
    # an event replayed after its until denies nothing but still counts as applied
    late = await ready(await make_listener(clock=clock))
    assert late.deny_list_size == 0
    # (it replayed every partition's stream to the same entry)
    assert sum(late.applied.values()) == 3 and late._last_id == listener._last_id


async def client_lists(redis_client: Any, _type: str | None = None) -> list[tuple[Any, Any]]:
    """(node, CLIENT LIST entry) of every node: a client id is one server's, and on a
    cluster the listener subscribes through any node, a replica too (None: the one
    server, or the Sentinel primary)."""
    if not isinstance(redis_client, RedisCluster):
        return [(None, c) for c in await redis_client.client_list(_type=_type)]
    found = []
    for node in redis_client.get_nodes():
        for entry in await redis_client.client_list(_type=_type, target_nodes=node):
            found.append((node, entry))
    return found


async def kill_listener_connection(redis_client: Any, listener: Any) -> None:
    """CLIENT KILL the listener's own pub/sub connection (never anyone else's), on the
    node it is connected to."""
    name = f"tokend-listener:{listener.prefix}"
    clients = await client_lists(redis_client, "pubsub")
    ours = [(node, c["id"]) for node, c in clients if c.get("name") == name]
    assert len(ours) == 1, clients
    node, client_id = ours[0]
    where = {} if node is None else {"target_nodes": node}
    await redis_client.execute_command("CLIENT", "KILL", "ID", client_id, **where)


async def test_killed_connection_reconnects_and_replays_what_it_missed(
    make_client, make_listener, redis_client
) -> None:
    tokend = await make_client()
    # a long first backoff: the revocations below happen while it is disconnected
    listener = await ready(await make_listener(backoff_initial=1.0))
    await register(tokend, "alice")
    sessions = [await login(tokend, "alice") for _ in range(4)]
    await kill_listener_connection(redis_client, listener)
    for tokens in sessions[:3]:
        resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
        assert resp.status == 204
    # (the replay reads one partition after another: wait for all of it)
    await eventually(lambda: listener.applied["session.revoked"] == 3 and listener.replays == 2)
    assert [listener.is_revoked(claims_of(t)) for t in sessions] == [True, True, True, False]
    assert listener.reconnects == 1 and listener.replays == 2
    # they came from the stream, not the channel: the channel lost them
    assert sample(listener, "tokend_listener_propagation_seconds_count", {"source": "replay"}) == 3
    assert sample(listener, "tokend_listener_reconnects_total") == 1
    assert sample(listener, "tokend_listener_connected") == 1
    # and it follows the channel again
    resp = await tokend.post("/auth/logout", headers=bearer(sessions[3]["access_token"]))
    await eventually(lambda: listener.is_revoked(claims_of(sessions[3])))
    assert sample(listener, "tokend_listener_propagation_seconds_count", {"source": "live"}) == 1


@pytest.mark.standalone_only  # kills and restarts a private server
async def test_redis_restart_backs_off_reconnects_and_follows_again(
    make_listener, emit_revocation, private_redis, redis_prefix
) -> None:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await mark_like_tokend(client, redis_prefix)
        listener = await ready(
            await make_listener(private_redis.url, backoff_initial=0.05, backoff_max=0.4)
        )
        await emit_revocation("session.revoked", sub="u", sid="before", client=client)
        await eventually(lambda: listener.applied["session.revoked"] == 1)
        private_redis.kill()
        await eventually(lambda: listener.reconnects >= 3)  # retrying, with backoff
        assert sample(listener, "tokend_listener_connected") == 0
        assert listener.is_revoked({"sid": "before", "sub": "u", "jti": "j", "iat": 0})
        await asyncio.to_thread(private_redis.start)  # empty: the stream starts afresh
        await client.aclose()
        client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
        # the partition count and epoch markers are gone with the data: not trusted
        # until tokend has fenced it
        await asyncio.sleep(0.5)
        assert not listener.ready and sample(listener, "tokend_listener_connected") == 0
        # what tokend's fence does (with all.revoked): the layout first, still not
        # trusted while the partitions' epochs are missing ...
        keys = Keyspace(redis_prefix)
        await client.set(keys.layout, len(keys.all))
        await asyncio.sleep(0.5)
        assert not listener.ready and sample(listener, "tokend_listener_connected") == 0
        # ... then every partition fenced as epoch 2
        for part in keys.all:
            await client.set(part.epoch, 2)
        await eventually(lambda: listener.ready)
        await eventually(lambda: sample(listener, "tokend_listener_connected") == 1)
        await emit_revocation("session.revoked", sub="u", sid="after", client=client)
        await eventually(lambda: listener.applied["session.revoked"] == 2)
        assert listener.is_revoked({"sid": "after", "sub": "u", "jti": "j", "iat": 0})
        assert listener.is_revoked({"sid": "before", "sub": "u", "jti": "j", "iat": 0})
    finally:
        await client.aclose()


@pytest.mark.standalone_only  # kills and restarts a private server
async def test_a_redis_that_was_behind_is_trusted_only_once_its_fence_is_applied(
    make_listener, emit_revocation, private_redis, redis_prefix
) -> None:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await mark_like_tokend(client, redis_prefix)
        listener = await ready(
            await make_listener(private_redis.url, backoff_initial=0.05, backoff_max=0.2)
        )
        private_redis.kill()
        await asyncio.to_thread(private_redis.start)  # empty
        await client.aclose()
        client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
        await eventually(lambda: not listener.ready)  # behind: failing closed
        # what the service answers while each replay runs
        during: list[bool] = []
        replay = listener._replay

        async def watched(*args: Any) -> None:
            during.append(listener.ready)
            await replay(*args)

        listener._replay = watched
        # tokend's fence: the layout, then per partition (atomically) epoch and all.revoked
        fence_at = time.time()
        keys = Keyspace(redis_prefix)
        await client.set(keys.layout, len(keys.all))
        for part in keys.all:
            await client.set(part.epoch, 2)
            await emit_revocation(
                "all.revoked",
                at=fence_at,
                client=client,
                partition=part.index,
                extra={"epoch": 2, "partition": part.index},
            )
        await eventually(lambda: listener.ready)
        assert during and not any(during), during  # never trusted before the fence applied
        assert listener.is_revoked({"sid": "s", "sub": "u", "jti": "j", "iat": fence_at - 1})
    finally:
        await client.aclose()


async def test_channel_messages_are_only_wake_ups(
    make_listener, redis_client, redis_prefix
) -> None:
    """Whatever is published on the channel, only the stream's entries are applied."""
    await mark_like_tokend(redis_client, redis_prefix)
    listener = await ready(await make_listener())
    now = time.time()
    forged = json.dumps(
        {
            "v": 1,
            "type": "session.revoked",
            "sid": "s",
            "sub": "u",
            "at": now,
            "until": now + 60,
            "id": "1-1",
        }
    )
    keys = Keyspace(redis_prefix)
    channels = [keys.of("u").events, keys.partition(0).events, keys.partition(15).events]
    for payload, channel in zip(
        ("not json", '{"v": 1, "type": "session.revoked"}', forged), channels, strict=True
    ):
        await redis_client.publish(channel, payload)
    await eventually(lambda: listener.wakeups == 3)
    assert sum(listener.applied.values()) == 0 and listener.invalid == 0
    assert not listener.is_revoked({"sid": "s", "sub": "u", "jti": "j", "iat": int(now)})


async def test_invalid_stream_entries_are_counted_and_ignored(
    make_listener, redis_client, redis_prefix
) -> None:
    await mark_like_tokend(redis_client, redis_prefix)
    listener = await ready(await make_listener())
    keys = Keyspace(redis_prefix)
    for i, payload in enumerate(("not json", '{"v": 1, "type": "session.revoked"}', '{"v": 2}')):
        stream = keys.partition(i).events  # the channel of each stream has its name
        await redis_client.xadd(stream, {"event": payload})
        await redis_client.publish(stream, "wake up")
    await eventually(lambda: listener.invalid == 3)
    assert sum(listener.applied.values()) == 0
    assert sample(listener, "tokend_listener_events_invalid_total") == 3


async def test_close_leaves_no_connection_behind(make_listener, redis_client, redis_prefix) -> None:
    await mark_like_tokend(redis_client, redis_prefix)
    listener = await ready(await make_listener())
    name = f"tokend-listener:{listener.prefix}"
    assert name in [c.get("name") for _, c in await client_lists(redis_client, "pubsub")]
    await listener.close()
    await eventually(lambda: True)
    names = [c.get("name") for _, c in await client_lists(redis_client)]
    assert name not in names
    assert sample(listener, "tokend_listener_connected") == 0


async def test_a_closed_listener_is_not_ready_until_started_and_replayed_again(
    make_listener, redis_client, redis_prefix
) -> None:
    """After close() its deny list no longer follows revocations: not ready (the
    integrations answer 503 on a listener that is not ready)."""
    await mark_like_tokend(redis_client, redis_prefix)
    listener = await ready(await make_listener())
    await listener.close()
    assert not listener.ready
    await listener.start()
    async with asyncio.timeout(10):
        await listener.wait_ready()
    assert listener.ready


@pytest.mark.standalone_only  # SIGSTOPs a private server
async def test_a_redis_that_stops_answering_is_detected_by_the_ping(
    make_listener, emit_revocation, private_redis, redis_prefix
) -> None:
    """A frozen server keeps the TCP connection open; only the liveness ping notices."""
    admin = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    await mark_like_tokend(admin, redis_prefix)
    await admin.aclose()
    listener = await ready(await make_listener(private_redis.url, ping_interval=0.2))
    await asyncio.sleep(2)  # idle for many ping intervals: answered pings keep it connected
    assert listener.reconnects == 0
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: listener.reconnects >= 1)
        assert sample(listener, "tokend_listener_connected") == 0
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        await emit_revocation("session.revoked", sub="u", sid="s", client=client)
        await eventually(lambda: listener.applied["session.revoked"] == 1)
    finally:
        await client.aclose()
