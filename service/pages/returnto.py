"""Where a page may send the browser after a login: the ``return_to`` rule.

Allowed: a path on tokend itself (one leading ``/``, never ``//`` or a backslash, no
whitespace or control characters), or an absolute http(s) URL whose origin is allowed
(TOKEND_ALLOWED_ORIGINS, the issuer's) or that TOKEND_OIDC_RETURN_TO allows. Anything
else (another site, ``//evil``, ``javascript:``) is dropped, never put in a page.
The page script checks the same again before it navigates.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..oidc_rules import MAX_RETURN_TO, return_to_allowed
from ..settings import Settings

DEFAULT_RETURN_TO = "/account"
# A path on this origin: "/" then no second "/" or "\" (a protocol-relative URL), and
# only printable, non-space ASCII (browsers drop tabs and newlines, so "/\t/x" is "//x").
_LOCAL_PATH = re.compile(r"/(?![/\\])[!-~]*")


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL (lower-cased scheme and host), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme.lower()}://{host}{suffix}"


def allowed_origins(settings: Settings) -> list[str]:
    """The origins a page may return to: the issuer's, TOKEND_ALLOWED_ORIGINS and those of
    TOKEND_OIDC_RETURN_TO, each once, in that order."""
    found: list[str] = []
    for url in (settings.issuer, *settings.allowed_origins, *settings.oidc_return_to):
        origin = origin_of(url)
        if origin is not None and origin not in found:
            found.append(origin)
    return found


def safe_return_to(raw: str | None, settings: Settings) -> str | None:
    """``raw`` when a page may send the browser there, else None."""
    if not raw or len(raw) > MAX_RETURN_TO:
        return None
    if raw.startswith("/"):
        if "\\" in raw or not _LOCAL_PATH.fullmatch(raw):
            return None
        return raw
    origins = tuple(settings.browser_origins)
    if return_to_allowed(raw, origins) or return_to_allowed(raw, settings.oidc_return_to):
        return raw
    return None
