"""Access and refresh JWTs: issuing and strict verification.

Access tokens follow RFC 9068 (``typ: at+jwt``) and are signed with the asymmetric key
ring, so other services verify them from the JWKS alone. Refresh tokens carry
``typ: rt+jwt`` and the issuer as audience and are MACed (HS256) with a key derived from
the key-encryption key: only tokend ever verifies them, HMAC is several times cheaper
than a signature on the refresh hot path, and they stay valid across signing-key
rotations. The verifier is chosen by the expected type, never by the token: an access
token is only ever checked against the ring's public keys and a refresh token only
against the MAC key, so neither is accepted in place of the other (RFC 8725 3.11).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import boundedjson
from .errors import InvalidToken, TokenExpired
from .keys import KeyRing

ACCESS_TYP = "at+jwt"
REFRESH_TYP = "rt+jwt"
REFRESH_ALG = "HS256"
MAX_TOKEN_LENGTH = 4096
# A token's header is a JSON object of at most this many bytes (tokend's own are about
# 60) and levels (the object, and in it a "jwk" object or a "crit" list, which are then
# refused for what they are): bounded before PyJWT's unbounded json.loads sees it.
MAX_HEADER_BYTES = 1024
MAX_HEADER_DEPTH = 2
_JWS_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*={0,2}")
# Headers that would make a verifier fetch or trust key material named by the token itself.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]
# Time claims are checked by _check_times against the injectable clock.
_DECODE_OPTIONS: Any = {
    "require": _REQUIRED,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
}


def new_id() -> str:
    """A random identifier for jti and sid (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def derive_refresh_key(kek: bytes) -> bytes:
    """The refresh-token MAC key: HKDF-SHA256 of the key-encryption key."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tokend refresh-token mac v1"
    ).derive(kek)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: dict[str, Any]


class TokenService:
    """Signs and verifies tokend's JWTs: the key ring for access, a MAC key for refresh."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        refresh_key: bytes,
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
        self._refresh_key = refresh_key
        # A kid naming the MAC key, so a changed key-encryption key fails cleanly.
        self._refresh_kid = "rt-" + hashlib.sha256(refresh_key).hexdigest()[:16]

    def issue_access(
        self,
        *,
        sub: str,
        sid: str,
        now: float,
        client_id: str | None = None,
        scope: str | None = None,
        auth_time: float | None = None,
        jkt: str | None = None,
    ) -> IssuedToken:
        """A new access token for the session. ``auth_time`` (OpenID Connect's claim, here
        to the microsecond on Redis's clock) is when the session's credentials were
        checked: a user revocation denies the tokens of sessions authenticated up to it.
        ``jkt``: the DPoP key it is bound to (RFC 9449 section 6.1, ``cnf.jkt``)."""
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
        if auth_time:
            claims["auth_time"] = auth_time
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        key = self.ring.signing_key(now)
        token = jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"typ": ACCESS_TYP, "kid": key.kid}
        )
        return IssuedToken(token, claims)

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
        rot: int = 1,
        jkt: str | None = None,
    ) -> IssuedToken:
        """The refresh token ``jti`` of the session (its state lives in Redis), the
        session's ``rot``-th (its rotation number, checked by rotate.lua); ``jkt``: the
        DPoP key it is bound to (``cnf.jkt``; a refresh needs a proof by that key).

        Deterministic: the same claims give the same bytes, so a grace replay hands out
        exactly the successor the first caller got.
        """
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.issuer,
            "exp": exp,
            "iat": iat,
            "jti": jti,
            "sid": sid,
            "rot": rot,
        }
        if client_id:
            claims["client_id"] = client_id
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        token = jwt.encode(
            claims,
            self._refresh_key,
            algorithm=REFRESH_ALG,
            headers={"typ": REFRESH_TYP, "kid": self._refresh_kid},
        )
        return IssuedToken(token, claims)

    def verify_access(self, token: str, now: float) -> dict[str, Any]:
        """Claims of a valid access token, else InvalidToken (TokenExpired when expired)."""
        header = _header(token, ACCESS_TYP)
        kid = header.get("kid")
        key = self.ring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        claims = _decode(token, key.public, key.alg, self.audience, self.issuer)
        _check_times(claims, now, self.leeway, ACCESS_TYP)
        return claims

    def verify_refresh(self, token: str, now: float) -> dict[str, Any]:
        """Claims of a validly MACed refresh token; its state is checked in Redis separately."""
        header = _header(token, REFRESH_TYP)
        if header.get("kid") != self._refresh_kid:
            raise InvalidToken("unknown signing key")
        claims = _decode(token, self._refresh_key, REFRESH_ALG, self.issuer, self.issuer)
        _check_times(claims, now, self.leeway, REFRESH_TYP)
        return claims

    def peek_bound(self, token: str) -> bool:
        """Whether a token claims a DPoP binding, unverified (for choosing a path only:
        verify_refresh's claims decide)."""
        if len(token) > MAX_TOKEN_LENGTH:
            return False
        try:
            payload = token.split(".")[1]
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            claims = boundedjson.loads(raw.decode("utf-8"), max_depth=3)
        except (ValueError, IndexError, binascii.Error):
            return False
        return isinstance(claims, dict) and bound_key(claims) is not None

    def peek_type(self, token: str) -> str | None:
        """The ``typ`` header of a token without verifying it (for choosing a path, never trust)."""
        try:
            header = _parse_header(token)
        except InvalidToken:
            return None
        typ = header.get("typ")
        return typ if isinstance(typ, str) else None


def bound_key(claims: dict[str, Any]) -> str | None:
    """The DPoP key thumbprint a verified token is bound to (``cnf.jkt``), None when it
    is a bearer token."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) and jkt else None


def rotation_number(claims: dict[str, Any]) -> int | None:
    """A verified refresh token's ``rot`` claim (None for a token without one)."""
    rot = claims.get("rot")
    return rot if isinstance(rot, int) and not isinstance(rot, bool) and rot > 0 else None


def _parse_header(token: str) -> dict[str, Any]:
    """The header of a JWS-shaped token, checked before PyJWT parses it again: three
    base64url segments (the signature may carry its padding, which PyJWT accepts), and a
    header that is a JSON object within MAX_HEADER_BYTES and MAX_HEADER_DEPTH. Anything
    else is "malformed token", never a RecursionError or ValueError from the json module."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("token too long")
    shape = _JWS_SHAPE.fullmatch(token)
    if shape is None:
        raise InvalidToken("malformed token")
    head = shape.group(1)
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        if len(raw) > MAX_HEADER_BYTES:
            raise InvalidToken("malformed token")
        header = boundedjson.loads(raw.decode("utf-8"), max_depth=MAX_HEADER_DEPTH)
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONError are ValueErrors
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    return header


def _header(token: str, typ: str) -> dict[str, Any]:
    header = _parse_header(token)
    if header.get("typ") != typ:
        raise InvalidToken("not an access token" if typ == ACCESS_TYP else "not a refresh token")
    if _FORBIDDEN_HEADERS.intersection(header):
        raise InvalidToken("token header names external key material")
    return header


def _decode(token: str, key: Any, alg: str, audience: str, issuer: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            issuer=issuer,
            options=_DECODE_OPTIONS,
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(_describe(exc)) from None
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
