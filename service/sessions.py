"""Sessions and refresh-token state in Redis, changed only by atomic Lua scripts.

Keys (``P`` is the prefix; one session's keys share the ``{sid}`` hash slot):

    P:s:{sid}    hash: uid, cid, scope, created, last, plast, idle, abs, cur, prev, ua, ip, ep,
                 auth (TTL follows the idle deadline). ``auth`` is when the credentials
                 were checked, on Redis's clock (``server_time``). The current refresh
                 token was issued at ``last`` and expires at ``idle``; ``prev`` is
                 honoured until last + grace.
                 The user agent and IP are cut to 64 bytes (http/request.py) so that,
                 with a usual scope, Redis keeps the hash as a compact listpack.
    P:ds:{sid}   the session's access tokens are denied (TTL: until they expire)
    P:u:<uid>    zset of the user's sids scored by absolute deadline
    P:du:<uid>   the user's revocation mark "<at>[ <kept sid>]": every session of the
                 user authenticated at or before ``at`` (Redis's clock) is revoked,
                 but the kept one; checked by every script that uses a session and by
                 the deny check (``auth_time`` of access tokens)
    P:dj:<jti>   this access token is denied
    P:exp:<n>    expiry index shard n (of EXPIRY_SHARDS): zset of "sid:uid" by idle deadline
    P:events     stream of revocation events;  P:revocations  channel of the same
    P:epoch, P:gen, P:fence   the data's position and the last fence (see fence.py)

With a ``fence``, every script that reads or writes refresh-token state also checks that
Redis is not behind the position this process has seen, and fences it when it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis

from .fence import Position, RedisFence, read_checked, run_checked
from .redisbatch import AutoPipeline
from .redisconn import redis_errors
from .settings import Settings

# Must match EXPIRY_SHARDS in lua/common.lua.
EXPIRY_SHARDS = 16


def _script(name: str) -> str:
    lua = resources.files("service") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Rotation:
    """What a refresh did: ``status`` is rotated, grace, reuse, expired, unknown, fenced,
    revoked (ended by its user's revocation mark) or mismatch (another user's session).

    On reuse, ``reuse_kind`` is ``concurrent`` (within the grace window of the last
    rotation: most likely a client's own race) or ``replay``, and ``other_ip`` and
    ``other_ua`` are those of the session's last legitimate use.
    """

    status: str
    uid: str = ""
    jti: str = ""
    iat: int = 0
    exp: int = 0
    client_id: str = ""
    scope: str = ""
    auth: float = 0.0
    reuse_kind: str = ""
    other_ip: str = ""
    other_ua: str = ""


def _rotation(result: list[Any]) -> tuple[Rotation, tuple[Any, Any] | None]:
    """rotate.lua's reply (see the script's header) and the position it reports."""
    status = result[0]
    if status in ("rotated", "grace"):
        _, uid, jti, iat, exp, cid, scope, gen, epoch, auth = result
        rotation = Rotation(
            status, uid, jti, int(iat), int(exp), cid or "", scope or "", float(auth or 0)
        )
        return rotation, (gen, epoch)
    if status == "reuse":
        _, uid, gen, epoch, kind, ip, ua = result
        return Rotation(status, uid, reuse_kind=kind, other_ip=ip, other_ua=ua), (gen, epoch)
    return Rotation(status, result[1] if len(result) > 1 else ""), None


@dataclass(frozen=True)
class Created:
    """What create.lua did: ``refused`` when the user was revoked since the credentials
    were checked (nothing written); ``evicted`` the sessions ended by the per-user cap."""

    refused: bool
    iat: int = 0
    exp: int = 0
    evicted: tuple[str, ...] = ()


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
    ) -> None:
        self.redis = redis
        self.fence = fence
        self.prefix = prefix
        self.access_ttl = access_ttl
        self.leeway = leeway
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.grace = grace
        self.max_sessions = max_sessions
        # The stream keeps every revocation that can still matter, plus a margin.
        self.retention = access_ttl + leeway + 300
        self._create = redis.register_script(_script("create"))
        self._rotate = redis.register_script(_script("rotate"))
        self._revoke = redis.register_script(_script("revoke"))
        self._revoke_user = redis.register_script(_script("revoke_user"))
        self._revoke_token = redis.register_script(_script("revoke_token"))
        self._expire = redis.register_script(_script("expire"))
        # The hot paths (rotate, deny check) share pipelines with concurrent requests.
        self._batch = AutoPipeline(redis)
        self._emit = redis.register_script(_script("emit"))

    @classmethod
    def from_settings(
        cls, redis: aioredis.Redis, settings: Settings, fence: RedisFence | None = None
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
        )

    # key names
    def session_key(self, sid: str) -> str:
        return f"{self.prefix}:s:{{{sid}}}"

    def deny_session_key(self, sid: str) -> str:
        return f"{self.prefix}:ds:{{{sid}}}"

    def user_index_key(self, uid: str) -> str:
        return f"{self.prefix}:u:{uid}"

    def deny_user_key(self, uid: str) -> str:
        return f"{self.prefix}:du:{uid}"

    def deny_token_key(self, jti: str) -> str:
        return f"{self.prefix}:dj:{jti}"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}:events"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:revocations"

    async def server_time(self) -> float:
        """Redis's clock, to the microsecond: the one clock that session authentication
        times and user revocation marks are compared on, whichever process asks."""
        with redis_errors():
            seconds, micros = await self.redis.time()
        return round(int(seconds) + int(micros) / 1e6, 6)

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
    ) -> Created:
        """Record a new session whose current refresh token is ``jti``, unless the user
        was revoked at or after ``checked_at`` (``server_time`` taken before the user's
        credentials were read): then nothing is written and the result is ``refused``."""
        iat = int(now)
        absolute = iat + self.absolute_ttl
        idle = min(iat + self.idle_ttl, absolute)
        result = await run_checked(
            self.fence,
            lambda known: self._create(
                keys=[self.session_key(sid), self.user_index_key(uid), self.deny_user_key(uid)],
                args=[
                    sid,
                    uid,
                    client_id,
                    scope,
                    now,
                    idle,
                    absolute,
                    jti,
                    user_agent,
                    ip,
                    self.prefix,
                    *known,
                    f"{checked_at:.6f}",
                    self.max_sessions,
                    self.deny_until(now),
                    self.retention,
                ],
            ),
        )
        if result[0] == "revoked":
            return Created(refused=True)
        self._observe(result[1], result[2])
        return Created(False, iat, idle, tuple(result[3:]))

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
    ) -> Rotation:
        """Atomically rotate, replay within grace, or detect reuse (see rotate.lua).
        ``uid`` is the user the refresh token names."""
        result = await run_checked(
            self.fence,
            lambda known: self._batch.script(
                self._rotate,
                [self.session_key(sid), self.deny_user_key(uid)],
                [
                    self.prefix,
                    sid,
                    jti,
                    now,
                    new_jti,
                    self.idle_ttl,
                    self.grace,
                    self.deny_until(now),
                    self.retention,
                    user_agent,
                    ip,
                    *known,
                    uid,
                ],
            ),
        )
        rotation, position = _rotation(result)
        if position is not None:
            self._observe(*position)
        return rotation

    def _observe(self, gen: Any, epoch: Any) -> None:
        if self.fence is not None and epoch:
            self.fence.observe(Position(int(epoch), int(gen)))

    def _written(self, result: list[Any]) -> int:
        """The count of a revocation script's reply, noting the position it reports."""
        if len(result) >= 3:
            self._observe(result[1], result[2])
        return int(result[0])

    async def revoke(
        self, *, sid: str, now: float, reason: str, owner: str = "", force: bool = False
    ) -> bool:
        """Revoke one session (only ``owner``'s when given); True when something was revoked."""
        result = await run_checked(
            self.fence,
            lambda known: self._revoke(
                keys=[self.session_key(sid)],
                args=[
                    self.prefix,
                    sid,
                    owner,
                    reason,
                    now,
                    self.deny_until(now),
                    self.retention,
                    "1" if force else "0",
                    *known,
                ],
            ),
        )
        return bool(self._written(result))

    async def revoke_user(self, *, uid: str, now: float, reason: str, keep_sid: str = "") -> int:
        """Revoke all of a user's sessions, or all but ``keep_sid``, in O(1) (one mark,
        one ``user.revoked`` event); how many sessions were live."""
        kept = self.session_key(keep_sid) if keep_sid else self.user_index_key(uid)
        result = await run_checked(
            self.fence,
            lambda known: self._revoke_user(
                keys=[self.user_index_key(uid), self.deny_user_key(uid), kept],
                args=[
                    self.prefix,
                    uid,
                    reason,
                    self.deny_until(now),
                    self.retention,
                    keep_sid,
                    *known,
                ],
            ),
        )
        return self._written(result)

    async def revoke_access_token(
        self, *, jti: str, sub: str, sid: str, exp: float, now: float, reason: str
    ) -> bool:
        """Deny one access token until its expiry; True on the first revocation."""
        result = await run_checked(
            self.fence,
            lambda known: self._revoke_token(
                keys=[self.deny_token_key(jti)],
                args=[
                    self.prefix,
                    jti,
                    sub,
                    sid,
                    reason,
                    now,
                    int(exp) + self.leeway + 1,
                    self.retention,
                    *known,
                ],
            ),
        )
        return bool(self._written(result))

    def expiry_key(self, shard: int) -> str:
        return f"{self.prefix}:exp:{shard}"

    async def sweep_expired(self, *, shard: int, now: float, batch: int) -> int:
        """End up to ``batch`` due sessions of one expiry shard; how many ended."""
        with redis_errors():
            n = await self._expire(
                keys=[self.expiry_key(shard)],
                args=[self.prefix, now, batch, self.retention],
            )
        return int(n)

    async def publish(self, event: dict[str, Any]) -> str:
        """Append an event with no state change (key.rotated) to the stream and channel."""
        with redis_errors():
            entry_id = await self._emit(
                args=[self.prefix, self.retention, json.dumps(event)],
            )
        return str(entry_id)

    async def is_denied(
        self, *, sid: str, uid: str, jti: str, iat: float, auth_time: float | None = None
    ) -> bool:
        """Whether an access token is revoked: its session, its user's revocation mark
        (sessions authenticated at or before it, by ``auth_time``; tokens without one by
        ``iat``), itself, or a fence after Redis lost data."""
        ds, du, dj, fenced, _, _ = await read_checked(
            self.fence,
            lambda: self._batch.execute(
                "MGET",
                self.deny_session_key(sid),
                self.deny_user_key(uid),
                self.deny_token_key(jti),
                f"{self.prefix}:fence",
                f"{self.prefix}:epoch",
                f"{self.prefix}:gen",
            ),
        )
        if ds is not None or dj is not None:
            return True
        # iat has whole seconds: a token from the revocation's own second counts as before it.
        if fenced is not None and iat <= float(fenced):
            return True
        if du is None:
            return False
        mark_at, keep = parse_mark(du)
        if sid == keep:
            return False
        if auth_time is not None:
            return auth_time <= mark_at  # both on Redis's clock
        if iat > mark_at:
            return False
        if int(iat) < int(mark_at):
            return True
        # A token without auth_time from the user revocation's own second: issued before
        # it, unless its session was authenticated after the mark.
        with redis_errors():
            auth, created = await self.redis.hmget(self.session_key(sid), ["auth", "created"])
        began = auth or created
        return began is None or float(began) <= mark_at

    async def get(self, sid: str) -> SessionInfo | None:
        """One session's public state, or None when it has ended."""
        with redis_errors():
            fields = cast(dict[str, str], await self.redis.hgetall(self.session_key(sid)))
        return _info(sid, fields) if fields else None

    async def live_grant(self, *, sid: str, jti: str, now: float) -> SessionGrant | None:
        """The session's grant while ``jti`` may still refresh it, else None (read-only).

        The rule of rotate.lua, read without writing: the session is of the current epoch,
        not under its user's revocation mark, unexpired, and ``jti`` is its current refresh
        token or the previous one within the grace. Used by introspection and by the
        token endpoint to refuse a widened scope before rotating.
        """
        with redis_errors():
            row = await self.redis.hmget(
                self.session_key(sid),
                [
                    "uid",
                    "cur",
                    "prev",
                    "last",
                    "idle",
                    "abs",
                    "cid",
                    "scope",
                    "ep",
                    "auth",
                    "created",
                ],
            )
            uid, cur, prev, last, idle, absolute, cid, scope, ep, auth, created = cast(
                list[str | None], row
            )
            if uid is None or idle is None or absolute is None:
                return None
            epoch, mark = await self.redis.mget(f"{self.prefix}:epoch", self.deny_user_key(uid))
        if int(ep or 1) < int(epoch or 0):
            return None  # fenced: rotate.lua ends it on its next use
        if mark is not None and self._under_mark(sid, auth or created, str(mark)):
            return None  # revoked with its user: rotate.lua ends it on its next use
        if now >= float(idle) or now >= float(absolute):
            return None
        in_grace = jti == prev and last is not None and now < float(last) + self.grace
        if jti != cur and not in_grace:
            return None
        return SessionGrant(uid=uid, client_id=cid or "", scope=scope or "")

    @staticmethod
    def _under_mark(sid: str, auth: str | None, mark: str) -> bool:
        """Lua's revoked_by_mark: the session was authenticated at or before the mark."""
        mark_at, keep = parse_mark(mark)
        return sid != keep and (auth is None or float(auth) <= mark_at)

    async def list_for_user(
        self, uid: str, now: float, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[SessionInfo], int | None]:
        """One page of the user's live sessions, newest first, and the offset of the next
        page (None on the last). Index entries of ended sessions are pruned."""
        index = self.user_index_key(uid)
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
                    pipe.hgetall(self.session_key(sid))
                rows: list[dict[str, str]] = await pipe.execute()
            gone = [sid for sid, row in zip(sids, rows, strict=True) if not row]
            if gone:
                await self.redis.zrem(index, *gone)
            epoch_raw, mark = await self.redis.mget(f"{self.prefix}:epoch", self.deny_user_key(uid))
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
    )
