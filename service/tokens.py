"""Access and refresh JWTs: issuing and strict verification.

Access tokens follow RFC 9068 (``typ: at+jwt``); refresh tokens carry ``typ: rt+jwt``
and the issuer as audience, so neither is ever accepted in place of the other
(RFC 8725 section 3.11).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import InvalidToken, TokenExpired
from .keys import KeyRing

ACCESS_TYP = "at+jwt"
REFRESH_TYP = "rt+jwt"
MAX_TOKEN_LENGTH = 4096
# Headers that would make a verifier fetch or trust key material named by the token itself.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})


def new_id() -> str:
    """A random identifier for jti and sid (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: dict[str, Any]


class TokenService:
    """Signs and verifies tokend's JWTs with the current key ring."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        audience: str,
        access_ttl: int,
        leeway: int,
    ) -> None:
        self.ring = ring
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.leeway = leeway

    def _sign(self, claims: dict[str, Any], typ: str, now: float) -> str:
        key = self.ring.signing_key(now)
        return jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"typ": typ, "kid": key.kid}
        )

    def issue_access(
        self,
        *,
        sub: str,
        sid: str,
        now: float,
        client_id: str | None = None,
        scope: str | None = None,
    ) -> IssuedToken:
        """A new access token for the session."""
        iat = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "exp": iat + self.access_ttl,
            "iat": iat,
            "jti": new_id(),
            "sid": sid,
        }
        if client_id:
            claims["client_id"] = client_id
        if scope:
            claims["scope"] = scope
        return IssuedToken(self._sign(claims, ACCESS_TYP, now), claims)

    def issue_refresh(
        self,
        *,
        sub: str,
        sid: str,
        jti: str,
        iat: int,
        exp: int,
        now: float,
        client_id: str | None = None,
    ) -> IssuedToken:
        """The refresh token ``jti`` of the session (its state lives in Redis)."""
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.issuer,
            "exp": exp,
            "iat": iat,
            "jti": jti,
            "sid": sid,
        }
        if client_id:
            claims["client_id"] = client_id
        return IssuedToken(self._sign(claims, REFRESH_TYP, now), claims)

    def verify_access(self, token: str, now: float) -> dict[str, Any]:
        """Claims of a valid access token, else InvalidToken (TokenExpired when expired)."""
        return self._verify(token, ACCESS_TYP, self.audience, now)

    def verify_refresh(self, token: str, now: float) -> dict[str, Any]:
        """Claims of a validly signed refresh token; its state is checked in Redis separately."""
        return self._verify(token, REFRESH_TYP, self.issuer, now)

    def peek_type(self, token: str) -> str | None:
        """The ``typ`` header of a token without verifying it (for choosing a path, never trust)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        typ = header.get("typ")
        return typ if isinstance(typ, str) else None

    def _verify(self, token: str, typ: str, audience: str, now: float) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("typ") != typ:
            raise InvalidToken(
                "not an access token" if typ == ACCESS_TYP else "not a refresh token"
            )
        if _FORBIDDEN_HEADERS.intersection(header):
            raise InvalidToken("token header names external key material")
        kid = header.get("kid")
        key = self.ring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=[key.alg],
                audience=audience,
                issuer=self.issuer,
                # Time claims are checked below against the injectable clock.
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub", "jti", "sid"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_describe(exc)) from None
        _check_times(claims, now, self.leeway, typ)
        return claims


def _check_times(claims: dict[str, Any], now: float, leeway: int, typ: str) -> None:
    # PyJWT accepts a string "exp"; time claims must be JSON numbers (RFC 7519 NumericDate).
    for name in ("exp", "iat", "nbf"):
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken(f"claim {name} must be a number")
    # No leeway on expiry: this server's own clock issued it.
    if claims["exp"] <= now:
        if typ == ACCESS_TYP:
            raise TokenExpired("access token expired")
        raise TokenExpired("refresh token expired, log in again")
    if claims["iat"] > now + leeway:
        raise InvalidToken("token issued in the future")
    if "nbf" in claims and claims["nbf"] > now + leeway:
        raise InvalidToken("token not yet valid")
    for name in ("sub", "jti", "sid"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise InvalidToken(f"claim {name} must be a non-empty string")


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed for this key"
    return "malformed token"
