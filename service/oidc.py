"""OpenID Connect relying party: discovery, JWKS, the code flow with PKCE, ID token checks.

One ``ProviderClient`` per configured provider talks to it over an injected
``aiohttp.ClientSession``; ``SocialLogin`` (``service.oidc_flow``) runs the flow around it.
Nothing here is needed at start-up: a provider that is down fails only its own logins,
with ``ProviderUnavailable`` (502), never tokend's start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt

from .clock import Clock
from .errors import ProviderUnavailable, SocialGrantInvalid, SocialLoginFailed
from .identities import ExternalAccount
from .settings import OIDCProvider

log = logging.getLogger("tokend.oidc")

T = TypeVar("T")

DISCOVERY_TTL = 3600.0
JWKS_TTL = 3600.0
JWKS_MIN_REFETCH = 30.0  # an unknown kid refetches the JWKS at most this often
FAILURE_BACKOFF = 5.0  # after a failed fetch, fail fast this long before asking again
MAX_RESPONSE = 256 * 1024
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)

# Asymmetric only: never "none", never HS* (a JWK is public, so an HMAC "secret" from it
# would let anyone forge tokens).
ALGORITHMS: Mapping[str, tuple[str, frozenset[str | None]]] = {
    **{alg: ("RSA", frozenset({None})) for alg in ("RS256", "RS384", "RS512")},
    **{alg: ("RSA", frozenset({None})) for alg in ("PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


@dataclass(frozen=True)
class Discovery:
    """The parts of a provider's openid-configuration that tokend uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]
    id_token_algs: tuple[str, ...]
    iss_parameter_supported: bool


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def discovery_url(issuer: str) -> str:
    """OpenID Connect Discovery 1.0 section 4: a terminating / is removed first."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _jwk_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, curves = ALGORITHMS[alg]
    return (
        jwk.get("kty") == kty
        and jwk.get("crv") in curves
        and jwk.get("alg") in (None, alg)
        and jwk.get("use") in (None, "sig")
    )


class ProviderClient:
    """One external OpenID provider, spoken to over an injected ClientSession."""

    def __init__(
        self,
        provider: OIDCProvider,
        http: aiohttp.ClientSession,
        *,
        clock: Clock,
        leeway: int = 60,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.http = http
        self.clock = clock
        self.leeway = leeway
        self.monotonic = monotonic
        self._discovery: Discovery | None = None
        self._discovery_at = 0.0
        self._jwks: list[dict[str, Any]] | None = None
        self._jwks_at = 0.0
        self._failures: dict[str, tuple[float, ProviderUnavailable]] = {}
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.provider.name

    def _down(self, what: str) -> ProviderUnavailable:
        return ProviderUnavailable(f"identity provider {self.name!r} unavailable: {what}", 5)

    async def _request(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, parsed JSON) of one call; transport failures become ProviderUnavailable."""
        try:
            async with self.http.request(
                method, url, timeout=HTTP_TIMEOUT, allow_redirects=False, **kwargs
            ) as resp:
                raw = await _read_limited(resp, MAX_RESPONSE)
                status = resp.status
        except TimeoutError as exc:
            raise self._down(f"{urlsplit(url).path} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._down(f"cannot reach {urlsplit(url).netloc}") from exc
        if len(raw) > MAX_RESPONSE:
            raise self._down(f"{urlsplit(url).path} answered more than {MAX_RESPONSE} bytes")
        try:
            return status, json.loads(raw)
        except (ValueError, RecursionError):
            if status >= 500:
                raise self._down(f"{urlsplit(url).path} answered {status}") from None
            raise self._down(f"{urlsplit(url).path} answered no JSON (status {status})") from None

    async def _get_object(self, url: str) -> dict[str, Any]:
        status, body = await self._request("GET", url, headers={"Accept": "application/json"})
        if status != 200 or not isinstance(body, dict):
            raise self._down(f"{urlsplit(url).path} answered {status}")
        return body

    async def _fetch(self, what: str, url: str, parse: Callable[[dict[str, Any]], T]) -> T:
        """GET and parse a JSON document; after a failure, fail fast for FAILURE_BACKOFF.

        Logins queued behind the lock then fail at once instead of each waiting out the
        timeout of a provider that is down.
        """
        failure = self._failures.get(what)
        if failure is not None and self.monotonic() - failure[0] < FAILURE_BACKOFF:
            raise ProviderUnavailable(failure[1].description, failure[1].retry_after)
        try:
            value = parse(await self._get_object(url))
        except ProviderUnavailable as exc:
            self._failures[what] = (self.monotonic(), exc)
            raise
        self._failures.pop(what, None)
        return value

    async def discovery(self) -> Discovery:
        """The provider's metadata, cached for DISCOVERY_TTL (stale copy kept if it fails)."""
        async with self._lock:
            if self._discovery is not None and (
                self.monotonic() - self._discovery_at < DISCOVERY_TTL
            ):
                return self._discovery
            try:
                doc = await self._fetch(
                    "discovery", discovery_url(self.issuer), self._parse_discovery
                )
            except ProviderUnavailable as exc:
                if self._discovery is None:
                    raise
                log.warning(
                    "%s: discovery refresh failed, keeping the cached copy: %s", self.name, exc
                )
                return self._discovery
            self._discovery, self._discovery_at = doc, self.monotonic()
            return doc

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    def _parse_discovery(self, doc: dict[str, Any]) -> Discovery:
        if doc.get("issuer") != self.issuer:
            # OIDC Discovery section 4.3: the document must name exactly the configured issuer.
            raise self._down(f"discovery names issuer {str(doc.get('issuer'))[:200]!r}")
        urls = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(key)
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise self._down(f"discovery has no valid {key}")
            urls[key] = str(value)
        return Discovery(
            issuer=self.issuer,
            authorization_endpoint=urls["authorization_endpoint"],
            token_endpoint=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            # Discovery section 3: client_secret_basic when the field is omitted.
            token_auth_methods=_str_list(doc.get("token_endpoint_auth_methods_supported"))
            or ("client_secret_basic",),
            id_token_algs=_str_list(doc.get("id_token_signing_alg_values_supported")),
            iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported")
            is True,
        )

    async def _keys(self, *, force: bool) -> list[dict[str, Any]]:
        doc = await self.discovery()
        async with self._lock:
            age = self.monotonic() - self._jwks_at
            if self._jwks is not None and (age < JWKS_TTL and not force):
                return self._jwks
            if self._jwks is not None and force and age < JWKS_MIN_REFETCH:
                return self._jwks  # rate limit: a flood of unknown kids costs one fetch
            try:
                keys = await self._fetch("jwks", doc.jwks_uri, self._parse_jwks)
            except ProviderUnavailable as exc:
                if self._jwks is None or force:
                    raise
                log.warning("%s: JWKS refresh failed, keeping the cached keys: %s", self.name, exc)
                return self._jwks
            self._jwks, self._jwks_at = keys, self.monotonic()
            return keys

    def _parse_jwks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        keys = body.get("keys")
        if not isinstance(keys, list):
            raise self._down("JWKS has no keys list")
        return [k for k in keys if isinstance(k, dict)]

    async def signing_key(self, kid: object, alg: str) -> Any:
        """The provider's public key for ``kid`` and ``alg``; one refetch on an unknown kid."""
        for force in (False, True):
            candidates = [k for k in await self._keys(force=force) if _jwk_fits(k, alg)]
            if kid is not None:
                candidates = [k for k in candidates if k.get("kid") == kid]
            elif len(candidates) > 1:
                candidates = []  # no kid and several keys: ambiguous, refuse
            if candidates:
                try:
                    return jwt.PyJWK(candidates[0], algorithm=alg).key
                except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
                    raise self._down(f"unusable JWK {str(kid)[:64]!r}") from exc
        raise _bad_token(f"no provider key matches kid {str(kid)[:64]!r} and alg {alg}")

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        """The provider's authorization endpoint with a code request (PKCE S256, state, nonce)."""
        doc = await self.discovery()
        params = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.provider.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        sep = "&" if urlsplit(doc.authorization_endpoint).query else "?"
        return doc.authorization_endpoint + sep + urlencode(params, quote_via=quote)

    def check_iss_parameter(self, doc: Discovery, iss: str | None) -> None:
        """RFC 9207: ``iss`` must name this provider; required when it says it sends one."""
        if iss is None:
            if doc.iss_parameter_supported:
                raise SocialLoginFailed("the authorization response lacks the iss parameter")
        elif iss != self.issuer:
            raise SocialLoginFailed("the authorization response comes from another issuer")

    async def exchange(self, *, code: str, verifier: str, redirect_uri: str) -> str:
        """Trade the authorization code for tokens at the token endpoint; the raw ID token."""
        doc = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        kwargs: dict[str, Any] = {"headers": {"Accept": "application/json"}}
        client_id, secret = self.provider.client_id, self.provider.client_secret
        if "client_secret_basic" in doc.token_auth_methods:
            # RFC 6749 section 2.3.1: both parts are form-urlencoded before Basic encoding.
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
            kwargs["headers"]["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif "client_secret_post" in doc.token_auth_methods:
            form.update(client_id=client_id, client_secret=secret)
        else:
            raise self._down("token endpoint supports neither client_secret_basic nor _post")
        status, body = await self._request("POST", doc.token_endpoint, data=form, **kwargs)
        if status >= 500:
            raise self._down(f"token endpoint answered {status}")
        error = body.get("error") if isinstance(body, dict) else None
        if status == 401 or error == "invalid_client":
            raise self._down("the provider rejected tokend's client credentials")
        if status == 200 and not isinstance(body, dict):
            raise self._down("the token response is not a JSON object")
        if status != 200 or not isinstance(body, dict):
            raise SocialGrantInvalid(
                f"the provider refused the authorization code ({_printable(error)})"
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise self._down("the token response has no id_token")
        return id_token

    async def verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims after every check of OIDC Core section 3.1.3.7."""
        # Time is checked in _check_claims against tokend's own (injectable) clock.
        claims = await self.verified_jws(token, "ID token", ["iss", "sub", "aud", "exp", "iat"])
        self._check_claims(claims, nonce)
        return claims

    async def verified_jws(self, token: str, what: str, require: list[str]) -> dict[str, Any]:
        """The claims of a JWS the provider signed (an ID token, a logout token; ``what``
        names it in the errors, SocialGrantInvalid): an algorithm on tokend's list and
        among those the provider announces, its key from the provider's JWKS, the
        signature, ``iss``, ``aud`` and the ``require``d claims. The time claims are the
        caller's to check."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _bad_token(f"the {what} is not a valid JWS") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _bad_token(f"{what} algorithm {str(alg)[:20]!r} is not accepted")
        doc = await self.discovery()
        if doc.id_token_algs and alg not in doc.id_token_algs:
            raise _bad_token(f"{what} algorithm {alg} is not one the provider announces")
        key = await self.signing_key(header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.provider.client_id,
                issuer=self.issuer,
                options={
                    "require": require,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidIssuerError:
            raise _bad_token(f"the {what}'s iss is not the provider's issuer") from None
        except jwt.InvalidAudienceError:
            raise _bad_token(f"the {what}'s aud does not contain tokend's client_id") from None
        except jwt.PyJWTError as exc:
            raise _bad_token(f"the {what} is invalid ({_jwt_reason(exc)})") from None
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce: str) -> None:
        now = self.clock()
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise _bad_token(f"the ID token's {name} is not a number")
        if claims["exp"] + self.leeway < now:
            raise _bad_token("the ID token has expired")
        if claims["iat"] - self.leeway > now or claims.get("nbf", now) - self.leeway > now:
            raise _bad_token("the ID token is not valid yet")
        aud = claims["aud"]
        azp = claims.get("azp")
        several = isinstance(aud, list) and len(aud) > 1
        if (several or azp is not None) and azp != self.provider.client_id:
            raise _bad_token("the ID token's azp is not tokend's client_id")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise _bad_token("the ID token's nonce does not match this login")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise _bad_token("the ID token's sub is not a valid subject")

    def account(self, claims: Mapping[str, Any]) -> ExternalAccount:
        """The external account a verified ID token describes."""
        email = claims.get("email")
        hint = claims.get("preferred_username") or email
        return ExternalAccount(
            provider=self.name,
            issuer=self.issuer,
            subject=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            username_hint=hint if isinstance(hint, str) else None,
        )


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit + 1`` bytes (more than ``limit`` means too large).

    ``content.read(n)`` returns what has arrived so far, up to n, not n bytes: a body in
    several TCP segments needs a loop until EOF.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await resp.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    name = type(exc).__name__
    if isinstance(exc, jwt.InvalidSignatureError):
        return f"{name}: the signature does not verify with the provider's key"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"{name}: the {exc.claim} claim is missing"
    return name


def _bad_token(description: str) -> SocialGrantInvalid:
    return SocialGrantInvalid(description)


def _printable(value: object, limit: int = 100) -> str:
    """A provider-supplied string made safe to echo: printable ASCII, bounded."""
    text = value if isinstance(value, str) else "no error code"
    return "".join(c for c in text if 32 <= ord(c) < 127)[:limit] or "no error code"
