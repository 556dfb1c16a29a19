"""Sessions and refresh-token state in Redis, changed only by atomic Lua scripts.

Key names come from service/keyspace.py: a session lives in its user's partition ``T``.
The session hash ``P:{T}:s:<sid>`` holds uid, cid,
scope, created, last, plast, idle, abs, cur, prev, ua, ip, ep, auth, jkt (TTL follows the idle
deadline). ``auth`` is when the credentials were checked, on Redis's clock
(``server_time``). The current refresh token was issued at ``last`` and expires at
``idle``; ``prev`` is honoured until last + grace. The user agent and IP are cut to 64
bytes (http/request.py) so that, with a usual scope, Redis keeps the hash as a compact
listpack. A user's revocation mark ``P:{T}:du:<uid>`` is "<at>[ <kept sid>]": every session
of the user authenticated at or before ``at`` (Redis's clock) is revoked but the kept
one; checked by every script that uses a session and by the deny check (``auth_time`` of
access tokens).

Each script's replies are decoded in service/replies.py.

With a ``fence``, every script that reads or writes refresh-token state also checks that
Redis is not behind the position this process has seen, and fences it when it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from . import replies
from .errors import Unavailable
from .fence import RedisFence, read_checked, run_checked
from .keyspace import DEFAULT_PARTITIONS, Keyspace
from .positions import Position
from .redisbatch import AutoPipeline
from .redisconn import redis_errors
from .replicated import ReplicatedWrites
from .replies import Reported, Rotation
from .retention import StreamRetention
from .settings import Settings

__all__ = [
    "Created",
    "Rotation",
    "SessionGrant",
    "SessionInfo",
    "SessionStore",
    "parse_mark",
]

# A login past the session cap reads the user's sessions and tries again; concurrent
# logins of one user add sessions the read did not see, so it may take a few rounds.
CAP_ATTEMPTS = 16


def _script(name: str) -> str:
    lua = resources.files("service") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Created:
    """What create.lua did: ``refused`` when the user was revoked since the credentials
    were checked (nothing written); ``evicted`` the sessions ended by the per-user cap."""

    refused: bool
    iat: int = 0
    exp: int = 0
    evicted: tuple[str, ...] = ()
    #: The user's partition's last fence time: the session's access tokens must be issued
    #: after its second (it denies every token with ``iat <= fence``). None: never fenced.
    fence: float | None = None


def parse_mark(value: str) -> tuple[float, str]:
    """A user's revocation mark: (at, kept sid or "")."""
    at, _, keep = value.partition(" ")
    return float(at), keep


@dataclass(frozen=True)
class SessionGrant:
    """Who holds a live session and what it was granted (see ``live_grant``)."""

    uid: str
    client_id: str
    scope: str


@dataclass(frozen=True)
class SessionInfo:
    sid: str
    uid: str
    client_id: str
    created: float
    last_used: float
    idle_deadline: float
    absolute_deadline: float
    user_agent: str
    ip: str
    #: Whether the session's login proved a DPoP key (its tokens are bound to it).
    bound: bool = False


class SessionStore:
    """Refresh-token sessions, deny entries and revocation events in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        access_ttl: int,
        leeway: int,
        idle_ttl: int,
        absolute_ttl: int,
        grace: int,
        max_sessions: int = 0,
        fence: RedisFence | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        replicated: ReplicatedWrites | None = None,
        retention: int | None = None,
        trim: StreamRetention | None = None,
    ) -> None:
        self.redis = redis
        self.fence = fence
        self.replicated = replicated
        self.clustered = isinstance(redis, RedisCluster)
        self.prefix = prefix
        self.access_ttl = access_ttl
        self.leeway = leeway
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.grace = grace
        self.max_sessions = max_sessions
        self.keys = Keyspace(prefix, partitions)
        # Every script's KEYS start with its partition's head (lua/common.lua); ARGV with
        # the partition's known position and the retention.
        # The stream keeps every revocation that can still matter, plus a margin (with
        # webhooks, Settings.stream_retention: at least TOKEND_WEBHOOK_RETENTION).
        self.retention = access_ttl + leeway + 300 if retention is None else retention
        # what the scripts trim to: that, or longer when a deliverer needs longer
        self.trim = trim or StreamRetention(redis, self.keys.retention, self.retention)
        self._create = redis.register_script(_script("create"))
        self._rotate = redis.register_script(_script("rotate"))
        self._revoke = redis.register_script(_script("revoke"))
        self._revoke_user = redis.register_script(_script("revoke_user"))
        self._revoke_token = redis.register_script(_script("revoke_token"))
        self._expire = redis.register_script(_script("expire"))
        self._peek = redis.register_script(_script("peek"))
        # The hot paths (rotate, deny check) share pipelines with concurrent requests.
        self._batch = AutoPipeline(redis)
        self._emit = redis.register_script(_script("emit"))

    @classmethod
    def from_settings(
        cls,
        redis: aioredis.Redis,
        settings: Settings,
        fence: RedisFence | None = None,
        replicated: ReplicatedWrites | None = None,
    ) -> SessionStore:
        """The store with the lifetimes and prefix of ``settings``."""
        return cls(
            redis,
            prefix=settings.redis_prefix,
            access_ttl=settings.access_ttl,
            leeway=settings.leeway,
            idle_ttl=settings.refresh_idle_ttl,
            absolute_ttl=settings.refresh_absolute_ttl,
            grace=settings.refresh_reuse_grace,
            max_sessions=settings.max_sessions_per_user,
            fence=fence,
            partitions=settings.redis_partitions,
            replicated=replicated or (fence.replicated if fence is not None else None),
            retention=settings.stream_retention,
            trim=fence.trim if fence is not None else None,
        )

    async def _trim(self) -> int:
        """The retention the next write trims its stream to (service/retention.py)."""
        await self.trim.refresh()
        return self.trim.seconds

    async def server_time(self) -> float:
        """Redis's clock, to the microsecond: the one clock that session authentication
        times and user revocation marks are compared on, whichever process asks.

        On a cluster, the earliest of the primaries' clocks: a mark is taken on the
        user's primary (not known before the user row is read), and a revocation after
        this moment must get a later mark than this time on every primary's clock."""
        with redis_errors():
            if self.clustered:
                times = cast(
                    dict[Any, tuple[int, int]],
                    await self.redis.execute_command(  # type: ignore[no-untyped-call]
                        "TIME", target_nodes=RedisCluster.PRIMARIES
                    ),
                )
                seconds, micros = min(times.values())
            else:
                seconds, micros = await self.redis.time()
        return round(int(seconds) + int(micros) / 1e6, 6)

    async def _durable(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a write that must be on the replicas before it is answered."""
        if self.replicated is None:
            return await script(keys=keys, args=args)
        return await self.replicated.script(script, keys, args)

    def deny_until(self, now: float) -> int:
        """The last moment an access token issued up to ``now`` can still be accepted."""
        return int(now) + self.access_ttl + self.leeway + 1

    async def create(
        self,
        *,
        sid: str,
        uid: str,
        jti: str,
        now: float,
        client_id: str = "",
        scope: str = "",
        user_agent: str = "",
        ip: str = "",
        checked_at: float,
        jkt: str = "",
    ) -> Created:
        """Record a new session whose current refresh token is ``jti``, unless the user
        was revoked at or after ``checked_at`` (``server_time`` taken before the user's
        credentials were read): then nothing is written and the result is ``refused``.
        ``jkt``: the DPoP key the login proved (the session list shows it as bound)."""
        iat = int(now)
        absolute = iat + self.absolute_ttl
        idle = min(iat + self.idle_ttl, absolute)
        p = self.keys.of(uid)
        own = [p.session(sid), p.user_index(uid), p.user_mark(uid), p.expiry]
        args: list[Any] = [sid, uid, client_id, scope, now, idle, absolute, jti, user_agent, ip]
        args += [f"{checked_at:.6f}", self.max_sessions, self.deny_until(now), jkt]
        victims: list[str] = []
        trim = await self._trim()
        for _ in range(CAP_ATTEMPTS):
            keys = [*p.head, *own]
            for v in victims:
                keys += [p.session(v), p.deny_session(v), p.expiry]
            argv = [*args, *victims]

            def run(known: tuple[str, str], keys: list[str] = keys, argv: list[Any] = argv) -> Any:
                return self._durable(self._create, keys, [*known, trim, *argv])

            result = await run_checked(self.fence, p.index, run)
            reply = replies.created(result)
            if reply.status == "revoked":
                return Created(refused=True)
            if reply.status == "ok":
                self._observe(p.index, reply.reported, replicated=True)
                return Created(False, iat, idle, reply.evicted, reply.fence)
            victims = await self._cap_candidates(uid)
        raise Unavailable("too many concurrent logins of one user past the session cap")

    async def _cap_candidates(self, uid: str) -> list[str]:
        """The user's sessions a login past the cap may end: the whole index (create.lua
        reads their last use and ends the least recently used)."""
        with redis_errors():
            index = self.keys.of(uid).user_index(uid)
            return cast(list[str], await self.redis.zrange(index, 0, -1))

    async def rotate(
        self,
        *,
        sid: str,
        uid: str,
        jti: str,
        new_jti: str,
        now: float,
        user_agent: str = "",
        ip: str = "",
        scope: str | None = None,
        rot: int | None = None,
        iat: int = 0,
    ) -> Rotation:
        """Atomically rotate, replay within grace, roll forward, or detect reuse (see
        rotate.lua). ``uid`` is the user the refresh token names, ``rot`` and ``iat``
        its rotation number (None: a token without one) and issue time; ``scope``, when
        given, must stay within the session's grant, else the status is ``scope`` and
        nothing changes."""
        p = self.keys.of(uid)
        keys = [
            *p.head,
            p.session(sid),
            p.user_mark(uid),
            p.user_index(uid),
            p.expiry,
            p.deny_session(sid),
        ]
        args: list[Any] = [sid, jti, now, new_jti, self.idle_ttl, self.grace, self.deny_until(now)]
        args += [user_agent, ip, uid, "0" if scope is None else "1", scope or ""]
        args += ["" if rot is None else rot, iat]
        trim = await self._trim()
        result = await run_checked(
            self.fence,
            p.index,
            lambda known: self._batch.script(self._rotate, keys, [*known, trim, *args]),
        )
        rotation, position = replies.rotation(result)
        self._observe(p.index, position, replicated=False)
        return rotation

    def _observe(self, part: int, reported: Reported | None, *, replicated: bool) -> None:
        """Note the position a script reported for its write (None: it wrote nothing):
        a write that did not wait for the replicas counts only when there are none."""
        if reported is None or self.fence is None:
            return
        gen, epoch = reported
        if epoch and (replicated or self.fence.trusts_every_write):
            self.fence.observe(part, Position(int(epoch), int(gen)))

    def _written(self, part: int, result: list[Any]) -> int:
        """The count of a revocation script's reply, noting the position it reports."""
        revocation = replies.revocation(result)
        self._observe(part, revocation.reported, replicated=True)
        return revocation.count

    async def revoke(
        self, *, sid: str, now: float, reason: str, owner: str, force: bool = False
    ) -> bool:
        """Revoke one of ``owner``'s sessions; True when something was revoked."""
        uid = owner
        p = self.keys.of(uid)
        keys = [*p.head, p.session(sid), p.deny_session(sid), p.user_index(uid), p.expiry]
        args: list[Any] = [
            sid,
            uid,
            owner,
            reason,
            now,
            self.deny_until(now),
            "1" if force else "0",
        ]
        trim = await self._trim()
        result = await run_checked(
            self.fence,
            p.index,
            lambda known: self._durable(self._revoke, keys, [*known, trim, *args]),
        )
        return bool(self._written(p.index, result))

    async def revoke_user(self, *, uid: str, now: float, reason: str, keep_sid: str = "") -> int:
        """Revoke all of a user's sessions, or all but ``keep_sid``, in O(1) (one mark,
        one ``user.revoked`` event); how many sessions were live."""
        p = self.keys.of(uid)
        kept = p.session(keep_sid) if keep_sid else p.user_index(uid)
        keys = [*p.head, p.user_index(uid), p.user_mark(uid), kept]
        args: list[Any] = [uid, reason, self.deny_until(now), keep_sid]
        trim = await self._trim()
        result = await run_checked(
            self.fence,
            p.index,
            lambda known: self._durable(self._revoke_user, keys, [*known, trim, *args]),
        )
        return self._written(p.index, result)

    async def revoke_access_token(
        self, *, jti: str, sub: str, sid: str, exp: float, now: float, reason: str
    ) -> bool:
        """Deny one access token until its expiry; True on the first revocation."""
        p = self.keys.of(sub)
        keys = [*p.head, p.deny_token(jti)]
        args: list[Any] = [jti, sub, sid, reason, now, int(exp) + self.leeway + 1]
        trim = await self._trim()
        result = await run_checked(
            self.fence,
            p.index,
            lambda known: self._durable(self._revoke_token, keys, [*known, trim, *args]),
        )
        return bool(self._written(p.index, result))

    async def sweep_expired(self, *, partition: int, now: float, batch: int) -> int:
        """End up to ``batch`` due sessions of one partition; how many ended.

        The due members are read first; expire.lua then judges each again, atomically
        for the whole batch, so a member another sweep took meanwhile is skipped and each
        session.expired is published once.
        """
        p = self.keys.partition(partition)
        shard_key = p.expiry
        with redis_errors():
            due = cast(
                list[str],
                await self.redis.zrangebyscore(shard_key, "-inf", now, start=0, num=batch),
            )
            if not due:
                return 0
            keys = [*p.head, shard_key]
            for member in due:
                sid, _, uid = member.partition(":")
                keys += [p.session(sid), p.user_index(uid), p.user_mark(uid)]
            trim = await self._trim()
            n = await self._expire(keys=keys, args=["", "", trim, now, *due])
        return replies.expired(n)

    async def publish(self, event: dict[str, Any]) -> str:
        """Append an event with no state change (key.rotated) to partition 0's stream."""
        trim = await self._trim()
        with redis_errors():
            entry_id = await self._emit(
                keys=self.keys.partition(0).head, args=["", "", trim, json.dumps(event)]
            )
        return replies.emitted(entry_id)

    async def is_denied(
        self, *, sid: str, uid: str, jti: str, iat: float, auth_time: float | None = None
    ) -> bool:
        """Whether an access token is revoked: its session, its user's revocation mark
        (sessions authenticated at or before it, by ``auth_time``; tokens without one by
        ``iat``), itself, or a fence after Redis lost data."""
        p = self.keys.of(uid)
        ds, du, dj, fenced, _, _ = await read_checked(
            self.fence,
            p.index,
            lambda: self._batch.execute(
                "MGET",
                p.deny_session(sid),
                p.user_mark(uid),
                p.deny_token(jti),
                p.fence,
                p.epoch,
                p.gen,
            ),
        )
        if ds is not None or dj is not None:
            return True
        # iat has whole seconds: a token from the revocation's own second counts as before it.
        if fenced is not None and iat <= float(fenced):
            return True
        if du is None:
            return False
        if auth_time is not None:
            return self._under_mark(sid, auth_time, du)  # both on Redis's clock
        mark_at, keep = parse_mark(du)
        if sid == keep or iat > mark_at:
            return False
        if int(iat) < int(mark_at):
            return True
        # A token without auth_time from the user revocation's own second: issued before
        # it, unless its session was authenticated after the mark.
        with redis_errors():
            auth, created = await self.redis.hmget(p.session(sid), ["auth", "created"])
        return self._under_mark(sid, cast(str | None, auth or created), du)

    async def get(self, uid: str, sid: str) -> SessionInfo | None:
        """One of ``uid``'s sessions' public state, or None when it has ended."""
        with redis_errors():
            key = self.keys.of(uid).session(sid)
            fields = cast(dict[str, str], await self.redis.hgetall(key))
        return _info(sid, fields) if fields else None

    async def live_grant(
        self, *, sid: str, jti: str, now: float, uid: str, rot: int | None = None
    ) -> SessionGrant | None:
        """The session's grant while ``jti`` may still refresh it, else None (read-only).

        rotate.lua's rule itself (peek.lua shares it through common.lua), read without
        writing. ``uid``: the user the token names, ``rot`` its rotation number. Used by
        introspection and by the token endpoint to refuse a widened scope before rotating.
        """
        p = self.keys.of(uid)
        with redis_errors():
            result = await self._peek(
                keys=[*p.head, p.session(sid), p.user_mark(uid)],
                args=["", "", self.retention, sid, jti, now, self.grace, uid, rot or ""],
            )
        peek = replies.peek(result)
        if not peek.live:
            return None
        return SessionGrant(uid=peek.uid, client_id=peek.client_id, scope=peek.scope)

    @staticmethod
    def _under_mark(sid: str, auth: float | str | None, mark: str) -> bool:
        """Lua's revoked_by_mark: the session was authenticated at or before the mark
        (an unknown time counts as before), and it is not the one the mark keeps."""
        mark_at, keep = parse_mark(mark)
        return sid != keep and (auth is None or float(auth) <= mark_at)

    async def list_for_user(
        self, uid: str, now: float, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[SessionInfo], int | None]:
        """One page of the user's live sessions, newest first, and the offset of the next
        page (None on the last). Index entries of ended sessions are pruned."""
        p = self.keys.of(uid)
        index = p.user_index(uid)
        with redis_errors():
            await self.redis.zremrangebyscore(index, "-inf", now)
            # The index is scored by absolute deadline: newest first is highest first.
            sids = cast(
                list[str], await self.redis.zrange(index, offset, offset + limit, desc=True)
            )
            more = len(sids) > limit
            sids = sids[:limit]
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.hgetall(p.session(sid))
                rows: list[dict[str, str]] = await pipe.execute()
            gone = [sid for sid, row in zip(sids, rows, strict=True) if not row]
            if gone:
                await self.redis.zrem(index, *gone)
            epoch_raw, mark = await self.redis.mget(p.epoch, p.user_mark(uid))
        epoch = int(epoch_raw or 0)
        infos = [
            _info(sid, row)
            for sid, row in zip(sids, rows, strict=True)
            if row
            and int(row.get("ep", 1)) >= epoch
            and not (mark is not None and self._under_mark(sid, _began(row), str(mark)))
        ]
        live = [s for s in infos if s.idle_deadline > now and s.absolute_deadline > now]
        page = sorted(live, key=lambda s: s.created, reverse=True)
        return page, (offset + limit if more else None)


def _began(row: dict[str, str]) -> str | None:
    """When a session's credentials were checked (``created`` for sessions recorded
    before tokend kept ``auth``)."""
    return row.get("auth") or row.get("created")


def _info(sid: str, row: dict[str, str]) -> SessionInfo:
    return SessionInfo(
        sid=sid,
        uid=row.get("uid", ""),
        client_id=row.get("cid", ""),
        created=float(row.get("created", 0)),
        last_used=float(row.get("last", 0)),
        idle_deadline=float(row.get("idle", 0)),
        absolute_deadline=float(row.get("abs", 0)),
        user_agent=row.get("ua", ""),
        ip=row.get("ip", ""),
        bound=bool(row.get("jkt")),
    )
