"""Forged messages on the partitions' channels ``<prefix>:{T}:events`` (defect 7): anyone
who may PUBLISH on a channel must not be able to blind a subscriber or make tokend reload
its keys.

A channel is only a wake-up: the subscriber takes ids and events from the partition's
stream of the same name, and tokend's key watcher reloads only for a ``key.rotated``
that really is in partition 0's stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.http.appkeys import AUTH, KEYRING, KEYSTORE
from service.keyspace import Keyspace
from tests.support import bearer, login, register, unverified
from workers.rotation import rotate_and_announce

pytestmark = pytest.mark.security

FAR_FUTURE_ID = "99999999999999-0"  # year 5138: above every id Redis will hand out


async def eventually(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def forged_event(**fields: Any) -> str:
    now = time.time()
    event = {
        "type": "session.revoked",
        "sub": "victim",
        "sid": "forged-sid",
        "jti": None,
        "reason": "logout",
        "at": now,
        "until": now + 900,
        "v": 1,
        "id": FAR_FUTURE_ID,
        **fields,
    }
    return json.dumps(event)


async def test_a_forged_future_id_does_not_hide_later_logouts(
    make_client, make_listener, redis_client
) -> None:
    tokend = await make_client()
    listener = await make_listener()
    async with asyncio.timeout(10):
        await listener.wait_ready()
    await register(tokend, "alice")
    tokens = await login(tokend, "alice")
    claims = unverified(tokens["access_token"])[1]

    # a PUBLISH on every partition's channel (alice's among them), no stream entry: a
    # forged event with an id far in the future
    keys = Keyspace(listener.prefix)
    for part in keys.all:
        assert await redis_client.publish(part.events, forged_event()) >= 1
    await asyncio.sleep(0.2)  # delivered and handled (or ignored)

    # a real logout through tokend afterwards must still reach the deny list
    resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.is_revoked(claims))
    own = keys.of(claims["sub"])
    top = await redis_client.xrevrange(own.events, count=1)
    assert listener.last_id == top[0][0], "the position moved on channel data"
    ms, _, seq = top[0][0].partition("-")
    assert listener._last_id == {own.index: (int(ms), int(seq))}, "a position moved"
    forged = {"sid": "forged-sid", "sub": "victim", "jti": "x", "iat": int(time.time())}
    assert not listener.is_revoked(forged), "a deny entry was made from channel data"


async def test_a_burst_of_forged_messages_costs_few_stream_reads(
    make_client, make_listener, redis_client
) -> None:
    tokend = await make_client()
    listener = await make_listener()
    async with asyncio.timeout(10):
        await listener.wait_ready()
    # the burst on one partition's channel: the wake-ups it causes are coalesced
    channel = Keyspace(listener.prefix).partition(0).events
    async with redis_client.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.publish(channel, forged_event(sid=f"forged-{i}"))
        await pipe.execute()
    await eventually(lambda: listener.wakeups == 1000)
    reads = listener.wakeup_reads
    print(f"\n1,000 forged messages in one burst: {reads} stream reads")
    assert reads <= 50
    assert sum(listener.applied.values()) == 0 and listener.deny_list_size == 0
    # and the listener still follows real events at once
    await register(tokend, "bob")
    tokens = await login(tokend, "bob")
    resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204
    await eventually(lambda: listener.is_revoked(unverified(tokens["access_token"])[1]))


async def _counted_loads(tokend: Any) -> list[int]:
    """Count the SQL key loads of tokend's key store from now on (``[n]``)."""
    store = tokend.server.app[KEYSTORE]
    original = store.load
    loads = [0]

    async def counting_load() -> Any:
        loads[0] += 1
        return await original()

    store.load = counting_load  # the watcher holds this very store
    await asyncio.sleep(0.2)  # the watcher has subscribed
    return loads


async def _publish_burst(redis_client: Any, channel: str, messages: list[str]) -> None:
    async with redis_client.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.publish(channel, message)
        await pipe.execute()


async def _rotate_and_wait(tokend: Any) -> bool:
    """A real rotation (stream entry + message); whether tokend's ring got the new key."""
    app = tokend.server.app
    before = {k.kid for k in app[KEYRING].keys}
    generation = await rotate_and_announce(
        app[KEYSTORE],
        app[AUTH].sessions,
        alg="EdDSA",
        now=time.time(),
        publish_delay=60,
        reason="test",
    )
    assert generation is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len({k.kid for k in app[KEYRING].keys} - before) == 1:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_forged_key_events_do_not_reload_keys_from_sql(
    make_client, redis_client, redis_prefix
) -> None:
    tokend = await make_client()
    loads = await _counted_loads(tokend)
    # a real key.rotated first: an attacker may copy its id
    assert await _rotate_and_wait(tokend)
    # key.rotated goes to partition 0's stream; the watcher listens on its channel
    watched = Keyspace(redis_prefix).partition(0).events
    old_id = (await redis_client.xrevrange(watched, count=1))[0][0]
    loads[0] = 0
    kinds = [
        lambda i: forged_event(type="key.rotated", id=f"{FAR_FUTURE_ID[:-2]}-{i}"),
        lambda i: forged_event(type="key.rotated", id=old_id),
        lambda i: forged_event(type="key.rotated", id=None),
        lambda i: forged_event(type="key.rotated", id=f"{int(time.time() * 1000)}-{i}"),
    ]
    messages = [kinds[i % len(kinds)](i) for i in range(1000)]
    await _publish_burst(redis_client, watched, messages)
    # a real rotation after the burst: when it has reloaded, the burst was handled
    rotated = await _rotate_and_wait(tokend)
    # rotate_and_announce loads once itself, the watcher once for the real event
    forged_reloads = loads[0] - 2
    print(f"\n1,000 forged key.rotated messages: {forged_reloads} SQL key reloads")
    assert forged_reloads <= 1, f"{forged_reloads} reloads from forged messages"
    assert rotated, "the real key.rotated after the burst did not reload the keys"


async def test_junk_on_the_channel_does_not_stop_the_key_watcher(
    make_client, redis_client, redis_prefix
) -> None:
    tokend = await make_client()
    loads = await _counted_loads(tokend)
    junk = [
        '{"type": "key.rotated"',  # not JSON
        '"key.rotated"',  # JSON, not an object
        "[" * 5000 + '"key.rotated"',  # too deep for json.loads (RecursionError)
        '{"type": "key.rotated", "id": 12}',
        "\xff key.rotated",
    ]
    # on the channel the watcher listens on (partition 0's)
    channel = Keyspace(redis_prefix).partition(0).events
    await _publish_burst(redis_client, channel, junk * 20)
    rotated = await _rotate_and_wait(tokend)
    assert rotated, "a real key.rotated after junk messages did not reload the keys"
    assert loads[0] <= 2
