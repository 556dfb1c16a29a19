"""Refresh throughput and latency at 50 connections: tokend against the bare aiohttp ceiling.

    .venv/bin/python -m bench.refresh_bench [--rounds 3] [--duration 10]

Interleaves the contenders (A B A B ...) and prints medians with the min-max spread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import free_port, make_sessions, median, run_wrk, spread, tokend_server, wait_http

HERE = Path(__file__).resolve().parent


def bare_round(duration: int) -> tuple[float, float, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "bare_app.py"), str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        r = run_wrk(
            f"http://127.0.0.1:{port}/auth/refresh",
            connections=50, duration=duration, script=str(HERE / "post.lua"),
        )
        return r.rps, r.p50_ms, r.p99_ms
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def tokend_round(duration: int, sessions: int) -> tuple[float, float, float, dict[int, int]]:
    with tokend_server() as (url, _env):
        bodies = asyncio.run(make_sessions(url, sessions))
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as fh:
            fh.write("\n".join(b["refresh_token"] for b in bodies) + "\n")
        try:
            r = run_wrk(
                url + "/auth/refresh", connections=50, duration=duration,
                script=str(HERE / "refresh.lua"), env={"TOKEN_FILE": fh.name},
            )
        finally:
            os.unlink(fh.name)
        return r.rps, r.p50_ms, r.p99_ms, r.statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    tok: list[tuple[float, float, float]] = []
    bare: list[tuple[float, float, float]] = []
    for i in range(args.rounds):
        rps, p50, p99, statuses = tokend_round(args.duration, args.sessions)
        print(f"round {i + 1} tokend: {rps:.0f} req/s p50 {p50:.1f} ms p99 {p99:.1f} ms "
              f"statuses {statuses}", flush=True)
        tok.append((rps, p50, p99))
        b = bare_round(args.duration)
        print(f"round {i + 1} bare aiohttp: {b[0]:.0f} req/s p50 {b[1]:.1f} ms p99 {b[2]:.1f} ms",
              flush=True)
        bare.append(b)
    t_rps, b_rps = [x[0] for x in tok], [x[0] for x in bare]
    print()
    print("| contender | refresh/s median (min-max) | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    print(f"| tokend /auth/refresh (rotation, Lua, EdDSA) | {median(t_rps):.0f} ({spread(t_rps)}) "
          f"| {median([x[1] for x in tok]):.1f} | {median([x[2] for x in tok]):.1f} |")
    print(f"| bare aiohttp JSON (ceiling) | {median(b_rps):.0f} ({spread(b_rps)}) "
          f"| {median([x[1] for x in bare]):.1f} | {median([x[2] for x in bare]):.1f} |")
    print(f"\ntokend / ceiling: {median(t_rps) / median(b_rps):.2f}")


if __name__ == "__main__":
    main()
