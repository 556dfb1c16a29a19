"""Who is calling: the user behind an access token, the holder of a refresh token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import InvalidToken, TokenRevoked
from .sessions import SessionStore
from .tokens import TokenService, bound_key, rotation_number
from .users import User, UserStore


@dataclass(frozen=True)
class Principal:
    """The verified caller of a protected resource."""

    user: User
    claims: dict[str, Any]

    @property
    def sid(self) -> str:
        return str(self.claims["sid"])


def check_key(claims: dict[str, Any], jkt: str | None) -> None:
    """The token's DPoP binding against the proof's key (None: no proof, Bearer)."""
    bound = bound_key(claims)
    if bound is None:
        if jkt is not None:
            raise InvalidToken("not a DPoP-bound token: send it with the Bearer scheme")
        return
    if jkt is None:
        raise InvalidToken("this token is DPoP-bound: send it with the DPoP scheme and a proof")
    if jkt != bound:
        raise InvalidToken("the DPoP proof is signed by another key than the token is bound to")


class Callers:
    """Authenticates access tokens and answers who holds a refresh token."""

    def __init__(
        self, *, tokens: TokenService, sessions: SessionStore, users: UserStore, clock: Clock
    ) -> None:
        self.tokens = tokens
        self.sessions = sessions
        self.users = users
        self.clock = clock

    async def authenticate(
        self, access_token: str, *, jkt: str | None = None, check_binding: bool = True
    ) -> Principal:
        """The caller behind an access token: verified, not revoked, user still active.

        ``jkt``: the key of the DPoP proof it came with (checked by the HTTP layer), None
        for the Bearer scheme. A bound token needs its own key's proof, an unbound one
        the Bearer scheme (RFC 9449 section 7.1); ``check_binding=False`` skips that
        (introspection, where a resource server asks about a token it holds).
        """
        now = self.clock()
        claims = self.tokens.verify_access(access_token, now)
        if check_binding:
            check_key(claims, jkt)
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
