"""The per-user session cap holds under concurrent logins: create.lua refuses past the
cap ('full'), the store picks the least recently used sessions and ends them in the
same script call that creates the new one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.keyspace import Keyspace
from service.sessions import SessionStore

pytestmark = pytest.mark.redis_modes()  # standalone, cluster and Sentinel


async def test_concurrent_logins_past_the_cap(redis_client: Any, redis_prefix: str) -> None:
    keys = Keyspace(redis_prefix).of("u")  # the user's partition
    store = SessionStore(
        redis_client,
        prefix=redis_prefix,
        access_ttl=60,
        leeway=1,
        idle_ttl=100,
        absolute_ttl=1000,
        grace=5,
        max_sessions=3,
    )
    now = await store.server_time()

    async def login(n: int) -> tuple[str, ...]:
        created = await store.create(
            sid=f"s{n:02}", uid="u", jti=f"j{n}", now=now + n / 1000, checked_at=now
        )
        assert not created.refused
        return created.evicted

    evicted = await asyncio.gather(*(login(n) for n in range(20)))
    sids = await redis_client.zrange(keys.user_index("u"), 0, -1)
    assert len(sids) == 3
    alive = [sid for sid in (f"s{n:02}" for n in range(20)) if await store.get("u", sid)]
    assert sorted(alive) == sorted(sids)
    entries = await redis_client.xrange(keys.events)
    ended = [json.loads(f["event"]) for _, f in entries]
    assert all(e["type"] == "session.revoked" and e["reason"] == "session_limit" for e in ended)
    # each eviction published once, each by the login that ended it
    assert sorted(e["sid"] for e in ended) == sorted(s for group in evicted for s in group)
    assert len(ended) == 17
