"""Cookie mode (TOKEND_REFRESH_COOKIE): the refresh token in an HttpOnly cookie, and the
CSRF rule for the requests that cookie authenticates (docs/browser.md).

- A response carrying a token pair sets ``__Host-tokend-refresh`` (HttpOnly, Secure,
  SameSite=Strict, Path=/, Max-Age = the refresh token's remaining lifetime) and leaves
  the refresh token out of the body and out of ``X-Refresh-Token``.
- A request the cookie authenticates (refresh, logout) is honoured only with an
  ``Origin`` in the allowed list and a non-empty ``X-Tokend-CSRF``; a request that sets
  the cookie (login, code exchange) with an ``Origin`` that is not allowed is refused.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from ..auth import TokenPair
from ..errors import Forbidden
from .appkeys import SETTINGS
from .responses import json_response

REFRESH_COOKIE = "__Host-tokend-refresh"
CSRF_HEADER = "X-Tokend-CSRF"

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def cookie_mode(request: web.Request) -> bool:
    return request.app[SETTINGS].refresh_cookie


def _origin(request: web.Request) -> str | None:
    values = request.headers.getall(hdrs.ORIGIN, [])
    if len(values) > 1:
        raise Forbidden("more than one Origin header")
    return values[0] if values else None


def check_setting_origin(request: web.Request) -> None:
    """A cookie-mode request that will set the cookie: an Origin it carries must be an
    allowed one (no Origin: not a cross-origin browser request)."""
    if not cookie_mode(request):
        return
    origin = _origin(request)
    if origin is not None and origin not in request.app[SETTINGS].browser_origins:
        raise Forbidden("this Origin is not allowed (TOKEND_ALLOWED_ORIGINS)")


def require_csrf(request: web.Request) -> None:
    """The CSRF rule for a request the cookie authenticates."""
    origin = _origin(request)
    if origin is None or origin not in request.app[SETTINGS].browser_origins:
        raise Forbidden(
            "a request authenticated by the refresh cookie needs an allowed Origin "
            "(TOKEND_ALLOWED_ORIGINS)"
        )
    if not request.headers.get(CSRF_HEADER, "").strip():
        raise Forbidden(f"a request authenticated by the refresh cookie needs {CSRF_HEADER}")


def cookie_token(request: web.Request) -> str | None:
    """The refresh token from the cookie, once the CSRF rule passed; None in bearer mode
    or without the cookie."""
    if not cookie_mode(request):
        return None
    token = request.cookies.get(REFRESH_COOKIE)
    if not token:
        return None
    require_csrf(request)
    return token


def _set(response: web.StreamResponse, value: str, max_age: int) -> None:
    response.set_cookie(
        REFRESH_COOKIE,
        value,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    """Remove the cookie (with the same attributes, as a __Host- cookie must be set)."""
    _set(response, "", 0)


def token_response(request: web.Request, pair: TokenPair) -> web.Response:
    """The token body; in bearer mode the tokens also in the seed's response headers, in
    cookie mode the refresh token only in the cookie."""
    if not cookie_mode(request):
        headers = {
            **NO_STORE,
            "Authorization": f"{pair.token_type} {pair.access_token}",
            "X-Refresh-Token": pair.refresh_token,
        }
        return json_response(pair.body(), headers=headers)
    body = {k: v for k, v in pair.body().items() if k != "refresh_token"}
    response = json_response(
        body, headers={**NO_STORE, "Authorization": f"{pair.token_type} {pair.access_token}"}
    )
    _set(response, pair.refresh_token, max(0, pair.refresh_expires_in))
    return response
