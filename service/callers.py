"""Who is calling: the user behind an access token, the holder of a refresh token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import TokenRevoked
from .sessions import SessionStore
from .tokens import TokenService, rotation_number
from .users import User, UserStore


@dataclass(frozen=True)
class Principal:
    """The verified caller of a protected resource."""

    user: User
    claims: dict[str, Any]

    @property
    def sid(self) -> str:
        return str(self.claims["sid"])


class Callers:
    """Authenticates access tokens and answers who holds a refresh token."""

    def __init__(
        self, *, tokens: TokenService, sessions: SessionStore, users: UserStore, clock: Clock
    ) -> None:
        self.tokens = tokens
        self.sessions = sessions
        self.users = users
        self.clock = clock

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

    async def refresh_holder(self, claims: dict[str, Any]) -> tuple[User, str] | None:
        """The active user whose live session the verified refresh-token ``claims`` may
        still refresh, and the session's scope; None when the token is spent or dead."""
        grant = await self.sessions.live_grant(
            sid=claims["sid"],
            jti=claims["jti"],
            now=self.clock(),
            uid=claims["sub"],
            rot=rotation_number(claims),
        )
        if grant is None or grant.uid != claims["sub"]:
            return None
        user = await self.users.by_id(grant.uid)
        if user is None or user.disabled:
            return None
        return user, grant.scope
