"""Logging in: registration, password login and the sessions social login starts."""

from __future__ import annotations

import contextlib

from .clock import Clock
from .errors import (
    Conflict,
    Forbidden,
    InvalidCredentials,
    RateLimited,
    TokendError,
    Unavailable,
    ValidationFailed,
)
from .issuing import ClientInfo, Issuer, TokenPair
from .metrics import LoginOutcome, Metrics
from .passwords import PasswordHasher, check_password_rules
from .ratelimit import AuthLimits
from .sessions import SessionStore
from .users import User, UserStore, normalize_username

# The outcome of a login that an error ended, by the error's class (the first match in
# the class's hierarchy): the label stays put when a class is renamed.
_FAILURES: tuple[tuple[type[TokendError], LoginOutcome], ...] = (
    (RateLimited, "rate_limited"),
    (Unavailable, "unavailable"),
    (InvalidCredentials, "bad_credentials"),
)


def login_failure(exc: TokendError) -> LoginOutcome:
    """The ``tokend_logins_total`` result of a login that ``exc`` ended."""
    for cls, outcome in _FAILURES:
        if isinstance(exc, cls):
            return outcome
    return "invalid"


class Registration:
    """``POST /auth/register``: new users with a password."""

    def __init__(
        self,
        *,
        users: UserStore,
        hasher: PasswordHasher,
        limits: AuthLimits,
        clock: Clock,
        registration_open: bool = True,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.limits = limits
        self.clock = clock
        self.registration_open = registration_open

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


class Login:
    """Password login (``/auth/login`` and the OAuth password grant) and the sessions
    that social login starts; each attempt is counted once, by its outcome."""

    def __init__(
        self,
        *,
        users: UserStore,
        hasher: PasswordHasher,
        limits: AuthLimits,
        sessions: SessionStore,
        issuer: Issuer,
        metrics: Metrics,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.limiter = limits.logins
        self.per_user = limits.sessions
        self.sessions = sessions
        self.issuer = issuer
        self.metrics = metrics

    async def login(
        self, username: object, password: object, client: ClientInfo, scope: str = ""
    ) -> TokenPair:
        """Check credentials, record a new session and issue its first token pair."""
        try:
            # Before the user row is read: a disable, delete, password change or
            # logout-all that lands while argon2 runs refuses the session (create.lua).
            checked_at = await self.sessions.server_time()
            user = await self.check_credentials(username, password, client.ip)
            pair = await self.issuer.start_session(user, client, scope, checked_at=checked_at)
        except TokendError as exc:
            self.metrics.login(login_failure(exc))
            raise
        self.metrics.login("ok")
        return pair

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
        await self.per_user.take(user.id)  # successful logins per user
        return user

    async def social(
        self, user: User, client: ClientInfo, *, checked_at: float | None
    ) -> TokenPair:
        """tokend's own session for a user who logged in at an OpenID provider."""
        pair = await self.issuer.start_session(user, client, checked_at=checked_at)
        self.metrics.login("oidc")
        return pair

    def social_failed(self) -> None:
        """Count a social-login callback that ended without a session."""
        self.metrics.login("oidc_failed")
