"""What a failover costs: ``kill -9`` of a Redis primary under continuous refresh load, to
the first 200 again, on a 6-node Redis Cluster and on Sentinel (primary + replica + 3
sentinels), with ``TOKEND_REDIS_REPLICA_ACKS=1``.

Each run is a fresh topology (tests/support/topology*.py: cluster-node-timeout 1000 ms;
down-after-milliseconds 1000, failover-timeout 2000) and a fresh ``tokend serve`` (one
process). ``WORKERS`` asyncio clients each follow one session's refresh-token chain (one
user each, so the users spread over the partitions and, on the cluster, over the three
primaries), back to back; after a non-200 a client waits ``RETRY_PAUSE`` and presents the
same token again. Every answer is timestamped. Bounded: each run stops at most
``RUN_CAP`` seconds after the kill.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from redis.crc import key_slot

from bench.cluster import sessions, tokend_on
from bench.harness import fmt, percentile, wait_quiet
from bench.report import Section, progress
from service.keyspace import Keyspace
from tests.support.topology import Node, Topology
from tests.support.topology_cluster import RedisCluster
from tests.support.topology_sentinel import RedisSentinel

WORKERS = 24
WARMUP = 2.0
RETRY_PAUSE = 0.01
RUN_CAP = 20.0
AFTER = 0.5  # load kept after the last affected client is back


@dataclass
class Run:
    promoted_s: float  # kill -> the topology reports the replica promoted (50 ms polls)
    first_ok_s: float  # kill -> the first 200 of a client on the killed primary
    all_ok_s: float  # kill -> every client on the killed primary has had a 200 again
    affected: int  # clients that saw a failure after the kill
    statuses: Counter[int] = field(default_factory=Counter)  # non-200 after the kill
    slowest_ms: float = 0.0  # the longest request in flight across the kill
    lost: int = 0  # clients whose session ended (401) and stopped
    ok_during: int = 0  # 200s answered between the kill and the promotion
    on_victim: int = 0  # clients whose partition was on the killed primary
    others_hit: int = 0  # clients on the other primaries that got a non-200
    others_errors: int = 0  # their non-200s
    others_last_error_s: float = 0.0  # kill -> their last non-200
    others_first_error_s: float = 0.0  # kill -> their first non-200
    load: float = 0.0


async def _worker(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    i: int,
    stop: asyncio.Event,
    log: list[tuple[float, float, int, int]],
) -> None:
    """Refresh back to back; log (sent, answered, client, status); 0: no HTTP answer."""
    while not stop.is_set():
        sent = time.monotonic()
        try:
            async with http.post(
                url + "/auth/refresh", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                await resp.read()
                status = resp.status
                if status == 200:
                    token = resp.headers["X-Refresh-Token"]
        except (TimeoutError, aiohttp.ClientError):
            status = 0
        log.append((sent, time.monotonic(), i, status))
        if status == 401:
            return  # the session is over: this client stops
        if status != 200:
            await asyncio.sleep(RETRY_PAUSE)


def _uid(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims: dict[str, str] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims["sub"]


def _victims(topo: Topology, victim: Node, prefix: str, uids: list[str]) -> set[int]:
    """The clients whose user's partition lives on ``victim``."""
    if not isinstance(topo, RedisCluster):
        return set(range(len(uids)))
    slots = set(topo.slots_of(victim))
    keys = Keyspace(prefix)
    return {
        i for i, uid in enumerate(uids) if key_slot(keys.of(uid).session("x").encode()) in slots
    }


async def _one_run(
    topo: Topology, url: str, tokens: list[str], uids: list[str], prefix: str
) -> Run:
    stop = asyncio.Event()
    log: list[tuple[float, float, int, int]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    conn = aiohttp.TCPConnector(limit=len(tokens))
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        tasks = [
            asyncio.create_task(_worker(http, url, t, i, stop, log)) for i, t in enumerate(tokens)
        ]
        await asyncio.sleep(WARMUP)
        victim = topo.primaries()[0]  # type: ignore[attr-defined]
        hit = await asyncio.to_thread(_victims, topo, victim, prefix, uids)
        killed = time.monotonic()
        await asyncio.to_thread(topo.kill9, victim)  # type: ignore[attr-defined]
        wait: Callable[..., object] = topo.wait_failover  # type: ignore[attr-defined]
        await asyncio.to_thread(wait, victim, RUN_CAP)
        promoted = time.monotonic() - killed
        # Until every client that failed after the kill has had a 200 after its failure.
        deadline = killed + RUN_CAP
        while time.monotonic() < deadline:
            back = {c for sent, _a, c, st in log if sent >= killed and st == 200}
            lost = {c for _s, _a, c, st in log if st == 401}
            if hit - lost <= back:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(AFTER)
        stop.set()
        await asyncio.gather(*tasks)
    failed = {c for _s, a, c, st in log if a >= killed and st != 200}
    # A victim client is back at the first 200 to a request sent after the kill.
    oks = [
        min((a for sent, a, c2, st in log if c2 == c and sent >= killed and st == 200),
            default=float("nan"))
        for c in hit
    ]  # fmt: skip
    others = [(a, st) for _s, a, c, st in log if c not in hit and a >= killed and st != 200]
    across = [a - s for s, a, _c, _st in log if s < killed <= a]
    return Run(
        promoted_s=promoted,
        first_ok_s=(min(oks) - killed) if oks else float("nan"),
        all_ok_s=(max(oks) - killed) if oks else float("nan"),
        on_victim=len(hit),
        others_hit=len({c for _s, a, c, st in log if c not in hit and a >= killed and st != 200}),
        others_errors=len(others),
        others_last_error_s=max((a for a, _st in others), default=killed) - killed,
        others_first_error_s=min((a for a, _st in others), default=killed) - killed,
        affected=len(failed),
        statuses=Counter(st for _s, a, _c, st in log if a >= killed and st != 200),
        slowest_ms=max(across, default=0.0) * 1000,
        lost=len({c for _s, _a, c, st in log if st == 401}),
        ok_during=sum(1 for _s, a, _c, st in log if killed <= a < killed + promoted and st == 200),
        load=os.getloadavg()[0],
    )


# Redis Cluster's default cluster-require-full-coverage yes: every node refuses every key
# (CLUSTERDOWN) while any slot is uncovered; "no" keeps the healthy shards serving.
MODES: dict[str, Callable[[], Topology]] = {
    "cluster": lambda: RedisCluster(),
    "cluster, full-coverage no": lambda: RedisCluster(
        extra=["--cluster-require-full-coverage", "no"]
    ),
    # detection in 1 s, as the published figures were measured (the tests' setups use 2 s)
    "sentinel": lambda: RedisSentinel(down_after_ms=1000),
}


def _run_mode(mode: str) -> Run:
    topo: Topology = MODES[mode]()
    with topo:
        env = topo.env()  # type: ignore[attr-defined]
        with tokend_on(env, 1, {"TOKEND_REDIS_REPLICA_ACKS": "1"}) as server:
            bodies = sessions(server.url, WORKERS, users=WORKERS)
            uids = [_uid(b["access_token"]) for b in bodies]
            wait_quiet()
            tokens = [b["refresh_token"] for b in bodies]
            prefix = server.env["TOKEND_REDIS_PREFIX"]
            return asyncio.run(_one_run(topo, server.url, tokens, uids, prefix))


def failover_section(runs: int) -> Section:
    res: dict[str, list[Run]] = {mode: [] for mode in MODES}
    for i in range(runs):
        for mode in res:
            t0 = time.monotonic()
            r = _run_mode(mode)
            res[mode].append(r)
            progress(
                f"[failover] {mode} run {i + 1}/{runs}: promoted {r.promoted_s:.2f} s, "
                f"first 200 {r.first_ok_s:.2f} s, all back {r.all_ok_s:.2f} s, "
                f"{r.on_victim} on the victim, {r.affected} hit, others hit {r.others_hit} "
                f"({r.others_errors} errors, {r.others_first_error_s:.2f}-"
                f"{r.others_last_error_s:.2f} s), "
                f"{r.ok_during} 200s before the promotion, "
                f"errors {dict(r.statuses)}, lost {r.lost} "
                f"({time.monotonic() - t0:.0f} s, load {r.load:.1f})"
            )
    s = Section(f"Failover: kill -9 of a Redis primary under refresh load ({runs} runs per mode)")
    s.add(
        f"{WORKERS} clients refreshing back to back (one session and user each, "
        f"`tokend serve`, one process, `TOKEND_REDIS_REPLICA_ACKS=1`), {WARMUP:g} s of load, "
        "then `kill -9` of a primary (the cluster: the one holding slot 0, a third of the "
        "partitions; Sentinel: the only one). A client that gets a non-200 waits "
        f'{RETRY_PAUSE * 1000:g} ms and tries again. "first 200": from the kill to the '
        "first 200 to a request sent after the kill by a client whose user's partition was "
        "on the killed primary (its slots before the kill; on Sentinel every client); "
        '"all of them back": to the last such client\'s; "promoted": until the topology\'s '
        "own check (CLUSTER NODES "
        "settled / every sentinel names the replica, polled every 50 ms) saw the new "
        "primary. Fresh topology and tokend each run; cluster-node-timeout 1000 ms "
        '("full-coverage no": the same cluster with `cluster-require-full-coverage no`), '
        "Sentinel down-after-milliseconds 1000 and failover-timeout 2000. Nearest-rank "
        "percentiles over the runs (with 5 runs p99 is the worst run).",
        "",
    )
    rows = []
    for mode, rs in res.items():
        if not rs:
            continue
        errors: Counter[int] = Counter()
        for r in rs:
            errors.update(r.statuses)
        codes = ", ".join(f"{n}x{'no answer' if c == 0 else c}" for c, n in sorted(errors.items()))
        for label, xs in (
            ("first 200 again (clients on the killed primary)", [r.first_ok_s for r in rs]),
            ("all of them back", [r.all_ok_s for r in rs]),
            ("replica promoted (topology's view)", [r.promoted_s for r in rs]),
        ):
            rows.append(
                [
                    f"{mode}: {label}",
                    f"{percentile(xs, 50):.2f}",
                    f"{percentile(xs, 99):.2f}",
                    f"{min(xs):.2f}-{max(xs):.2f}",
                ]
            )
        rows.append(
            [
                f"{mode}: errors after the kill (all runs), clients hit per run",
                codes or "none",
                "",
                f"{min(r.affected for r in rs)}-{max(r.affected for r in rs)} of {WORKERS}",
            ]
        )
        rows.append(
            [
                f"{mode}: clients on the killed primary; clients elsewhere that got a non-200",
                f"{percentile([r.on_victim for r in rs], 50)}",
                f"{percentile([r.others_hit for r in rs], 50)}",
                f"on the victim {min(r.on_victim for r in rs)}-{max(r.on_victim for r in rs)}"
                f", elsewhere hit {min(r.others_hit for r in rs)}-"
                f"{max(r.others_hit for r in rs)} ({sum(r.others_errors for r in rs)} "
                f"non-200s in all, from {fmt([r.others_first_error_s for r in rs], 2)} s to "
                f"{fmt([r.others_last_error_s for r in rs], 2)} s after the kill)",
            ]
        )
        rows.append(
            [
                f"{mode}: 200s answered between the kill and the promotion (per run)",
                f"{percentile([r.ok_during for r in rs], 50)}",
                f"{percentile([r.ok_during for r in rs], 99)}",
                f"{min(r.ok_during for r in rs)}-{max(r.ok_during for r in rs)}",
            ]
        )
        rows.append(
            [
                f"{mode}: slowest request in flight across the kill (ms); sessions lost (401)",
                f"{percentile([r.slowest_ms for r in rs], 50):.0f}",
                f"{percentile([r.slowest_ms for r in rs], 99):.0f}",
                f"lost: {sum(r.lost for r in rs)}; load {min(r.load for r in rs):.1f}-"
                f"{max(r.load for r in rs):.1f}",
            ]
        )
    s.table(["measure", "p50 s", "p99 s", "range (runs)"], rows)
    return s
