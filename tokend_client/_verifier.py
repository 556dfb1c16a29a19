"""Verifying tokend access tokens from the JWKS alone.

The key set is fetched with aiohttp and cached for ``cache_ttl`` seconds. A token
whose ``kid`` is not in the cache triggers one refetch, shared by every concurrent
caller and rate-limited to one per ``min_refetch_interval``, so a flood of tokens
with made-up key ids costs the issuer one request per interval at most. Keys are
parsed once per fetch and only ever come from the JWKS, never from a token header.

The checks are the server's (``typ: at+jwt``, no ``jku``/``x5u``/``jwk``/``x5c``
headers, the algorithm pinned per key, exact ``iss`` and ``aud``, numeric time
claims, required claims), except that ``exp``, ``iat`` and ``nbf`` get ``leeway``
seconds: a subscriber's clock is not the issuer's.

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
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt

from ._cache import VerifiedCache, VerifiedToken, token_digest
from ._errors import InvalidToken, JWKSUnavailable, TokenExpired

__all__ = ["TokenVerifier"]

log = logging.getLogger("tokend_client.verifier")

ACCESS_TYP = "at+jwt"
MAX_TOKEN_LENGTH = 4096
MAX_JWKS_BYTES = 256 * 1024
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "sid")
# Headers that would make a verifier fetch or trust key material named by the token itself.
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})
# Algorithm → (kty, allowed curves); the algorithm is pinned per key from the JWKS.
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "ES256": ("EC", frozenset({"P-256"})),
    "RS256": ("RSA", None),
}
# JWK members that only private (or symmetric) keys carry.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

Clock = Callable[[], float]


class TokenVerifier:
    """Verifies access tokens against the issuer's JWKS; ``close()`` when done."""

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        session: aiohttp.ClientSession | None = None,
        cache_ttl: float = 300,
        min_refetch_interval: float = 30,
        leeway: float = 30,
        clock: Clock = time.time,
        fetch_timeout: float = 5,
        cache_size: int = 10_000,
    ) -> None:
        self.jwks_url = str(jwks_url)
        self.issuer = issuer
        self.audience = audience
        self.cache_ttl = cache_ttl
        self.min_refetch_interval = min_refetch_interval
        self.leeway = leeway
        self._clock = clock
        self._fetch_timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._session = session
        self._owns_session = session is None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._sources: dict[str, str] = {}  # each key's JWK as served, to spot changes
        self._cache = VerifiedCache(cache_size)
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, for the rate limit
        self._stale = False
        self._inflight: asyncio.Task[BaseException | None] | None = None
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
        """Cancel a running fetch and close the HTTP session if the verifier made it."""
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
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
        more recent, it happens on the first verification after the interval.
        """
        self._stale = True

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token.

        Raises InvalidToken (TokenExpired when expired) for any token that does not
        pass, and JWKSUnavailable when no signing keys are known and none can be fetched.
        """
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        digest = token_digest(token) if self._cache.size else b""
        entry = self._cache.get(digest) if digest else None
        if entry is not None:
            cached = await self._verify_cached(digest, entry)
            if cached is not None:
                return cached
        self.cache_misses += 1
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
        key = await self._key(kid)
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
        # No await since _key(): the key is still the current one for kid. PyJWT also
        # accepts a padded signature ("=="): only the unpadded spelling is cached, so a
        # holder of one token cannot fill the cache with spellings of it.
        if digest and "=" not in token:
            self._cache.put(digest, claims, kid, key)
        return claims

    async def _verify_cached(self, digest: bytes, entry: VerifiedToken) -> dict[str, Any] | None:
        """The claims of a remembered token, None when it must be verified afresh."""
        # Keep the key set as fresh as a full verification would (TTL, key.rotated); a
        # refetch that drops or changes the key evicts the entry, which is checked below.
        key = await self._key(entry.kid)
        if key is not entry.key or self._cache.get(digest) is not entry:
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
        if claims["exp"] <= now - self.leeway:
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

    async def _key(self, kid: str) -> jwt.PyJWK:
        now = self._clock()
        if not self._keys:
            error = await self._refresh()
            if not self._keys:
                # The cause is logged; the description (shown to callers) names no host.
                raise JWKSUnavailable(
                    retry_after=max(1, int(min(self.min_refetch_interval, 5)))
                ) from error
        elif self._expired(now) and self._may_fetch(now):
            # Expired (or a key.rotated arrived): refetch, but keep serving the cached
            # keys when the issuer is unreachable, retrying once per interval.
            await self._refresh()
        key = self._keys.get(kid)
        # Join a fetch already under way (another caller's unknown kid) rather than
        # failing for the rate limit it just started.
        if key is None and (self._inflight is not None or self._may_fetch(self._clock())):
            await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        return key

    async def _refresh(self) -> BaseException | None:
        """Fetch the JWKS once for every concurrent caller; the error, if it failed."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        task = self._inflight
        return await asyncio.shield(task)

    async def _fetch(self) -> BaseException | None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            parsed = _parse_jwks(await self._get_json())
        except (JWKSUnavailable, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.fetch_errors += 1
            log.warning("JWKS fetch from %s failed: %s", self.jwks_url, exc)
            return exc
        finally:
            self._inflight = None
        # An unchanged key keeps its object, so the tokens it verified stay cached; tokens
        # verified with a key that is gone or changed under its kid are forgotten.
        keys = {
            kid: self._keys[kid] if self._sources.get(kid) == source else key
            for kid, (source, key) in parsed.items()
        }
        dropped = [kid for kid, key in self._keys.items() if keys.get(kid) is not key]
        if dropped and (evicted := self._cache.evict_keys(dropped)):
            log.info("keys %s left the JWKS: %d cached tokens dropped", sorted(dropped), evicted)
        self._keys = keys
        self._sources = {kid: source for kid, (source, _) in parsed.items()}
        self._fetched_at = self._attempted_at
        self._stale = False
        return None

    async def _get_json(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(
            self.jwks_url,
            timeout=self._fetch_timeout,
            allow_redirects=False,
            headers={"Accept": "application/json"},
        ) as resp:
            if resp.status != 200:
                raise JWKSUnavailable(f"JWKS endpoint answered {resp.status}")
            # content.read(n) returns what has arrived so far (up to n), not n bytes:
            # read until EOF or one byte past the limit.
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_JWKS_BYTES:
                chunk = await resp.content.read(MAX_JWKS_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
        if len(body) > MAX_JWKS_BYTES:
            raise JWKSUnavailable("JWKS document too large")
        try:
            return json.loads(body)
        except RecursionError:  # a deeply nested document: as unusable as bad JSON
            raise JWKSUnavailable("JWKS document nested too deeply") from None


def _parse_jwks(document: Any) -> dict[str, tuple[str, jwt.PyJWK]]:
    """The usable public signing keys of a JWKS, by kid, each with its JWK as JSON text.

    Unusable keys are skipped.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JWKSUnavailable("JWKS document has no key list")
    keys: dict[str, tuple[str, jwt.PyJWK]] = {}
    for jwk in document["keys"]:
        try:
            kid, key = _parse_jwk(jwk)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            log.warning("skipping unusable JWK: %s", exc)
            continue
        if kid in keys:
            log.warning("skipping JWK with duplicate kid %s", kid)
            continue
        keys[kid] = (json.dumps(jwk, sort_keys=True), key)
    if not keys:
        raise JWKSUnavailable("JWKS holds no usable signing key")
    return keys


def _parse_jwk(jwk: Any) -> tuple[str, jwt.PyJWK]:
    if not isinstance(jwk, dict):
        raise ValueError("JWK is not an object")
    kid, alg, kty = jwk.get("kid"), jwk.get("alg"), jwk.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without kid")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"JWK {kid} is not for signatures")
    if not isinstance(alg, str) or alg not in _KEY_TYPES:
        raise ValueError(f"JWK {kid} has no supported alg ({alg!r})")
    expected_kty, curves = _KEY_TYPES[alg]
    if kty != expected_kty:
        raise ValueError(f"JWK {kid}: kty {kty!r} does not fit alg {alg}")
    if curves is not None and jwk.get("crv") not in curves:
        raise ValueError(f"JWK {kid}: curve {jwk.get('crv')!r} does not fit alg {alg}")
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise ValueError(f"JWK {kid} carries private key material")
    key = jwt.PyJWK(jwk, algorithm=alg)
    if alg == "RS256" and getattr(key.key, "key_size", 0) < 2048:
        raise ValueError(f"JWK {kid}: RSA key shorter than 2048 bits")
    return kid, key


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
