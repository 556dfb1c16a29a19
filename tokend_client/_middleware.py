"""An aiohttp middleware that verifies bearer tokens and checks the deny list.

Answers follow RFC 6750 section 3 and tokend's own API: no credentials → 401 with
``WWW-Authenticate: Bearer realm="..."`` and no error code; a malformed or ambiguous
``Authorization`` header → 400 ``invalid_request``; a token that is invalid, expired
or revoked → 401 ``error="invalid_token"`` with an ``error_description``; no signing
keys or no replayed deny list yet → 503 with ``Retry-After``. Bodies are JSON
``{"error", "error_description"}``. The verified claims are stored in
``request[CLAIMS_KEY]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ._errors import InvalidToken, JWKSUnavailable, TokendClientError, TokenRevoked
from ._listener import RevocationListener
from ._verifier import TokenVerifier

__all__ = ["CLAIMS_KEY", "auth_middleware", "setup"]

log = logging.getLogger("tokend_client.middleware")

#: The verified access-token claims of the request: ``request[CLAIMS_KEY]``.
CLAIMS_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("tokend_client.claims", dict)


# RFC 6750 section 2.1 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class _BadRequest(Exception):
    """The Authorization header is malformed or ambiguous (400 invalid_request)."""


def _bearer_token(request: web.Request) -> str | None:
    """The one bearer token of the request, None when there are no credentials."""
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) > 1:
        raise _BadRequest("more than one Authorization header")
    if "access_token" in request.query:
        raise _BadRequest("tokens in the URL are not accepted; use the Authorization header")
    if not values:
        return None
    scheme, sep, credentials = values[0].partition(" ")
    if scheme.lower() != "bearer":
        raise _BadRequest("Authorization must use the Bearer scheme")
    if not sep or not credentials:
        raise _BadRequest("Bearer scheme without a token")
    if not _B64TOKEN.fullmatch(credentials):
        raise _BadRequest("Authorization must be 'Bearer <one token>'")
    return credentials


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def _answer(
    status: int, code: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.json_response(
        {"error": code, "error_description": description}, status=status, headers=headers
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def auth_middleware(
    verifier: TokenVerifier,
    listener: RevocationListener | None = None,
    *,
    realm: str = "tokend",
    exempt: Iterable[str] = (),
) -> Middleware:
    """A middleware requiring a valid, unrevoked access token on every path but ``exempt``.

    With a ``listener``, requests get 503 until its first replay is done: a service
    that has not read the deny list yet must not accept revoked tokens.
    """
    exempt_paths = frozenset(exempt)
    challenge = f'Bearer realm="{_quote(realm)}"'

    def invalid(error: TokendClientError) -> web.Response:
        header = (
            f'{challenge}, error="invalid_token", error_description="{_quote(error.description)}"'
        )
        return _answer(401, "invalid_token", error.description, {"WWW-Authenticate": header})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt_paths:
            return await handler(request)
        try:
            token = _bearer_token(request)
        except _BadRequest as exc:
            header = f'{challenge}, error="invalid_request", error_description="{_quote(str(exc))}"'
            return _answer(400, "invalid_request", str(exc), {"WWW-Authenticate": header})
        if token is None:
            return _answer(
                401, "unauthorized", "authentication required", {"WWW-Authenticate": challenge}
            )
        try:
            claims = await verifier.verify(token)
        except InvalidToken as exc:
            return invalid(exc)
        except JWKSUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.path, exc.description)
            return _answer(503, exc.code, exc.description, {"Retry-After": str(exc.retry_after)})
        if listener is not None:
            if not listener.ready:
                return _answer(
                    503,
                    "temporarily_unavailable",
                    "revocation list not loaded yet",
                    {"Retry-After": "1"},
                )
            if listener.is_revoked(claims):
                return invalid(TokenRevoked())
        request[CLAIMS_KEY] = claims
        return await handler(request)

    return middleware


def setup(
    app: web.Application,
    verifier: TokenVerifier,
    listener: RevocationListener | None = None,
    *,
    realm: str = "tokend",
    exempt: Iterable[str] = (),
) -> None:
    """Protect ``app``: add the middleware and start/close verifier and listener with it.

    The listener's ``key.rotated`` events make the verifier refetch the JWKS, unless
    the listener already has an ``on_event`` callback of its own.
    """
    app.middlewares.append(auth_middleware(verifier, listener, realm=realm, exempt=exempt))
    if listener is not None and listener.on_event is None:
        listener.on_event = _refresh_on_rotation(verifier)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if listener is not None:
            await listener.start()
        try:
            yield
        finally:
            if listener is not None:
                await listener.close()
            await verifier.close()

    app.cleanup_ctx.append(ctx)


def _refresh_on_rotation(verifier: TokenVerifier) -> Callable[[dict[str, Any]], None]:
    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "key.rotated":
            verifier.request_refresh()

    return on_event
