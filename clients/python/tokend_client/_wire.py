"""Reading tokend's answers: token pairs, error bodies, ``Retry-After`` and
``WWW-Authenticate`` challenges (RFC 9110 section 11.6.1, RFC 6750 section 3)."""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from ._errors import LoginFailed, TokendClientError, TokendUnavailable
from ._store import Tokens

__all__ = [
    "TRANSIENT_STATUS",
    "bearer",
    "challenges",
    "description",
    "invalid_token",
    "json_object",
    "login_error",
    "pair",
    "retry_after",
]

#: Statuses worth retrying: tokend busy, its store away, or a proxy between us failing.
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_AUTH_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(?:,|$)')
_AUTH_SCHEME = re.compile(rf"\s*({_TOKEN})(?=\s|,|$)(?!\s*=)\s*,?")
_TOKEN68 = re.compile(r"\s*[A-Za-z0-9\-._~+/]+=*\s*(?:,|$)")


def pair(headers: Mapping[str, str], body: Mapping[str, Any], started: float) -> Tokens:
    """The pair from a tokend answer: the seed's headers first, else the token body."""
    access = bearer(headers.get("Authorization")) or body.get("access_token")
    refresh = headers.get("X-Refresh-Token") or body.get("refresh_token")
    expires_in, refresh_expires_in = body.get("expires_in"), body.get("refresh_expires_in")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise TokendClientError("tokend's answer carries no token pair")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise TokendClientError("tokend's answer has no expires_in")
    refresh_at = None
    if isinstance(refresh_expires_in, int | float) and not isinstance(refresh_expires_in, bool):
        refresh_at = started + refresh_expires_in
    return Tokens(access, refresh, started + expires_in, refresh_at)


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body; TokendClientError for anything else."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise TokendClientError("tokend's answer is not a JSON object")
    return document


def description(body: bytes) -> str:
    """The ``error_description`` of a JSON error body, or ""."""
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    text = document.get("error_description") if isinstance(document, dict) else None
    return text if isinstance(text, str) else ""


def login_error(resp: aiohttp.ClientResponse, body: bytes, now: float) -> TokendClientError:
    """The error for a login answer other than 200."""
    text = description(body) or f"tokend answered {resp.status}"
    retry = retry_after(resp.headers, now)
    if resp.status in (400, 401, 403):
        return LoginFailed(text, status=resp.status)
    if resp.status == 429:
        return LoginFailed(text, status=429, retry_after=int(retry or 60))
    if resp.status in TRANSIENT_STATUS:
        return TokendUnavailable(text, int(retry or 5))
    return TokendClientError(f"login answered {resp.status}: {text}")


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), or None when absent or malformed."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def invalid_token(resp: aiohttp.ClientResponse) -> bool:
    """Whether a 401 carries a Bearer challenge with ``error="invalid_token"``."""
    return any(
        params.get("error") == "invalid_token"
        for header in resp.headers.getall("WWW-Authenticate", [])
        for scheme, params in challenges(header)
        if scheme == "bearer"
    )


def challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """RFC 9110 section 11.6.1 challenges: (lower-case scheme, auth-params)."""
    found: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        param = _AUTH_PARAM.match(header, pos)
        if param is not None and found:
            quoted, plain = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
            found[-1][1][param.group(1).lower()] = value
            pos = param.end()
            continue
        token68 = _TOKEN68.match(header, pos) if found and not found[-1][1] else None
        if token68 is not None and param is None:
            pos = token68.end()  # Basic's credentials-style value: nothing we need
            continue
        scheme = _AUTH_SCHEME.match(header, pos)
        if scheme is None:
            break  # a token68 or garbage: what was parsed so far stands
        found.append((scheme.group(1).lower(), {}))
        pos = scheme.end()
    return found
