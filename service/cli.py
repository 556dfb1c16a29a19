"""The `tokend` command line: serve, work, dev, db, users, keys, events, client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import getpass
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, cast

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from tokend_client.redis_target import initialized
from tokend_client.tasks import stop_tasks

from . import migrate
from .app import create_app
from .auth import delete_user, disable_user
from .crypto import Sealer, generate_kek
from .db import make_engine
from .devredis import redis_for_dev
from .errors import TokendError
from .fence import RedisFence
from .http.errors import TokendRunner
from .kek import resolve_kek
from .keys import SqlKeyStore
from .keyspace import Keyspace
from .passwords import PasswordHasher, check_password_rules
from .positions import PositionStore
from .redisconn import close_redis, make_redis, redis_errors
from .sessions import SessionStore
from .settings import Settings
from .users import SqlUserStore, normalize_username

log = logging.getLogger("tokend")


async def serve(
    settings: Settings, *, with_workers: bool = False, sockets: Sequence[socket.socket] = ()
) -> None:
    """Run the API (and optionally the workers) until SIGTERM or SIGINT; on ``sockets``
    already listening (the supervisor's, service/supervisor.py) when given."""
    from workers.main import run_workers

    runner = TokendRunner(create_app(settings), access_log=None)
    await runner.setup()
    sites: list[web.BaseSite] = [web.SockSite(runner, s) for s in sockets]
    for site in sites or [web.TCPSite(runner, settings.host, settings.port)]:
        await site.start()
    settle_gc()
    if sites:
        log.info("tokend listening on %s, pid %d", sites[0].name, os.getpid())
    else:
        log.info("tokend listening on http://%s:%s", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    workers = (
        asyncio.create_task(run_workers(settings, handle_signals=False)) if with_workers else None
    )
    try:
        await stop.wait()
    finally:
        if workers is not None:
            workers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await workers
        await runner.cleanup()


# Young objects a collection waits for: the default (700) collects every few requests.
GC_YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once the app is up: move everything start-up made (modules, the ORM, keys) out of
    the collector's sight and collect young objects less often. A refresh allocates a few
    hundred short-lived objects; with the defaults, full collections that walk every
    start-up object landed in the middle of requests and set the refresh p99."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def add_user(settings: Settings, username: str, password: str) -> str:
    """Create a user from the command line; its id."""
    name = normalize_username(username)
    check_password_rules(password, name)
    engine = make_engine(settings.database_url)
    try:
        store = SqlUserStore(async_sessionmaker(engine, expire_on_commit=False))
        hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        user = await store.create(name, await hasher.hash(password), time.time())
        return user.id
    finally:
        await engine.dispose()


async def disable_user_cli(settings: Settings, username: str, *, delete: bool = False) -> int:
    """Disable (or delete) a user and revoke every session of theirs; how many ended.

    The revocation is checked against the Redis position recorded in SQL, like the API's:
    on a Redis that lost data or was rolled back it fences first, instead of raising the
    write generation past the known position and so hiding the loss from every process.
    """
    engine = make_engine(settings.database_url)
    redis = make_redis(settings.redis, pool_size=2, pool_timeout=5.0)
    try:
        fence = RedisFence.from_settings(
            redis, settings, PositionStore(async_sessionmaker(engine)), time.time
        )
        await fence.start()
        revoked = await (delete_user if delete else disable_user)(
            SqlUserStore(async_sessionmaker(engine, expire_on_commit=False)),
            SessionStore.from_settings(redis, settings, fence),
            username,
            time.time(),
        )
        await fence.checkpoint()
        return revoked
    finally:
        await close_redis(redis)
        await engine.dispose()


async def rotate_keys(settings: Settings) -> int | None:
    """Force a rotation: the next key is published now and signs after the publish delay."""
    from workers.rotation import rotate_and_announce

    engine = make_engine(settings.database_url)
    redis = make_redis(settings.redis, pool_size=2, pool_timeout=5.0)
    try:
        store = SqlKeyStore(async_sessionmaker(engine), Sealer(resolve_kek(settings)))
        return await rotate_and_announce(
            store,
            SessionStore.from_settings(redis, settings),
            alg=settings.signing_alg,
            now=time.time(),
            publish_delay=settings.key_publish_delay,
            reason="manual",
        )
    finally:
        await close_redis(redis)
        await engine.dispose()


TAIL_BATCH = 500
# Each XREAD blocks at most this long: below the client's 5 s socket timeout.
TAIL_BLOCK_MS = 1000


async def tail_events(settings: Settings, since: str | None = None) -> None:
    """Print revocation events as they arrive, one JSON line each, until SIGTERM or SIGINT.

    Only entries of the partitions' streams ``<prefix>:{T}:events`` are printed (each its
    v1 event with its stream ``id`` and ``partition``), read with ``XREAD BLOCK`` after
    the last one printed, one reader per partition. The pub/sub channels are not read at
    all: anyone who may PUBLISH could put anything on them. With ``since`` (a stream entry
    id, or ``-`` for everything kept), each stream is replayed after that entry first;
    without it the tail starts at the streams' ends.
    """
    parts = Keyspace(settings.redis_prefix, settings.redis_partitions).all
    last = _tail_start(since)
    # a blocking XREAD holds its connection: one per partition
    client = make_redis(settings.redis, pool_size=len(parts) + 1, pool_timeout=5.0)
    await initialized(client)
    followers = [
        asyncio.create_task(_follow_stream(client, p.events, p.index, last)) for p in parts
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*followers, stopping], return_when=asyncio.FIRST_COMPLETED)
        for follower in followers:
            if follower.done():
                follower.result()  # it only ends by failing: raise that
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await stop_tasks([*followers, stopping])
        await close_redis(client)


def _tail_start(since: str | None) -> str | None:
    """The stream id to read after (None: the stream's end when the tail starts)."""
    if since is None:
        return None
    if since in ("-", "0"):
        return "0-0"
    ms, sep, seq = since.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise TokendError(f"--from: not a stream entry id: {since!r} (use <ms>-<seq> or '-')")
    return since


async def _follow_stream(client: Redis, stream: str, partition: int, last: str | None) -> None:
    if last is None:
        # A concrete id, not "$": "$" on every read would lose what arrives between reads.
        top = cast(list[tuple[str, Any]], await client.xrevrange(stream, count=1))
        last = top[0][0] if top else "0-0"
    while True:
        reply = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]],
            await client.xread({stream: last}, count=TAIL_BATCH, block=TAIL_BLOCK_MS),
        )
        for _, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                try:
                    event = json.loads(fields.get("event", ""))
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    log.warning("stream entry %s is not an event; skipped", entry_id)
                    continue
                line = {**event, "id": entry_id, "partition": partition}
                print(json.dumps(line, separators=(",", ":")), flush=True)


async def webhooks_cli(settings: Settings, action: str, endpoint: str | None) -> int:
    """`tokend webhooks status` (one JSON line per endpoint; exit 1 when one lost events)
    and `tokend webhooks retry ENDPOINT` (exit 1 when a dead letter failed again)."""
    redis = make_redis(settings.redis, pool_size=2, pool_timeout=5.0)
    try:
        with redis_errors():  # Redis down: one line (main prints TokendError), no traceback
            return await _webhooks_cli(redis, settings, action, endpoint)
    finally:
        await close_redis(redis)


async def _webhooks_cli(redis: Redis, settings: Settings, action: str, endpoint: str | None) -> int:
    from workers.backchannel import delivery_targets, open_targets
    from workers.webhooks import redeliver_dead_letters
    from workers.webhooks_store import WebhookStore

    if action == "retry":
        assert endpoint is not None
        async with open_targets(settings) as targets:
            report = await redeliver_dead_letters(redis, settings, endpoint, targets)
        print(json.dumps(report))
        return 1 if report["failed"] else 0
    store = WebhookStore(redis, Keyspace(settings.redis_prefix, settings.redis_partitions))
    lost = False
    # the webhooks, then the back-channel logout endpoints (bcl-<client id>)
    for ep in delivery_targets(settings, None):
        status = await store.status(ep, time.time())
        print(json.dumps(status, separators=(",", ":")), flush=True)
        if status["lost"]:
            lost = True
            print(
                f"tokend: webhook {ep.id} lost {status['lost']} events (trimmed before "
                "delivery; see docs/webhooks.md)",
                file=sys.stderr,
            )
    return 1 if lost else 0


def run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (Linux, macOS), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the API")
    serve_cmd.add_argument(
        "--processes",
        type=_processes,
        metavar="N",
        help="API processes on the one port, under a supervisor (default: TOKEND_PROCESSES, 1)",
    )
    work = sub.add_parser("work", help="run the background workers")
    work.add_argument(
        "--check",
        action="store_true",
        help="exit non-zero when this host's worker heartbeat is stale",
    )
    sub.add_parser("dev", help="migrate, then run API and workers on embedded defaults")
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="action", required=True)
    add = users_sub.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    disable = users_sub.add_parser("disable", help="disable a user and revoke their sessions")
    disable.add_argument("username")
    delete = users_sub.add_parser("delete", help="revoke a user's sessions, then delete them")
    delete.add_argument("username")
    keys = sub.add_parser("keys", help="signing keys")
    keys.add_argument(
        "action",
        choices=["rotate", "kek"],
        help="rotate: next signing key now; kek: print a new key-encryption key",
    )
    events = sub.add_parser("events", help="revocation events")
    events.add_argument("action", choices=["tail"])
    events.add_argument(
        "--from",
        dest="since",
        metavar="ID",
        help="replay the stream after this entry id first ('-' for all it keeps)",
    )
    webhooks = sub.add_parser("webhooks", help="signed webhook delivery (docs/webhooks.md)")
    webhooks_sub = webhooks.add_subparsers(dest="action", required=True)
    webhooks_sub.add_parser("status", help="per endpoint: position, lag, failures, lost")
    retry = webhooks_sub.add_parser("retry", help="re-deliver an endpoint's dead letters")
    retry.add_argument("endpoint")
    from .client_cli import add_client_parser

    add_client_parser(sub)
    return parser


def _processes(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw!r}")
    return value


def _settings(env: Mapping[str, str], *, processes: int | None = None) -> Settings:
    if processes is not None:  # `serve --processes N` wins over TOKEND_PROCESSES
        env = {**env, "TOKEND_PROCESSES": str(processes)}
    return Settings.from_env(env)


def _serve(settings: Settings) -> int:
    """`tokend serve`: the API in this process, or under a supervisor (--processes N)."""
    resolve_kek(settings)  # once, before any fork: it may create the dev KEK file
    if settings.processes == 1:
        run_fast(serve(settings))
        return 0
    from .supervisor import listen, supervise

    sockets = listen(settings.host, settings.port)
    return supervise(settings.processes, sockets, lambda s: run_fast(serve(settings, sockets=s)))


def _streams(args: argparse.Namespace, settings: Settings) -> int:
    """`tokend events tail` and `tokend webhooks status|retry`: readers of the streams."""
    if args.command == "webhooks":
        return asyncio.run(webhooks_cli(settings, args.action, getattr(args, "endpoint", None)))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail_events(settings, args.since))
    return 0


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Execute one command; the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "keys" and args.action == "kek":
        print(generate_kek())
        return 0
    if args.command == "client":  # a client of some tokend: needs no server settings
        from .client_cli import run_client

        return run_client(args, env)
    settings = _settings(env, processes=getattr(args, "processes", None))
    if args.command == "serve":
        return _serve(settings)
    elif args.command == "work":
        from workers.main import check, run_workers

        if args.check:
            return 0 if asyncio.run(check(settings)) else 1
        asyncio.run(run_workers(settings))
    elif args.command == "dev":
        # Redis first: without one, a single line says how to get it before anything is made.
        with redis_for_dev(settings.redis_url) as url:
            resolve_kek(settings)
            migrate.upgrade(settings.database_url)
            if url != settings.redis_url:
                log.info("started a private redis-server at %s (stopped on exit)", url)
            private = dataclasses.replace(settings.redis, url=url)
            run_fast(serve(dataclasses.replace(settings, redis=private), with_workers=True))
    elif args.command == "db":
        migrate.upgrade(settings.database_url)
        print("database is at the latest schema")
    elif args.command == "users" and args.action == "disable":
        ended = asyncio.run(disable_user_cli(settings, args.username))
        print(json.dumps({"disabled": args.username, "sessions_revoked": ended}))
    elif args.command == "users" and args.action == "delete":
        ended = asyncio.run(disable_user_cli(settings, args.username, delete=True))
        print(json.dumps({"deleted": args.username, "sessions_revoked": ended}))
    elif args.command == "users":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("password: ")
        print(asyncio.run(add_user(settings, args.username, password)))
    elif args.command == "keys":
        generation = asyncio.run(rotate_keys(settings))
        print(json.dumps({"rotated": generation is not None, "generation": generation}))
    elif args.command in ("events", "webhooks"):
        return _streams(args, settings)
    return 0


def main() -> None:
    """Console entry point."""
    try:
        sys.exit(run(sys.argv[1:], os.environ))
    except TokendError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        sys.exit(2)
