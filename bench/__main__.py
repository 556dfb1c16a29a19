"""tokend against its peers and ceilings, in one command.

    .venv/bin/pip install -e '.[bench,test]'
    .venv/bin/python -m bench all --rounds 3 --out bench/RESULTS.md

Subcommands: refresh, login, verify, revocation, sweep, memory, profile, all (and
subscribers, dpop: the subscriber integrations, bench/subscribers.py and bench/dpop.py;
webhooks: delivery latency, bench/webhooks.py).
The report is markdown on stdout (progress on stderr); targets are printed next to the figures,
never asserted. Needs wrk and the Redis at $TOKEND_REDIS_URL (default 127.0.0.1:6379).

cluster, acks, failover, capacity (``topology``: all four; ``--quick``: small) start
private Redis topologies of their own instead (bench/cluster.py, failover.py, capacity.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable

from bench import contenders, harness
from bench.harness import git_state, median
from bench.report import Section, progress, targets_summary

SECTIONS = ("refresh", "login", "verify", "revocation", "sweep", "memory", "profile")
# Private Redis topologies (bench/cluster.py, failover.py, capacity.py): "topology" runs all
# four; not part of "all".
TOPOLOGY = ("cluster", "acks", "failover", "capacity")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "what",
        choices=(*SECTIONS, "all", *TOPOLOGY, "topology", "subscribers", "dpop", "webhooks"),
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=10, help="seconds per load run")
    p.add_argument(
        "--sessions", type=int, default=200, help="token chains per refresh run (default 200)"
    )
    p.add_argument(
        "--contenders",
        default=",".join(c.key for c in contenders.ALL),
        help="refresh contenders, comma-separated",
    )
    p.add_argument("--revocations", type=int, default=1000)
    p.add_argument("--replay-events", type=int, default=10_000)
    p.add_argument("--sweep-sizes", default="100000,1000000")
    p.add_argument("--memory-sessions", type=int, default=10_000)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=15,
        help="before each load run, wait up to this many seconds for the CPUs to "
        "be under 25%% busy (default 15)",
    )
    p.add_argument("--processes", default="1,2", help="cluster: API process counts (1,2)")
    p.add_argument("--failover-runs", type=int, default=5, help="failover: runs per mode")
    p.add_argument("--capacity-sessions", type=int, default=20_000, help="capacity: memory")
    p.add_argument(
        "--quick",
        action="store_true",
        help="topology sections: 1 round of 3 s, 2 failover runs, 5,000 sessions for memory",
    )
    p.add_argument("--out", help="also write the report to this file")
    return p


def _run(args: argparse.Namespace, name: str) -> Section:
    from bench import profile, redis_state, subscriber, throughput

    if name in TOPOLOGY:
        return _topology(args, name)
    if name == "subscribers":  # bench/subscribers.py: aiohttp, FastAPI, Flask, Django examples
        from bench import subscribers

        return subscribers.subscribers_section(args.quick)
    if name == "dpop":  # bench/dpop.py: a bound token + fresh proof vs bearer, per framework
        from bench import dpop

        return dpop.dpop_section(args.quick)
    if name == "webhooks":  # bench/webhooks.py: delivery latency, woken vs poll only
        from bench import webhooks

        return webhooks.webhooks_section(args.quick)
    chosen = [c for c in contenders.ALL if c.key in args.contenders.split(",")]
    if name in ("verify", "revocation") and (skip := subscriber.example_missing()):
        return skip
    run: dict[str, Callable[[], Section]] = {
        "refresh": lambda: throughput.refresh_section(
            args.rounds, args.duration, args.sessions, chosen
        ),
        "login": lambda: throughput.login_section(args.rounds, args.duration, args.sessions),
        "verify": lambda: subscriber.verify_section(args.rounds, args.duration),
        "revocation": lambda: subscriber.revocation_section(
            args.rounds, args.revocations, args.replay_events
        ),
        "sweep": lambda: redis_state.sweep_section(
            args.rounds, [int(x) for x in args.sweep_sizes.split(",")]
        ),
        "memory": lambda: redis_state.memory_section(args.memory_sessions),
        "profile": lambda: profile.profile_section(args.duration, args.sessions),
    }
    return run[name]()


def _topology(args: argparse.Namespace, name: str) -> Section:
    from bench import capacity, cluster, failover

    rounds, duration = (1, 3.0) if args.quick else (args.rounds, args.duration)
    sessions = max(args.sessions, 200)  # at least one chain per wrk connection
    if name == "cluster":
        procs = [int(x) for x in args.processes.split(",")]
        return cluster.cluster_section(rounds, duration, sessions, procs)
    if name == "acks":
        return cluster.acks_section(rounds, duration, sessions, 1000)
    if name == "failover":
        return failover.failover_section(2 if args.quick else args.failover_runs)
    return capacity.capacity_section(
        duration, sessions, 5000 if args.quick else args.capacity_sessions
    )


def main() -> None:
    args = _parser().parse_args()
    harness.QUIET_WAIT = args.quiet_wait
    started = time.monotonic()
    commit = git_state()
    header = "\n".join(
        [
            "# tokend benchmarks",
            "",
            f"- command: `{shlex.join(['.venv/bin/python', '-m', 'bench', *sys.argv[1:]])}`",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: `nproc` = {os.cpu_count()}, {platform.machine()}, "
            f"Python {platform.python_version()}, load average at start "
            f"{os.getloadavg()[0]:.1f}",
            f"- tokend commit at start: {commit}",
            "- everything on 127.0.0.1, one contender at a time, wrk with one thread",
            "",
        ]
    )
    print(header, flush=True)
    report = [header]
    sections: list[Section] = []
    chosen = {"all": SECTIONS, "topology": TOPOLOGY}.get(args.what, (args.what,))
    for name in chosen:
        progress(f"== {name}")
        seen = len(harness.BACKGROUND)
        try:
            section = _run(args, name)
        except Exception as exc:  # one broken measurement must not lose the others
            traceback.print_exc()
            section = Section(name)
            section.add(f"Failed: {type(exc).__name__}: {exc}".splitlines()[0])
        if bg := harness.BACKGROUND[seen:]:
            section.add(
                f"Background CPU (other processes) in the half second before this "
                f"section's {len(bg)} measured runs: median {median(bg):.0%}, max "
                f"{max(bg):.0%}.",
                "",
            )
        sections.append(section)
        print(section.markdown(), flush=True)
        report.append(section.markdown())
    summary = targets_summary(sections)
    footer = f"\nTotal run time: {(time.monotonic() - started) / 60:.1f} min."
    if (end := git_state()) != commit:
        footer += f" tokend's checkout moved during the run: {commit} at start, {end} at the end."
    if harness.BACKGROUND:
        bg = harness.BACKGROUND
        footer += (
            f" Background CPU (other processes on the machine) in the half second "
            f"before each of the {len(bg)} load runs: median {median(bg):.0%}, max "
            f"{max(bg):.0%} (the harness waits up to {args.quiet_wait:g} s for it to "
            "drop under 25%)."
        )
    footer += "\n"
    print(summary + footer, flush=True)
    report.append(summary + footer)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(report))


if __name__ == "__main__":
    main()
