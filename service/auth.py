"""The authentication core: register, log in, refresh, authenticate and revoke.

Ties the user store, password hasher, login limiter, session store and token service
together; knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import (
    InvalidCredentials,
    InvalidToken,
    NotFound,
    TokendError,
    TokenExpired,
    TokenRevoked,
    Unavailable,
    ValidationFailed,
)
from .metrics import Metrics
from .passwords import PasswordHasher, check_password_rules
from .ratelimit import LoginLimiter
from .sessions import SessionStore
from .tokens import TokenService, new_id
from .users import User, UserStore, normalize_username


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    sid: str
    sub: str
    scope: str = ""

    def body(self) -> dict[str, Any]:
        """The token body of DESIGN.md (RFC 6749 section 5.1 plus refresh_expires_in)."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }
        if self.scope:
            body["scope"] = self.scope
        return body


@dataclass(frozen=True)
class Principal:
    """The verified caller of a protected resource."""

    user: User
    claims: dict[str, Any]

    @property
    def sid(self) -> str:
        return str(self.claims["sid"])


@dataclass(frozen=True)
class ClientInfo:
    """Where a request came from, recorded on the session."""

    ip: str = ""
    user_agent: str = ""
    client_id: str = ""


class Authenticator:
    """Every authentication use case of tokend."""

    def __init__(
        self,
        *,
        users: UserStore,
        hasher: PasswordHasher,
        limiter: LoginLimiter,
        sessions: SessionStore,
        tokens: TokenService,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.limiter = limiter
        self.sessions = sessions
        self.tokens = tokens
        self.clock = clock
        self.metrics = metrics

    async def register(self, username: object, password: object) -> User:
        """Create a user after checking the username and password rules."""
        name = normalize_username(username)
        secret = check_password_rules(password, name)
        return await self.users.create(name, await self.hasher.hash(secret), self.clock())

    async def check_credentials(self, username: object, password: object, ip: str) -> User:
        """The user for these credentials; one generic error for every failure."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise ValidationFailed("username and password must be strings")
        try:
            name = normalize_username(username)
        except ValidationFailed:
            name = ""  # still costs a verify and counts a failure, like an unknown user
        limit_name = name or username[:64]
        await self.limiter.check(limit_name, ip)
        try:
            user = await self.users.by_username(name) if name else None
        except Unavailable:
            # The attempt was never judged: an outage must not count as a failed login
            # (nor lock the user out once the database is back).
            with contextlib.suppress(Unavailable):
                await self.limiter.undecided(limit_name, ip)
            raise
        if user is None or user.disabled or user.password_hash is None:
            await self.hasher.verify(None, password)
            ok = False
        else:
            ok = await self.hasher.verify(user.password_hash, password)
        if not ok or user is None:
            await self.limiter.failed(limit_name, ip)
            raise InvalidCredentials()
        await self.limiter.succeeded(limit_name, ip)
        return user

    async def login(
        self, username: object, password: object, client: ClientInfo, scope: str = ""
    ) -> TokenPair:
        """Check credentials, record a new session and issue its first token pair."""
        try:
            user = await self.check_credentials(username, password, client.ip)
        except TokendError as exc:
            self.metrics.logins.labels(_outcome(exc)).inc()
            raise
        self.metrics.logins.labels("ok").inc()
        return await self.start_session(user, client, scope)

    async def start_session(self, user: User, client: ClientInfo, scope: str = "") -> TokenPair:
        """Record a session for an authenticated user and issue its first pair."""
        now = self.clock()
        sid, jti = new_id(), new_id()
        iat, exp = await self.sessions.create(
            sid=sid,
            uid=user.id,
            jti=jti,
            now=now,
            client_id=client.client_id,
            scope=scope,
            user_agent=client.user_agent,
            ip=client.ip,
        )
        return self._pair(user.id, sid, jti, iat, exp, now, client.client_id, scope)

    def _pair(
        self,
        sub: str,
        sid: str,
        jti: str,
        iat: int,
        exp: int,
        now: float,
        client_id: str,
        scope: str,
    ) -> TokenPair:
        access = self.tokens.issue_access(
            sub=sub, sid=sid, now=now, client_id=client_id or None, scope=scope or None
        )
        refresh = self.tokens.issue_refresh(
            sub=sub, sid=sid, jti=jti, iat=iat, exp=exp, now=now, client_id=client_id or None
        )
        return TokenPair(
            access_token=access.token,
            refresh_token=refresh.token,
            expires_in=self.tokens.access_ttl,
            refresh_expires_in=max(0, exp - int(now)),
            sid=sid,
            sub=sub,
            scope=scope,
        )

    async def refresh(self, refresh_token: str, client: ClientInfo) -> TokenPair:
        """Rotate a refresh token: a new pair, the grace replay, or reuse detection."""
        try:
            pair, outcome = await self._refresh(refresh_token, client)
        except TokendError as exc:
            self.metrics.refreshes.labels(getattr(exc, "outcome", _outcome(exc))).inc()
            raise
        self.metrics.refreshes.labels(outcome).inc()
        return pair

    async def _refresh(self, refresh_token: str, client: ClientInfo) -> tuple[TokenPair, str]:
        now = self.clock()
        claims = self.tokens.verify_refresh(refresh_token, now)
        if claims.get("client_id", "") != client.client_id:
            # RFC 6749 section 6: only the client the token was issued to may use it;
            # tokens from /auth/login belong to no client and refresh at /auth/refresh.
            raise InvalidToken("refresh token was issued to another client")
        rotation = await self.sessions.rotate(
            sid=claims["sid"],
            jti=claims["jti"],
            new_jti=new_id(),
            now=now,
            user_agent=client.user_agent,
            ip=client.ip,
        )
        if rotation.status == "reuse":
            self.metrics.events.labels("session.revoked").inc()
            raise _with_outcome(
                TokenRevoked("refresh token reuse detected; the session is revoked"), "reuse"
            )
        if rotation.status == "expired":
            raise _with_outcome(TokenExpired("refresh token expired, log in again"), "expired")
        if rotation.status == "fenced":
            raise _with_outcome(
                TokenRevoked("session ended when Redis lost its data, log in again"), "fenced"
            )
        if rotation.status == "unknown":
            raise _with_outcome(
                TokenRevoked("refresh token revoked or session ended, log in again"), "unknown"
            )
        if rotation.uid != claims["sub"]:
            raise InvalidToken("refresh token does not match its session")
        # No user lookup here: the session in Redis is authoritative, and disabling a
        # user revokes every session of theirs (disable_user), so refresh stays SQL-free.
        pair = self._pair(
            rotation.uid,
            claims["sid"],
            rotation.jti,
            rotation.iat,
            rotation.exp,
            now,
            rotation.client_id,
            rotation.scope,
        )
        return pair, rotation.status

    async def authenticate(self, access_token: str) -> Principal:
        """The caller behind an access token: verified, not revoked, user still active."""
        now = self.clock()
        claims = self.tokens.verify_access(access_token, now)
        if await self.sessions.is_denied(
            sid=claims["sid"], uid=claims["sub"], jti=claims["jti"], iat=claims["iat"]
        ):
            raise TokenRevoked("token revoked")
        user = await self.users.by_id(claims["sub"])
        if user is None or user.disabled:
            raise TokenRevoked("user no longer active")
        return Principal(user, claims)

    async def logout(self, principal: Principal) -> None:
        """End the caller's session."""
        self.metrics.events.labels("session.revoked").inc()
        await self.sessions.revoke(
            sid=principal.sid,
            now=self.clock(),
            reason="logout",
            owner=principal.user.id,
            force=True,
        )

    async def logout_all(self, principal: Principal) -> int:
        """End every session of the caller."""
        self.metrics.events.labels("user.revoked").inc()
        return await self.sessions.revoke_user(
            uid=principal.user.id, now=self.clock(), reason="logout_all"
        )

    async def disable_user(self, username: str) -> int:
        """Disable a user and revoke every session of theirs (admin revoke); how many."""
        self.metrics.events.labels("user.revoked").inc()
        return await disable_user(self.users, self.sessions, username, self.clock())

    async def change_password(self, principal: Principal, current: object, new: object) -> int:
        """Change the caller's password and end every other session of theirs."""
        if not isinstance(current, str):
            raise ValidationFailed("current_password must be a string")
        secret = check_password_rules(new, principal.user.username)
        if not await self.hasher.verify(principal.user.password_hash, current):
            raise InvalidCredentials("current password is wrong")
        now = self.clock()
        await self.users.set_password(principal.user.id, await self.hasher.hash(secret), now)
        return await self.sessions.revoke_user(
            uid=principal.user.id, now=now, reason="password_changed", keep_sid=principal.sid
        )


def _outcome(exc: TokendError) -> str:
    """A metrics label for a failed attempt."""
    return {
        "RateLimited": "rate_limited",
        "Unavailable": "unavailable",
        "InvalidCredentials": "bad_credentials",
        "TokenExpired": "expired",
    }.get(type(exc).__name__, "invalid")


def _with_outcome(exc: TokendError, outcome: str) -> TokendError:
    exc.outcome = outcome  # type: ignore[attr-defined]
    return exc


async def disable_user(users: UserStore, sessions: SessionStore, username: str, now: float) -> int:
    """Disable a user and revoke all their sessions (user.revoked, reason admin_revoke)."""
    user = await users.by_username(normalize_username(username))
    if user is None:
        raise NotFound("no such user")
    await users.set_disabled(user.id, True)
    return await sessions.revoke_user(uid=user.id, now=now, reason="admin_revoke")


async def delete_user(users: UserStore, sessions: SessionStore, username: str, now: float) -> int:
    """Delete a user after revoking all their sessions (user.revoked, reason user_deleted).

    Refresh never reads SQL, so removing the row alone would let the user's sessions go
    on minting access tokens that every subscriber accepts: the sessions end first, and
    the user is disabled before that so no login slips in between.
    """
    user = await users.by_username(normalize_username(username))
    if user is None:
        raise NotFound("no such user")
    await users.set_disabled(user.id, True)
    revoked = await sessions.revoke_user(uid=user.id, now=now, reason="user_deleted")
    await users.delete(user.id)
    return revoked
