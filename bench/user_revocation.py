"""Revoking every session of a user with many of them: tokend's O(1) mark against the
walk it replaced (bench/revoke_user_walk.lua), measured in the same run.

    .venv/bin/python -m bench.user_revocation [--sessions 100000] [--rounds 2]

For each method and round: one user gets N sessions (through SessionStore.create), then
one logout-all (or password change) runs while another user's session refreshes in a
loop. Printed: the revocation's own time, the worst refresh latency of the other user
while it ran, and the events it published; ratios are walk / mark.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path

from bench.harness import REDIS_URL, cleanup_redis_prefix, fmt, median, new_prefix
from service.keyspace import Keyspace
from service.redisconn import make_redis
from service.sessions import SessionStore
from service.settings import Settings
from service.tokens import new_id
from tokend_client.redis_target import RedisTarget

CHUNK = 2_000


def _walk_script() -> str:
    # self-contained: it carries the helpers of its time, deriving keys from the prefix
    return (Path(__file__).parent / "revoke_user_walk.lua").read_text()


async def _fill(store: SessionStore, uid: str, n: int, now: float) -> list[str]:
    sids = [new_id() for _ in range(n)]
    for i in range(0, n, CHUNK):
        await asyncio.gather(
            *(
                store.create(sid=sid, uid=uid, jti="j", now=now, checked_at=now)
                for sid in sids[i : i + CHUNK]
            )
        )
    return sids


async def _one(method: str, n: int, keep: bool) -> tuple[float, float, int]:
    """(revocation seconds, worst other-user refresh seconds meanwhile, events)."""
    prefix = new_prefix("revoke-user")
    settings = replace(Settings(), redis_prefix=prefix, max_sessions_per_user=0)
    redis = make_redis(RedisTarget(url=REDIS_URL), pool_size=32, pool_timeout=10)
    store = SessionStore.from_settings(redis, settings)
    walk = redis.register_script(_walk_script())
    try:
        now = time.time()
        sids = await _fill(store, "many", n, now)
        (other,) = await _fill(store, "other", 1, now)
        jti, worst, stop = "j", 0.0, asyncio.Event()

        async def refresh_loop() -> None:
            nonlocal jti, worst
            while not stop.is_set():
                new = new_id()
                started = time.perf_counter()
                r = await store.rotate(sid=other, uid="other", jti=jti, new_jti=new, now=now)
                worst = max(worst, time.perf_counter() - started)
                assert r.status == "rotated", r
                jti = new

        loop = asyncio.create_task(refresh_loop())
        await asyncio.sleep(0.05)
        streams = [part.events for part in Keyspace(prefix).all]
        before = sum([await redis.xlen(stream) for stream in streams])
        keep_sid = sids[0] if keep else ""
        reason = "password_changed" if keep else "logout_all"
        started = time.perf_counter()
        if method == "mark":
            await store.revoke_user(uid="many", now=now, reason=reason, keep_sid=keep_sid)
        else:
            # the walk runs on the user's partition like the mark: its keys, and the base
            # its session keys are derived from
            part = store.keys.of("many")
            await walk(
                keys=[
                    part.user_index("many"),
                    part.user_mark("many"),
                    part.expiry,
                    part.events,
                    part.gen,
                    part.epoch,
                ],
                args=[part.key(""), "many", reason, now, store.deny_until(now), 960, keep_sid],
            )
        took = time.perf_counter() - started
        await asyncio.sleep(0.05)
        stop.set()
        await loop
        events = sum([await redis.xlen(stream) for stream in streams]) - before
        return took, worst, events
    finally:
        await redis.aclose()
        await asyncio.to_thread(cleanup_redis_prefix, prefix)


async def main(sessions: int, rounds: int) -> None:
    print(f"# Revoking a user with {sessions:,} sessions (Redis at {REDIS_URL})\n")
    print("| operation | method | revocation ms | other user's worst refresh ms | events |")
    print("|---|---|---|---|---|")
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for keep in (False, True):
        op = "password change" if keep else "logout-all"
        for _ in range(rounds):
            for method in ("walk", "mark"):  # interleaved rounds
                results.setdefault((op, method), []).append(await _one(method, sessions, keep))
        for method in ("walk", "mark"):
            rows = results[(op, method)]
            took = [r[0] * 1000 for r in rows]
            worst = [r[1] * 1000 for r in rows]
            print(f"| {op} | {method} | {fmt(took, 2)} | {fmt(worst, 2)} | {rows[0][2]} |")
    print()
    for op in ("logout-all", "password change"):
        walk = median([r[0] for r in results[(op, "walk")]])
        mark = median([r[0] for r in results[(op, "mark")]])
        print(f"- {op}: the walk takes {walk / mark:,.0f}x the mark's time")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.user_revocation")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.rounds))
