"""The issuer's key set: fetched over HTTP with the standard library, parsed strictly.

Only usable public signing keys are kept, each pinned to the algorithm its JWK names;
a JWKS document is read with a timeout, without following redirects, and up to
MAX_JWKS_BYTES. The fetch blocks: TokenVerifier runs it in a thread for asyncio callers.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from ._errors import JWKSUnavailable

__all__ = ["MAX_JWKS_BYTES", "fetch_jwks", "parse_jwks"]

log = logging.getLogger("tokend_client.verifier")

MAX_JWKS_BYTES = 256 * 1024
# Algorithm → (kty, allowed curves); the algorithm is pinned per key from the JWKS.
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "ES256": ("EC", frozenset({"P-256"})),
    "RS256": ("RSA", None),
}
# JWK members that only private (or symmetric) keys carry.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other non-200: the key set is not there."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def fetch_jwks(url: str, timeout: float) -> Any:
    """The JSON document at ``url`` (blocking). Raises JWKSUnavailable."""
    if not url.startswith(("http://", "https://")):
        raise JWKSUnavailable("JWKS URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            if resp.status != 200:
                raise JWKSUnavailable(f"JWKS endpoint answered {resp.status}")
            body = resp.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise JWKSUnavailable(f"JWKS endpoint answered {exc.code}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
        raise JWKSUnavailable(f"JWKS fetch failed: {exc}") from None
    if len(body) > MAX_JWKS_BYTES:
        raise JWKSUnavailable("JWKS document too large")
    try:
        return json.loads(body)
    except RecursionError:  # a deeply nested document: as unusable as bad JSON
        raise JWKSUnavailable("JWKS document nested too deeply") from None
    except ValueError:
        raise JWKSUnavailable("JWKS document is not JSON") from None


def parse_jwks(document: Any) -> dict[str, tuple[str, jwt.PyJWK]]:
    """The usable public signing keys of a JWKS, by kid, each with its JWK as JSON text.

    Unusable keys are skipped.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JWKSUnavailable("JWKS document has no key list")
    keys: dict[str, tuple[str, jwt.PyJWK]] = {}
    for jwk in document["keys"]:
        try:
            kid, key = parse_jwk(jwk)
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


def parse_jwk(jwk: Any) -> tuple[str, jwt.PyJWK]:
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
