"""The authentication core: register, log in, refresh, authenticate and revoke.

Ties the user store, password hasher, login limiter, session store and token service
together; knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import (
    Conflict,
    Forbidden,
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
from .ratelimit import AuthLimits
from .sessions import SessionStore
from .tokens import TokenService, new_id
from .users import User, UserStore, normalize_username

audit = logging.getLogger("tokend.audit")


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
        limits: AuthLimits,
        sessions: SessionStore,
        tokens: TokenService,
        clock: Clock,
        metrics: Metrics,
        registration_open: bool = True,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.limits = limits
        self.limiter = limits.logins
        self.registration_open = registration_open
        self.sessions = sessions
        self.tokens = tokens
        self.clock = clock
        self.metrics = metrics

    async def register(self, username: object, password: object, ip: str = "") -> User:
        """Create a user after checking the username and password rules.

        Closed registration refuses (403); every attempt counts against the IP's limit
        (a refused name too: names cannot be enumerated without limit); a taken name is
        refused before the password is hashed, so a duplicate costs no argon2 run.
        """
        if not self.registration_open:
            raise Forbidden("registration is closed")
        await self.limits.registrations.take(ip)
        name = normalize_username(username)
        secret = check_password_rules(password, name)
        if await self.users.by_username(name) is not None:
            raise Conflict("username already taken")
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
        await self.limits.sessions.take(user.id)  # successful logins per user
        return user

    async def login(
        self, username: object, password: object, client: ClientInfo, scope: str = ""
    ) -> TokenPair:
        """Check credentials, record a new session and issue its first token pair."""
        try:
            # Before the user row is read: a disable, delete, password change or
            # logout-all that lands while argon2 runs refuses the session (create.lua).
            checked_at = await self.sessions.server_time()
            user = await self.check_credentials(username, password, client.ip)
            pair = await self.start_session(user, client, scope, checked_at=checked_at)
        except TokendError as exc:
            self.metrics.logins.labels(_outcome(exc)).inc()
            raise
        self.metrics.logins.labels("ok").inc()
        return pair

    async def start_session(
        self, user: User, client: ClientInfo, scope: str = "", *, checked_at: float | None = None
    ) -> TokenPair:
        """Record a session for an authenticated user and issue its first pair.

        ``checked_at`` is ``sessions.server_time()`` taken before the user's credentials
        (or user row) were read; when the user was revoked since, the login is refused
        with the generic 401 and no session exists. None: now.
        """
        if checked_at is None:
            checked_at = await self.sessions.server_time()
        now = self.clock()
        sid, jti = new_id(), new_id()
        created = await self.sessions.create(
            sid=sid,
            uid=user.id,
            jti=jti,
            now=now,
            client_id=client.client_id,
            scope=scope,
            user_agent=client.user_agent,
            ip=client.ip,
            checked_at=checked_at,
        )
        if created.refused:
            raise InvalidCredentials()
        for _ in created.evicted:
            self.metrics.events.labels("session.revoked").inc()
            self.metrics.revocations.labels("session_limit").inc()
        return self._pair(
            user.id, sid, jti, created.iat, created.exp, now, client.client_id, scope, checked_at
        )

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
        auth_time: float,
    ) -> TokenPair:
        access = self.tokens.issue_access(
            sub=sub,
            sid=sid,
            now=now,
            client_id=client_id or None,
            scope=scope or None,
            auth_time=auth_time,
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
            uid=claims["sub"],
            jti=claims["jti"],
            new_jti=new_id(),
            now=now,
            user_agent=client.user_agent,
            ip=client.ip,
        )
        if rotation.status == "reuse":
            self.metrics.events.labels("session.revoked").inc()
            kind = rotation.reuse_kind
            audit.warning(
                "refresh token reuse (%s): session %s of user %s revoked; "
                "this use from ip=%r ua=%r, the session's last use from ip=%r ua=%r",
                kind,
                claims["sid"],
                rotation.uid,
                client.ip,
                client.user_agent,
                rotation.other_ip,
                rotation.other_ua,
            )
            what = (
                "used again while it was being rotated (concurrent)"
                if kind == "concurrent"
                else "replayed after rotation"
            )
            raise _with_outcome(
                TokenRevoked(f"refresh token reuse detected ({what}); the session is revoked"),
                f"reuse_{kind}",
            )
        if rotation.status == "expired":
            raise _with_outcome(TokenExpired("refresh token expired, log in again"), "expired")
        if rotation.status == "fenced":
            raise _with_outcome(
                TokenRevoked("session ended when Redis lost its data, log in again"), "fenced"
            )
        if rotation.status in ("unknown", "revoked"):
            raise _with_outcome(
                TokenRevoked("refresh token revoked or session ended, log in again"), "unknown"
            )
        if rotation.status == "mismatch":
            raise InvalidToken("refresh token does not match its session")
        # No user lookup here: the session in Redis is authoritative, and disabling a
        # user sets their revocation mark (disable_user), which rotate.lua checks, so
        # refresh stays SQL-free.
        pair = self._pair(
            rotation.uid,
            claims["sid"],
            rotation.jti,
            rotation.iat,
            rotation.exp,
            now,
            rotation.client_id,
            rotation.scope,
            rotation.auth,
        )
        return pair, rotation.status

    async def authenticate(self, access_token: str) -> Principal:
        """The caller behind an access token: verified, not revoked, user still active."""
        now = self.clock()
        claims = self.tokens.verify_access(access_token, now)
        auth_time = claims.get("auth_time")
        if await self.sessions.is_denied(
            sid=claims["sid"],
            uid=claims["sub"],
            jti=claims["jti"],
            iat=claims["iat"],
            auth_time=float(auth_time) if isinstance(auth_time, int | float) else None,
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

    async def change_password(
        self, principal: Principal, current: object, new: object, ip: str = ""
    ) -> int:
        """Change the caller's password and end every other session of theirs.

        Wrong current passwords count per user and per IP like failed logins (a stolen
        access token must not guess the password at full speed): 429 past the limits.
        """
        if not isinstance(current, str):
            raise ValidationFailed("current_password must be a string")
        secret = check_password_rules(new, principal.user.username)
        limiter = self.limits.passwords
        await limiter.check(principal.user.id, ip)
        if not await self.hasher.verify(principal.user.password_hash, current):
            await limiter.failed(principal.user.id, ip)
            raise InvalidCredentials("current password is wrong")
        await limiter.succeeded(principal.user.id, ip)
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
