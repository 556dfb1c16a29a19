"""CORS for the allowed origins (TOKEND_ALLOWED_ORIGINS and the issuer's own).

A request whose ``Origin`` is allowed gets, on every answer (errors included), that
origin in ``Access-Control-Allow-Origin`` with credentials allowed, ``Vary: Origin`` and
the headers a page may read (``WWW-Authenticate`` for a 401's reason, ``Retry-After``,
``DPoP-Nonce`` for a DPoP client's next proof).
A preflight from it is answered here, 204, before any route: the methods and request
headers tokend's routes use, cached for ten minutes. Any other origin gets no CORS
header, so the browser withholds the answer from its page; its preflight is a 403.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from ..errors import Forbidden
from .appkeys import SETTINGS
from .errors import Handler, render

ALLOW_METHODS = "GET, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, X-Tokend-CSRF, DPoP"
EXPOSE_HEADERS = "WWW-Authenticate, Retry-After, DPoP-Nonce"
MAX_AGE = "600"


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
        hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS: "true",
        hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: EXPOSE_HEADERS,
    }


def _vary(answer: web.StreamResponse | web.HTTPException) -> None:
    """``Vary: Origin`` on every answer, with an Origin or without: a cache must not hand
    an answer made for one origin (or for none) to another."""
    vary = answer.headers.get(hdrs.VARY)
    if vary is None:
        answer.headers[hdrs.VARY] = "Origin"
    elif "origin" not in (v.strip().lower() for v in vary.split(",")):
        answer.headers[hdrs.VARY] = f"{vary}, Origin"


def _add(answer: web.StreamResponse | web.HTTPException, origin: str) -> None:
    answer.headers.update(_cors_headers(origin))
    _vary(answer)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get(hdrs.ORIGIN)
    allowed = origin is not None and origin in request.app[SETTINGS].browser_origins
    preflight = (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )
    if preflight and origin is not None:
        if not allowed:
            return render(Forbidden("this Origin is not allowed (TOKEND_ALLOWED_ORIGINS)"))
        preflighted = web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
            },
        )
        _add(preflighted, origin)
        return preflighted
    try:
        response: web.StreamResponse | web.HTTPException = await handler(request)
    except web.HTTPException as exc:  # a redirect (errors are answers by now)
        response = exc
    if allowed and origin is not None:
        _add(response, origin)
    else:
        _vary(response)
    if isinstance(response, web.HTTPException):
        raise response
    return response
