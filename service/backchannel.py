"""OpenID Connect Back-Channel Logout 1.0, tokend as the relying party.

At a social login, ``record`` notes which tokend session came from which provider session:
the ID token's ``sid`` (when it has one) and its ``sub``, each a Redis hash of tokend sid →
uid that lives as long as a session can (TOKEND_REFRESH_ABSOLUTE_TTL). When the user logs
out at the provider, it POSTs a logout token; ``logout`` checks it as section 2.6 says
and ends the tokend sessions of that provider session (``sid``), or with ``sub`` alone
every tokend session of that user from that provider, through ``SessionControl`` (so the
``session.revoked`` events are published as for any logout).

Every key holds one name of the Keyspace and every command touches one key, so all of
it works on Redis Cluster.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from redis.asyncio import Redis

from .clock import Clock
from .errors import BadRequest, SocialLoginFailed
from .keyspace import Keyspace
from .oidc import ProviderClient
from .redisconn import redis_errors
from .session_control import SessionControl

EVENT = "http://schemas.openid.net/event/backchannel-logout"
# typ values taken as a logout token (RFC 8725 section 3.11 explicit typing; section 2.4 of
# the spec). No typ, or the generic "JWT", is accepted too: the events claim and the ban on
# nonce already keep an ID token (or any other JWT of the provider) from passing as one.
TYPES = frozenset({"logout+jwt", "application/logout+jwt", "jwt"})
# How old (by iat) a logout token may be, on top of TOKEND_LEEWAY; its jti is remembered as
# long as it could be accepted, so a replay is caught for its whole lifetime.
MAX_AGE = 300
# A provider session ended within this long also ends a tokend session that is started
# for it afterwards (a login_code redeemed after the provider logout).
ENDED_TTL = 600
MAX_TOKEN = 16 * 1024
MAX_ID = 255

# One key, two commands: the hash field and the key's lifetime together.
_RECORD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class ProviderSession:
    """The provider account and session a social login came from."""

    provider: str
    subject: str
    sid: str | None = None


@dataclass(frozen=True)
class LogoutRequest:
    """What a verified logout token asks for."""

    provider: str
    sub: str | None
    sid: str | None
    jti: str
    lifetime: int  # seconds its jti must be remembered


def provider_session(provider: str, claims: Mapping[str, Any]) -> ProviderSession:
    """The provider session of a verified ID token (``sid`` only when well formed)."""
    sid = claims.get("sid")
    usable = isinstance(sid, str) and 0 < len(sid) <= MAX_ID
    return ProviderSession(provider, str(claims["sub"]), sid if usable else None)


def _bad(description: str) -> BadRequest:
    return BadRequest(f"invalid logout token: {description}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _identifier(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise _bad(f"{name} is not a string of 1 to {MAX_ID} characters")
    return value


class BackchannelLogout:
    """Records provider sessions at login and ends them on the provider's logout token."""

    def __init__(
        self,
        *,
        providers: Mapping[str, ProviderClient],
        redis: Redis,
        prefix: str,
        control: SessionControl,
        clock: Clock,
        leeway: int,
        session_ttl: int,
    ) -> None:
        self.providers = providers
        self.redis = redis
        self.keys = Keyspace(prefix)
        self.control = control
        self.clock = clock
        self.leeway = leeway
        self.session_ttl = session_ttl
        self._record = redis.register_script(_RECORD)

    # -- at login ------------------------------------------------------------------------

    async def record(self, origin: ProviderSession, uid: str, sid: str) -> None:
        """Note that tokend session ``sid`` of ``uid`` came from ``origin``. When that
        provider session has ended already (its logout token came first), end it now."""
        ttl = self.session_ttl
        keys = [self.keys.oidc_bcl_sub(origin.provider, origin.subject)]
        if origin.sid is not None:
            keys.append(self.keys.oidc_bcl_sid(origin.provider, origin.sid))
        with redis_errors():
            for key in keys:
                await self._record(keys=[key], args=[sid, uid, ttl])
            ended = origin.sid is not None and bool(
                await self.redis.exists(self.keys.oidc_bcl_ended(origin.provider, origin.sid))
            )
        if ended:
            await self.control.end_sessions([(uid, sid)])

    # -- the logout token ----------------------------------------------------------------

    async def verify(self, name: str, token: object) -> LogoutRequest:
        """The logout token's request after every check of section 2.6 but the replay
        check; BadRequest (400 ``invalid_request``) when any fails."""
        client = self.providers[name]
        if not isinstance(token, str) or not token:
            raise BadRequest("logout_token is required")
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            raise _bad("not a signed JWT (JWS compact serialization)")
        try:
            typ = jwt.get_unverified_header(token).get("typ")
        except jwt.PyJWTError:
            raise _bad("not a valid JWS") from None
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in TYPES):
            raise _bad(f"typ {str(typ)[:40]!r} is not logout+jwt")
        try:
            claims = await client.verified_jws(
                token, "logout token", ["iss", "aud", "iat", "jti", "events"]
            )
        except SocialLoginFailed as exc:
            raise _bad(exc.description) from None
        return self._request(name, claims)

    def _request(self, name: str, claims: Mapping[str, Any]) -> LogoutRequest:
        now = self.clock()
        for field in ("iat", "exp", "nbf"):
            if field in claims and not _is_number(claims[field]):
                raise _bad(f"{field} is not a number")
        iat = float(claims["iat"])
        if iat - self.leeway > now or claims.get("nbf", now) - self.leeway > now:
            raise _bad("it is not valid yet (iat or nbf in the future)")
        if iat + MAX_AGE + self.leeway < now:
            raise _bad(f"it was issued more than {MAX_AGE} s ago")
        exp = claims.get("exp")
        if exp is not None and exp + self.leeway < now:
            raise _bad("it has expired")
        events = claims["events"]
        if not isinstance(events, dict) or not isinstance(events.get(EVENT), dict):
            raise _bad(f"events has no {EVENT} member that is a JSON object")
        if "nonce" in claims:
            raise _bad("it carries a nonce (an ID token, not a logout token?)")
        sub, sid = _identifier(claims, "sub"), _identifier(claims, "sid")
        if sub is None and sid is None:
            raise _bad("it has neither sid nor sub")
        jti = _identifier(claims, "jti")
        assert jti is not None  # required by the decode
        until = max(iat + MAX_AGE, float(exp) if exp is not None else 0.0) + self.leeway
        return LogoutRequest(name, sub, sid, jti, max(1, int(until - now) + 1))

    async def logout(self, name: str, token: object) -> int:
        """Verify a logout token (once only: its jti) and end the tokend sessions of that
        provider session; how many were live."""
        request = await self.verify(name, token)
        jti_key = self.keys.oidc_bcl_jti(name, request.jti)
        with redis_errors():
            fresh = await self.redis.set(jti_key, "1", nx=True, ex=request.lifetime)
        if not fresh:
            raise _bad("its jti was seen before (a replay)")
        try:
            return await self._end(request)
        except Exception:
            # Nothing (or not everything) was ended: let the provider's retry through.
            with redis_errors():
                await self.redis.delete(jti_key)
            raise

    async def _end(self, request: LogoutRequest) -> int:
        if request.sid is not None:
            key = self.keys.oidc_bcl_sid(request.provider, request.sid)
            ended = self.keys.oidc_bcl_ended(request.provider, request.sid)
            with redis_errors():
                # Marked before the sessions are read (record() writes, then reads the
                # mark): a login finishing meanwhile is seen by one side or the other.
                await self.redis.set(ended, "1", ex=ENDED_TTL)
                found = await self.redis.hgetall(key)
        else:
            assert request.sub is not None
            key = self.keys.oidc_bcl_sub(request.provider, request.sub)
            with redis_errors():
                found = await self.redis.hgetall(key)
        sessions = {_text(sid): _text(uid) for sid, uid in found.items()}
        if request.sid is not None and request.sub is not None:
            sessions = await self._of_subject(request.provider, request.sub, sessions)
        count = await self.control.end_sessions([(uid, sid) for sid, uid in sessions.items()])
        if sessions:
            with redis_errors():
                await self.redis.hdel(key, *sessions)
        return count

    async def _of_subject(
        self, provider: str, sub: str, sessions: dict[str, str]
    ) -> dict[str, str]:
        """Only the sessions that this provider session's user (``sub``) logged in to."""
        if not sessions:
            return sessions
        with redis_errors():
            own = await self.redis.hmget(self.keys.oidc_bcl_sub(provider, sub), list(sessions))
        return {
            sid: uid
            for (sid, uid), mine in zip(sessions.items(), own, strict=True)
            if mine is not None and hmac.compare_digest(_text(mine), uid)
        }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
