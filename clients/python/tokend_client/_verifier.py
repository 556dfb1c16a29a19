"""Verifying tokend access tokens from the JWKS alone.

The key set is fetched over HTTP (``_jwks.py``) and cached for ``cache_ttl`` seconds. A token
whose ``kid`` is not in the cache triggers one refetch, shared by every concurrent
caller and rate-limited to one per ``min_refetch_interval``, so a flood of tokens
with made-up key ids costs the issuer one request per interval at most. Keys are
parsed once per fetch and only ever come from the JWKS, never from a token header.

The checks are the server's (``typ: at+jwt``, no ``jku``/``x5u``/``jwk``/``x5c``
headers, the algorithm pinned per key, exact ``iss`` and ``aud``, numeric time
claims, required claims), and so is the clock rule: ``iat`` and ``nbf`` get ``leeway``
seconds (30, as at tokend: a subscriber's clock is not the issuer's), ``exp`` gets only
``exp_leeway`` (default 0, at most MAX_EXP_LEEWAY): an expired token is refused here as
at tokend. The listener keeps deny entries ``exp_leeway`` seconds longer (``Tokend`` and
the framework integrations wire that), so no leeway outlives a revocation.

There are two ways in, sharing every check: ``await verify(token)`` for asyncio code
(the JWKS is fetched in a thread, one fetch for all waiting callers) and
``verify_sync(token)`` for threads (WSGI workers; one fetch at a time under a lock).

Successful verifications are remembered in a bounded LRU (``cache_size`` tokens, keyed
by the token's SHA-256; 0 disables it), because a client sends one access token on every
call until it refreshes and the signature check is most of the cost. A hit skips only
the checks that depend on nothing but the token and its key (header, signature, issuer,
audience, required claims): the time claims are checked against the clock on every
call (an entry never outlives ``exp``), the key set is still refreshed as usual, entries
verified with a key that leaves the JWKS (or changes under its kid) are dropped, and
failures are never stored. Each call returns its own copy of the claims. Revocation is
not the verifier's business: the middleware checks the deny list after every ``verify``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt

from ._cache import VerifiedCache, VerifiedToken, token_digest
from ._errors import InvalidToken, JWKSUnavailable, TokenExpired
from ._jwks import fetch_jwks, parse_jwks

__all__ = ["TokenVerifier"]

log = logging.getLogger("tokend_client.verifier")

ACCESS_TYP = "at+jwt"
MAX_TOKEN_LENGTH = 4096
#: The most ``exp`` leeway a verifier accepts (seconds): an expired token is expired.
MAX_EXP_LEEWAY = 5
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "sid")
# Headers that would make a verifier fetch or trust key material named by the token itself.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})

Clock = Callable[[], float]


class TokenVerifier:
    """Verifies access tokens against the issuer's JWKS; ``close()`` when done."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        cache_ttl: float = 300,
        min_refetch_interval: float = 30,
        leeway: float = 30,
        exp_leeway: float = 0,
        clock: Clock = time.time,
        fetch_timeout: float = 5,
        cache_size: int = 10_000,
    ) -> None:
        if not 0 <= exp_leeway <= MAX_EXP_LEEWAY:
            raise ValueError(f"exp_leeway must be between 0 and {MAX_EXP_LEEWAY} seconds")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        self.jwks_url = str(jwks_url)
        self.issuer = issuer
        self.audience = audience
        self.cache_ttl = cache_ttl
        self.min_refetch_interval = min_refetch_interval
        #: Seconds of clock difference allowed on ``iat`` and ``nbf``.
        self.leeway = leeway
        #: Seconds a token is still accepted after its ``exp`` (0 by default).
        self.exp_leeway = exp_leeway
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._sources: dict[str, str] = {}  # each key's JWK as served, to spot changes
        self._cache = VerifiedCache(cache_size)
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, for the rate limit
        self._stale = False
        self._inflight: asyncio.Task[BaseException | None] | None = None
        self._fetch_lock = threading.Lock()  # one fetch at a time, whichever the caller
        #: Fetch attempts and failed attempts so far (also counting the first fetch).
        self.fetches = 0
        self.fetch_errors = 0
        #: Verifications answered from the verified-token cache, and full verifications.
        self.cache_hits = 0
        self.cache_misses = 0

    async def __aenter__(self) -> TokenVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait for a running fetch and forget the verified tokens."""
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        self._cache.clear()

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently cached."""
        return frozenset(self._keys)

    @property
    def cache_size(self) -> int:
        """At most this many verified tokens are remembered (0: the cache is off)."""
        return self._cache.size

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered now."""
        return len(self._cache)

    def request_refresh(self) -> None:
        """Refetch the JWKS before the next verification (for ``key.rotated``).

        The refetch still respects ``min_refetch_interval``: when the last fetch was
        more recent, it happens on the first verification after the interval. Safe to
        call from any thread.
        """
        self._stale = True

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token (for asyncio code).

        Raises InvalidToken (TokenExpired when expired) for any token that does not
        pass, and JWKSUnavailable when no signing keys are known and none can be fetched.
        """
        claims = self.cached(token)
        if claims is not None:
            return claims
        digest, kid, entry = self._begin(token)
        if self._wants_fetch(kid):
            await self._refresh()
        return self._finish(token, digest, kid, entry)

    def verify_sync(self, token: str) -> dict[str, Any]:
        """``verify`` for threads (WSGI workers, sync views): it may block on a JWKS fetch."""
        claims = self.cached(token)
        if claims is not None:
            return claims
        digest, kid, entry = self._begin(token)
        if self._wants_fetch(kid):
            self._refresh_sync(kid)
        return self._finish(token, digest, kid, entry)

    # the checks, shared by both ways in

    def cached(self, token: str) -> dict[str, Any] | None:
        """The fast path of a client's repeated token: its claims from the cache when its
        key is still current, no fetch is due and its time claims hold now; None sends it
        down the full path of ``verify`` (which also raises the precise error)."""
        if not self._cache.size or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_digest(token)
        entry = self._cache.get(digest)
        if entry is None:
            return None
        now = self._clock()
        if (
            self._keys.get(entry.kid) is not entry.key
            or (self._expired(now) and self._may_fetch(now))
            or entry.exp <= now - self.exp_leeway
            or entry.not_before > now + self.leeway
        ):
            return None
        self.cache_hits += 1
        return entry.copy_claims()

    def _begin(self, token: str) -> tuple[bytes, str, VerifiedToken | None]:
        """The token's cache digest, its key id and its cache entry; the checks of the
        token alone (size, shape, header) for a token that is not in the cache."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        digest = token_digest(token) if self._cache.size else b""
        entry = self._cache.get(digest) if digest else None
        if entry is not None:  # the very same string passed these checks before
            return digest, entry.kid, entry
        _check_shape(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("typ") != ACCESS_TYP:
            raise InvalidToken("not an access token")
        if _FORBIDDEN_HEADERS.intersection(header):
            raise InvalidToken("token header names external key material")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token has no key id")
        return digest, kid, None

    def _finish(
        self, token: str, digest: bytes, kid: str, entry: VerifiedToken | None
    ) -> dict[str, Any]:
        """The verification against the keys as they are now (after any fetch)."""
        if entry is not None:
            cached = self._verify_cached(digest, entry)
            if cached is not None:
                return cached
        self.cache_misses += 1
        if not self._keys:
            # The cause is logged; the description (shown to callers) names no host.
            raise JWKSUnavailable(retry_after=max(1, int(min(self.min_refetch_interval, 5))))
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                # Time claims are checked below, with the injectable clock and leeway.
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_describe(exc)) from None
        self._check_claims(claims)
        # PyJWT also accepts a padded signature ("=="): only the unpadded spelling is
        # cached, so a holder of one token cannot fill the cache with spellings of it.
        if digest and "=" not in token and self._keys.get(kid) is key:
            self._cache.put(digest, claims, kid, key)
        return claims

    def _verify_cached(self, digest: bytes, entry: VerifiedToken) -> dict[str, Any] | None:
        """The claims of a remembered token, None when it must be verified afresh."""
        # A refetch that dropped or changed the key evicted the entry, or replaced the key.
        if self._keys.get(entry.kid) is not entry.key or self._cache.get(digest) is not entry:
            return None
        try:
            self._check_claims(entry.claims)
        except InvalidToken:
            self._cache.discard(digest)
            raise
        self.cache_hits += 1
        return entry.copy_claims()

    def _check_claims(self, claims: dict[str, Any]) -> None:
        # PyJWT accepts a string "exp"; time claims must be JSON numbers (RFC 7519 NumericDate).
        for name in ("exp", "iat", "nbf"):
            if name in claims:
                value = claims[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidToken(f"claim {name} must be a number")
        now = self._clock()
        if claims["exp"] <= now - self.exp_leeway:
            raise TokenExpired("access token expired")
        if claims["iat"] > now + self.leeway:
            raise InvalidToken("token issued in the future")
        if "nbf" in claims and claims["nbf"] > now + self.leeway:
            raise InvalidToken("token not yet valid")
        for name in ("sub", "jti", "sid"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise InvalidToken(f"claim {name} must be a non-empty string")

    # keys

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refetch_interval

    def _expired(self, now: float) -> bool:
        return self._stale or self._fetched_at is None or now - self._fetched_at >= self.cache_ttl

    def _wants_fetch(self, kid: str) -> bool:
        """Whether the key set must be fetched before ``kid`` can be looked up: there are no
        keys; they are expired (or a key.rotated arrived) and the rate limit allows a fetch
        (an unreachable issuer leaves the cached keys in use, retried once per interval); or
        ``kid`` is unknown and a fetch is under way (join it) or allowed."""
        now = self._clock()
        if not self._keys:
            return True
        if self._expired(now) and self._may_fetch(now):
            return True
        return kid not in self._keys and (self._inflight is not None or self._may_fetch(now))

    async def _refresh(self) -> BaseException | None:
        """Fetch the JWKS once for every concurrent caller; the error, if it failed."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        task = self._inflight
        return await asyncio.shield(task)

    async def _fetch(self) -> BaseException | None:
        try:
            document = await asyncio.to_thread(self._download)
        except JWKSUnavailable as exc:
            return exc
        finally:
            self._inflight = None
        return self._apply(document)

    def _refresh_sync(self, kid: str) -> None:
        """Fetch the JWKS in this thread, unless another thread's fetch, waited for under
        the lock, settled it."""
        attempted = self._attempted_at
        with self._fetch_lock:
            if self._attempted_at != attempted or not self._wants_fetch(kid):
                return
            try:
                document = self._download()
            except JWKSUnavailable:
                return
            self._apply(document)

    def _download(self) -> Any:
        """The JWKS document (blocking); counts the attempt. Raises JWKSUnavailable."""
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            return fetch_jwks(self.jwks_url, self._fetch_timeout)
        except JWKSUnavailable as exc:
            self.fetch_errors += 1
            log.warning("JWKS fetch from %s failed: %s", self.jwks_url, exc)
            raise

    def _apply(self, document: Any) -> BaseException | None:
        try:
            parsed = parse_jwks(document)
        except JWKSUnavailable as exc:
            self.fetch_errors += 1
            log.warning("JWKS fetch from %s failed: %s", self.jwks_url, exc)
            return exc
        # An unchanged key keeps its object, so the tokens it verified stay cached; tokens
        # verified with a key that is gone or changed under its kid are forgotten.
        keys = {
            kid: self._keys[kid] if self._sources.get(kid) == source else key
            for kid, (source, key) in parsed.items()
        }
        dropped = [kid for kid, key in self._keys.items() if keys.get(kid) is not key]
        self._keys = keys
        self._sources = {kid: source for kid, (source, _) in parsed.items()}
        if dropped and (evicted := self._cache.evict_keys(dropped)):
            log.info("keys %s left the JWKS: %d cached tokens dropped", sorted(dropped), evicted)
        self._fetched_at = self._attempted_at
        self._stale = False
        return None


# Three base64url segments; the signature may carry the padding PyJWT accepts.
_JWS_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*={0,2}")
# A JSON string (an unterminated one runs to the end: the scan stays linear) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
MAX_HEADER_BYTES = 1024
# The header object, and in it at most one level more (a "jwk" or a "crit" list, refused
# later with their own reason).
MAX_HEADER_DEPTH = 2


def _check_shape(token: str) -> None:
    """InvalidToken("malformed token") unless the token is three base64url segments whose
    header is a JSON object of at most MAX_HEADER_BYTES, MAX_HEADER_DEPTH levels and
    integers of at most 64 digits (as tokend checks): PyJWT parses the header with an
    unbounded json.loads, which raises RecursionError on deep nesting."""
    shape = _JWS_SHAPE.fullmatch(token)
    if shape is None:
        raise InvalidToken("malformed token")
    head = shape.group(1)
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        text = raw.decode("utf-8")
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed token") from None
    if len(raw) > MAX_HEADER_BYTES or _depth(text) > MAX_HEADER_DEPTH:
        raise InvalidToken("malformed token")
    try:  # small and shallow now: only a number can still be out of bounds
        header = json.loads(text, parse_int=_bounded_int)
    except ValueError:
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")


def _depth(text: str) -> int:
    deepest = level = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = match.group()
        if char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def _bounded_int(literal: str) -> int:
    if len(literal) > 64:
        raise ValueError("integer too long")
    return int(literal)


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed for this key"
    return "malformed token"
