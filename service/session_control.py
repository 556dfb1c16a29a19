"""Ending sessions and tokens on the holder's request: logout, logout-all, logout-others,
the session list and delete, RFC 7009 revocation. Each revocation is counted once, here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .callers import Principal
from .clock import Clock
from .errors import NotFound
from .metrics import Metrics, RevocationReason
from .sessions import SessionInfo, SessionStore

OAUTH_REVOKE: RevocationReason = "oauth_revoke"


class SessionControl:
    """The caller's own sessions, and RFC 7009 revocation for OAuth clients."""

    def __init__(self, *, sessions: SessionStore, clock: Clock, metrics: Metrics) -> None:
        self.sessions = sessions
        self.clock = clock
        self.metrics = metrics

    async def logout(self, principal: Principal) -> None:
        """End the caller's session."""
        await self.sessions.revoke(
            sid=principal.sid,
            now=self.clock(),
            reason="logout",
            owner=principal.user.id,
            force=True,
        )
        self.metrics.revoked("logout", "session.revoked")

    async def logout_all(self, principal: Principal) -> int:
        """End every session of the caller; how many were live."""
        ended = await self.sessions.revoke_user(
            uid=principal.user.id, now=self.clock(), reason="logout_all"
        )
        self.metrics.revoked("logout_all", "user.revoked")
        return ended

    async def logout_others(self, principal: Principal) -> int:
        """End every session of the caller but the current one, each with its own
        ``session.revoked`` (reason ``logout_others``); how many were live."""
        others: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page, offset = await self.sessions.list_for_user(
                principal.user.id, self.clock(), limit=100, offset=offset
            )
            others.extend(s.sid for s in page if s.sid != principal.sid)
        ended = 0
        for sid in dict.fromkeys(others):
            if await self.sessions.revoke(
                sid=sid, now=self.clock(), reason="logout_others", owner=principal.user.id
            ):
                self.metrics.revoked("logout_others", "session.revoked")
                ended += 1
        return ended

    async def end_sessions(self, sessions: Iterable[tuple[str, str]]) -> int:
        """End these (uid, sid) sessions: the user logged out at the OpenID provider they
        came from (back-channel logout). ``session.revoked``, reason ``logout``, for each
        one that was live; how many were."""
        ended = 0
        for uid, sid in sessions:
            if await self.sessions.revoke(sid=sid, now=self.clock(), reason="logout", owner=uid):
                self.metrics.revoked("logout", "session.revoked")
                ended += 1
        return ended

    async def list(
        self, principal: Principal, *, limit: int, offset: int
    ) -> tuple[list[SessionInfo], int | None]:
        """One page of the caller's live sessions and the offset of the next (None: last)."""
        return await self.sessions.list_for_user(
            principal.user.id, self.clock(), limit=limit, offset=offset
        )

    async def delete(self, principal: Principal, sid: str) -> None:
        """End one of the caller's sessions; NotFound when it is not (or no longer) theirs."""
        revoked = await self.sessions.revoke(
            sid=sid,
            now=self.clock(),
            reason="session_deleted",
            owner=principal.user.id,
            force=sid == principal.sid,
        )
        if not revoked:
            raise NotFound("no such session")
        self.metrics.revoked("session_deleted", "session.revoked")

    async def revoke_refresh_token(
        self, claims: dict[str, Any], *, reason: RevocationReason = OAUTH_REVOKE
    ) -> None:
        """RFC 7009 for a verified refresh token: the whole session ends. A session whose
        state is gone was revoked already or has expired (then so has the token). The
        refresh cookie's logout (reason ``logout``) ends its session the same way."""
        if await self.sessions.revoke(
            sid=claims["sid"], now=self.clock(), reason=reason, owner=claims["sub"]
        ):
            self.metrics.revoked(reason, "session.revoked")

    async def revoke_access_token(self, claims: dict[str, Any]) -> None:
        """RFC 7009 for a verified access token: denied until it expires."""
        if await self.sessions.revoke_access_token(
            jti=claims["jti"],
            sub=claims["sub"],
            sid=claims["sid"],
            exp=claims["exp"],
            now=self.clock(),
            reason=OAUTH_REVOKE,
        ):
            self.metrics.revoked("oauth_revoke", "token.revoked")
