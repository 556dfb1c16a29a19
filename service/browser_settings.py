"""The browser settings: TOKEND_REFRESH_COOKIE's cookie mode and TOKEND_ALLOWED_ORIGINS.

An origin is ``scheme://host[:port]`` as a browser sends it in ``Origin``: the scheme
and host lower-cased and a default port (80 for http, 443 for https) left out, so an
entry compares with the header character for character.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(raw: str) -> str:
    """``raw`` as a normalised origin; ValueError for anything else (a path, a query,
    userinfo, a wildcard, another scheme)."""
    parts = urlsplit(raw)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"expected an origin (scheme://host[:port]), got {raw!r}") from None
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in raw
        or "#" in raw
        or parts.username is not None
        or parts.password is not None
        or "*" in raw
        or any(c.isspace() for c in raw)
    ):
        raise ValueError(
            f"expected an origin such as https://app.example.com (scheme://host[:port], "
            f"no path), got {raw!r}"
        )
    scheme = parts.scheme.lower()
    host = parts.hostname
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origins(raw: str) -> tuple[str, ...]:
    """TOKEND_ALLOWED_ORIGINS: comma-separated origins, empty entries skipped."""
    found: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if item and origin(item) not in found:
            found.append(origin(item))
    return tuple(found)


def issuer_origin(issuer: str) -> str:
    """The origin of TOKEND_ISSUER (its path, if any, dropped)."""
    parts = urlsplit(issuer)
    return origin(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}")
