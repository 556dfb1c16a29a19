"""Refreshing: rotate a refresh token, replay it within the grace, or detect reuse."""

from __future__ import annotations

import logging

from .clock import Clock
from .errors import (
    InvalidDPoPProof,
    InvalidScope,
    InvalidToken,
    TokendError,
    TokenExpired,
    TokenRevoked,
    Unavailable,
)
from .issuing import ClientInfo, Grant, Issuer, TokenPair, after_fence
from .metrics import Metrics, RefreshOutcome
from .sessions import Rotation, SessionStore
from .tokens import TokenService, bound_key, new_id, rotation_number

# The metric outcome of each rotation that issued a pair (ahead: a lost write rolled
# forward, see rotate.lua).
ISSUED: dict[str, RefreshOutcome] = {
    "rotated": "rotated",
    "grace": "grace",
    "ahead": "rolled_forward",
}

audit = logging.getLogger("tokend.audit")

# The outcome of a refresh that an error raised below the use case ended (token check,
# store), by class, the first match in the class's hierarchy.
_FAILURES: tuple[tuple[type[TokendError], RefreshOutcome], ...] = (
    (Unavailable, "unavailable"),
    (TokenExpired, "expired"),
)


def refresh_failure(exc: TokendError) -> RefreshOutcome:
    """The ``tokend_refreshes_total`` result of a refresh that ``exc`` ended."""
    for cls, outcome in _FAILURES:
        if isinstance(exc, cls):
            return outcome
    return "invalid"


def narrow_scope(granted: str, requested: str) -> str:
    """The requested scope if it is within the granted one (RFC 6749 section 6)."""
    allowed = set(granted.split())
    extra = [t for t in requested.split() if t not in allowed]
    if extra:
        raise InvalidScope(f"scope not granted originally: {' '.join(extra)}")
    return requested


class Refresh:
    """``/auth/refresh`` and the OAuth refresh grant: one verification, one rotation
    script, one signed pair; each attempt counted once, by its outcome."""

    def __init__(
        self,
        *,
        sessions: SessionStore,
        tokens: TokenService,
        issuer: Issuer,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.issuer = issuer
        self.clock = clock
        self.metrics = metrics

    async def refresh(
        self, refresh_token: str, client: ClientInfo, scope: str | None = None
    ) -> TokenPair:
        """A new pair for ``refresh_token``, presented by ``client`` (its ``client_id``
        must be the token's). ``scope``, when given, narrows the new access token's
        scope within the session's grant (RFC 6749 section 6); a widening is refused
        before the presented token is consumed."""
        try:
            outcome, result = await self._attempt(refresh_token, client, scope)
        except TokendError as exc:
            self.metrics.refresh(refresh_failure(exc))
            raise
        self.metrics.refresh(outcome)
        if isinstance(result, TokendError):
            raise result
        return result

    async def _attempt(
        self, refresh_token: str, client: ClientInfo, scope: str | None
    ) -> tuple[RefreshOutcome, TokenPair | TokendError]:
        now = self.clock()
        claims = self.tokens.verify_refresh(refresh_token, now)
        if claims.get("client_id", "") != client.client_id:
            # RFC 6749 section 6: only the client the token was issued to may use it;
            # tokens from /auth/login belong to no client and refresh at /auth/refresh.
            return "invalid", InvalidToken("refresh token was issued to another client")
        bound = bound_key(claims)
        if bound is not None and bound != client.jkt:
            # RFC 9449 section 5: checked before rotate.lua, so the refusal changes nothing
            # (no rotation, no reuse): a stolen bound token is worth nothing without its key.
            return "invalid", InvalidDPoPProof(
                "this refresh token is bound to a DPoP key: send a DPoP proof by that key"
                if not client.jkt
                else "the DPoP proof is signed by another key than the refresh token's"
            )
        sid = claims["sid"]
        # One script: it refuses a widened scope before it consumes the presented token.
        rotation = await self.sessions.rotate(
            sid=sid,
            uid=claims["sub"],
            jti=claims["jti"],
            new_jti=new_id(),
            now=now,
            user_agent=client.user_agent,
            ip=client.ip,
            scope=scope,
            rot=rotation_number(claims),
            iat=int(claims["iat"]),
        )
        if rotation.status == "scope" and scope is not None:
            narrow_scope(rotation.scope, scope)  # raises InvalidScope, naming the extra
        if rotation.status not in ("rotated", "grace", "ahead"):
            return self._refused(rotation, sid, client)
        # No user lookup here: the session in Redis is authoritative, and disabling a
        # user sets their revocation mark, which rotate.lua checks, so refresh stays
        # SQL-free.
        granted = rotation.scope if scope is None else narrow_scope(rotation.scope, scope)
        grant = Grant(
            rotation.uid,
            sid,
            rotation.jti,
            rotation.iat,
            rotation.exp,
            rotation.client_id,
            granted,
            rotation.auth,
            rotation.rot,
            # The access token is bound to this request's key; the refresh token keeps the
            # binding it was born with (the same bytes for a grace replay).
            jkt=client.jkt,
            refresh_jkt=bound or "",
        )
        outcome = ISSUED[rotation.status]
        return outcome, self.issuer.pair(grant, after_fence(now, rotation.fence))

    def _refused(
        self, rotation: Rotation, sid: str, client: ClientInfo
    ) -> tuple[RefreshOutcome, TokendError]:
        """The outcome and error of a rotation that issued nothing."""
        status = rotation.status
        if status == "reuse":
            self.metrics.revoked("refresh_token_reuse", "session.revoked")
            kind = rotation.reuse_kind
            audit.warning(
                "refresh token reuse (%s): session %s of user %s revoked; "
                "this use from ip=%r ua=%r, the session's last use from ip=%r ua=%r",
                kind,
                sid,
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
            error = TokenRevoked(f"refresh token reuse detected ({what}); the session is revoked")
            return ("reuse_concurrent" if kind == "concurrent" else "reuse_replay"), error
        if status == "expired":
            return "expired", TokenExpired("refresh token expired, log in again")
        if status == "fenced":
            return "fenced", TokenRevoked("session ended when Redis lost its data, log in again")
        if status == "mismatch":
            return "invalid", InvalidToken("refresh token does not match its session")
        # unknown, or revoked by its user's revocation mark
        return "unknown", TokenRevoked("refresh token revoked or session ended, log in again")
