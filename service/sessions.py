"""Sessions and refresh-token state in Redis, changed only by atomic Lua scripts.

Keys (``P`` is the prefix; one session's keys share the ``{sid}`` hash slot):

    P:s:{sid}    hash: uid, cid, scope, created, last, idle, abs, cur, prev, ua, ip, ep
                 (TTL follows the idle deadline). The current refresh token was issued at
                 ``last`` and expires at ``idle``; ``prev`` is honoured until last + grace.
                 The user agent and IP are cut to 64 bytes (http/request.py) so that,
                 with a usual scope, Redis keeps the hash as a compact listpack.
    P:ds:{sid}   the session's access tokens are denied (TTL: until they expire)
    P:u:<uid>    zset of the user's sids scored by absolute deadline
    P:du:<uid>   the user's access tokens issued before this time are denied
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
    """What a refresh did: ``status`` is rotated, grace, reuse, expired, unknown or fenced."""

    status: str
    uid: str = ""
    jti: str = ""
    iat: int = 0
    exp: int = 0
    client_id: str = ""
    scope: str = ""


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
    ) -> tuple[int, int]:
        """Record a new session whose current refresh token is ``jti``; (iat, exp) of it."""
        iat = int(now)
        absolute = iat + self.absolute_ttl
        idle = min(iat + self.idle_ttl, absolute)
        await run_checked(
            self.fence,
            lambda known: self._create(
                keys=[self.session_key(sid), self.user_index_key(uid)],
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
                ],
            ),
        )
        return iat, idle

    async def rotate(
        self, *, sid: str, jti: str, new_jti: str, now: float, user_agent: str = "", ip: str = ""
    ) -> Rotation:
        """Atomically rotate, replay within grace, or detect reuse (see rotate.lua)."""
        result = await run_checked(
            self.fence,
            lambda known: self._batch.script(
                self._rotate,
                [self.session_key(sid)],
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
                ],
            ),
        )
        status = result[0]
        if status in ("rotated", "grace"):
            self._observe(result[7], result[8])
            return Rotation(
                status,
                result[1],
                result[2],
                int(result[3]),
                int(result[4]),
                result[5] or "",
                result[6] or "",
            )
        if status == "reuse":
            self._observe(result[2], result[3])
        return Rotation(status, result[1] if len(result) > 1 else "")

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
        with redis_errors():
            result = await self._revoke(
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
                ],
            )
        return bool(self._written(result))

    async def revoke_user(self, *, uid: str, now: float, reason: str, keep_sid: str = "") -> int:
        """Revoke all of a user's sessions, or all but ``keep_sid``; how many."""
        with redis_errors():
            result = await self._revoke_user(
                keys=[self.user_index_key(uid), self.deny_user_key(uid)],
                args=[
                    self.prefix,
                    uid,
                    reason,
                    now,
                    self.deny_until(now),
                    self.retention,
                    keep_sid,
                ],
            )
        return self._written(result)

    async def revoke_access_token(
        self, *, jti: str, sub: str, sid: str, exp: float, now: float, reason: str
    ) -> bool:
        """Deny one access token until its expiry; True on the first revocation."""
        with redis_errors():
            result = await self._revoke_token(
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
                ],
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

    async def is_denied(self, *, sid: str, uid: str, jti: str, iat: float) -> bool:
        """Whether an access token is revoked (its session, its user before iat, itself, or
        a fence after Redis lost data)."""
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
        if du is None or iat > float(du):
            return False
        if int(iat) < int(float(du)):
            return True
        # A token from the user revocation's own second: issued before it, unless its
        # session began after it (a login right after logout-all). revoke_user.lua ended
        # every session the user had (hash deleted, sid denied), so a live session hash
        # means the session, and so the token, came later.
        with redis_errors():
            return not await self.redis.exists(self.session_key(sid))

    async def get(self, sid: str) -> SessionInfo | None:
        """One session's public state, or None when it has ended."""
        with redis_errors():
            fields = cast(dict[str, str], await self.redis.hgetall(self.session_key(sid)))
        return _info(sid, fields) if fields else None

    async def live_grant(self, *, sid: str, jti: str, now: float) -> SessionGrant | None:
        """The session's grant while ``jti`` may still refresh it, else None (read-only).

        Mirrors rotate.lua: the session is unexpired and ``jti`` is its current refresh
        token or the previous one within the grace. Used by introspection and by the
        token endpoint to refuse a widened scope before rotating.
        """
        with redis_errors():
            row = await self.redis.hmget(
                self.session_key(sid),
                ["uid", "cur", "prev", "last", "idle", "abs", "cid", "scope", "ep"],
            )
            epoch = await self.redis.get(f"{self.prefix}:epoch")
        uid, cur, prev, last, idle, absolute, cid, scope, ep = cast(list[str | None], row)
        if uid is None or idle is None or absolute is None:
            return None
        if int(ep or 1) < int(epoch or 0):
            return None  # fenced: rotate.lua ends it on its next use
        if now >= float(idle) or now >= float(absolute):
            return None
        in_grace = jti == prev and last is not None and now < float(last) + self.grace
        if jti != cur and not in_grace:
            return None
        return SessionGrant(uid=uid, client_id=cid or "", scope=scope or "")

    async def list_for_user(self, uid: str, now: float) -> list[SessionInfo]:
        """The user's live sessions, newest first; index entries of ended sessions are pruned."""
        index = self.user_index_key(uid)
        with redis_errors():
            await self.redis.zremrangebyscore(index, "-inf", now)
            sids = cast(list[str], await self.redis.zrange(index, 0, -1))
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.hgetall(self.session_key(sid))
                rows: list[dict[str, str]] = await pipe.execute()
            gone = [sid for sid, row in zip(sids, rows, strict=True) if not row]
            if gone:
                await self.redis.zrem(index, *gone)
            epoch = int(await self.redis.get(f"{self.prefix}:epoch") or 0)
        infos = [
            _info(sid, row)
            for sid, row in zip(sids, rows, strict=True)
            if row and int(row.get("ep", 1)) >= epoch
        ]
        live = [s for s in infos if s.idle_deadline > now and s.absolute_deadline > now]
        return sorted(live, key=lambda s: s.created, reverse=True)


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
