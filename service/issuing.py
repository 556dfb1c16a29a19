"""Starting sessions and signing token pairs: what every way of logging in ends with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import InvalidCredentials
from .metrics import Metrics
from .sessions import SessionStore
from .tokens import TokenService, new_id
from .users import User


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    sid: str
    sub: str
    scope: str = ""
    #: The DPoP key thumbprint the access token is bound to, "" for a bearer token.
    jkt: str = ""

    @property
    def token_type(self) -> str:
        """``DPoP`` for a DPoP-bound access token (RFC 9449 section 5), else ``Bearer``."""
        return "DPoP" if self.jkt else "Bearer"

    def body(self) -> dict[str, Any]:
        """The token body of docs/design.md (RFC 6749 section 5.1 plus refresh_expires_in)."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }
        if self.scope:
            body["scope"] = self.scope
        return body


@dataclass(frozen=True)
class ClientInfo:
    """Where a request came from, recorded on the session."""

    ip: str = ""
    user_agent: str = ""
    client_id: str = ""
    #: The DPoP key the request proved possession of (RFC 7638 thumbprint), "" for none:
    #: the tokens it is issued are bound to it.
    jkt: str = ""
    #: Whether a new session's refresh token is bound to ``jkt`` too: a public client's
    #: and tokend's own logins are, a confidential client's is not (RFC 9449 section 5).
    bind_refresh: bool = True


@dataclass(frozen=True)
class Grant:
    """What one token pair is issued for: the session's refresh state and its grant."""

    sub: str
    sid: str
    jti: str
    iat: int
    exp: int
    client_id: str
    scope: str
    auth_time: float
    #: The refresh token's rotation number (1 at login, one more per rotation).
    rot: int = 1
    #: The DPoP keys the access and the refresh token are bound to ("" for none).
    jkt: str = ""
    refresh_jkt: str = ""


def after_fence(now: float, fence: float | None) -> float:
    """The time to issue an access token at: ``now``, or the second after the partition's
    fence when ``now`` falls in or before its second. Tokens carry whole seconds and a fence
    denies every ``iat`` up to its own time, so a token issued just after a fence, in its
    second (by any process: the login that ran it, or another), would be refused at once
    by tokend and every subscriber. At most a second ahead, well inside every verifier's
    ``iat`` leeway."""
    if fence is not None and int(now) <= fence:
        return math.floor(fence) + 1.0
    return now


class Issuer:
    """Records new sessions and signs the token pairs of new and rotated ones."""

    def __init__(
        self, *, sessions: SessionStore, tokens: TokenService, clock: Clock, metrics: Metrics
    ) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.clock = clock
        self.metrics = metrics

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
            jkt=client.jkt,
        )
        if created.refused:
            raise InvalidCredentials()
        for _ in created.evicted:
            self.metrics.revoked("session_limit", "session.revoked")
        grant = Grant(
            user.id,
            sid,
            jti,
            created.iat,
            created.exp,
            client.client_id,
            scope,
            checked_at,
            jkt=client.jkt,
            refresh_jkt=client.jkt if client.bind_refresh else "",
        )
        return self.pair(grant, after_fence(now, created.fence))

    def pair(self, grant: Grant, now: float) -> TokenPair:
        """The access and refresh token of ``grant``: one signature, one MAC."""
        access = self.tokens.issue_access(
            sub=grant.sub,
            sid=grant.sid,
            now=now,
            client_id=grant.client_id or None,
            scope=grant.scope or None,
            auth_time=grant.auth_time,
            jkt=grant.jkt or None,
        )
        refresh = self.tokens.issue_refresh(
            sub=grant.sub,
            sid=grant.sid,
            jti=grant.jti,
            iat=grant.iat,
            exp=grant.exp,
            now=now,
            client_id=grant.client_id or None,
            rot=grant.rot,
            jkt=grant.refresh_jkt or None,
        )
        return TokenPair(
            access_token=access.token,
            refresh_token=refresh.token,
            expires_in=self.tokens.access_ttl,
            refresh_expires_in=max(0, grant.exp - int(now)),
            sid=grant.sid,
            sub=grant.sub,
            scope=grant.scope,
            jkt=grant.jkt,
        )
