"""The aiohttp integration: a middleware over the Guard (``_guard.py``), which decides.

Answers follow RFC 6750 section 3 and tokend's own API: no credentials → 401 with
``WWW-Authenticate: Bearer realm="..."`` and no error code; a malformed or ambiguous
``Authorization`` header → 400 ``invalid_request``; a token that is invalid, expired
or revoked → 401 ``error="invalid_token"`` with an ``error_description``; no signing
keys or no replayed deny list yet → 503 with ``Retry-After``. Bodies are JSON
``{"error", "error_description"}``. The verified claims are stored in
``request[CLAIMS_KEY]``. DPoP (``Authorization: DPoP``): the proof is checked against the
request's method and ``public_url`` + its path (without ``public_url``: the URL aiohttp
sees, ``request.scheme`` and ``request.host``), see ``_guard.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ._guard import Answer, DPoPRequest, Guard, dpop_path
from ._listener import RevocationListener
from ._subscriber import refresh_on_rotation
from ._verifier import TokenVerifier

__all__ = ["CLAIMS_KEY", "auth_middleware", "setup"]

log = logging.getLogger("tokend_client.middleware")

#: The verified access-token claims of the request: ``request[CLAIMS_KEY]``.
CLAIMS_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("tokend_client.claims", dict)


def _render(answer: Answer) -> web.Response:
    return web.json_response(answer.body, status=answer.status, headers=answer.header_dict())


def dpop_request(request: web.Request) -> DPoPRequest:
    """The request's side of a DPoP proof check (only asked for with the DPoP scheme)."""
    return DPoPRequest(
        request.method,
        f"{request.scheme}://{request.host}",
        dpop_path(request.raw_path.partition("?")[0]),
        request.headers.getall("DPoP", []),
    )


def auth_middleware(
    verifier: TokenVerifier,
    listener: RevocationListener | None = None,
    *,
    realm: str = "tokend",
    exempt: Iterable[str] = (),
    public_url: str = "",
) -> Middleware:
    """A middleware requiring a valid, unrevoked access token on every path but ``exempt``.

    With a ``listener``, requests get 503 until its first replay is done: a service
    that has not read the deny list yet must not accept revoked tokens.
    """
    exempt_paths = frozenset(exempt)
    guard = Guard(verifier, listener, realm=realm, public_url=public_url)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt_paths:
            return await handler(request)
        # the raw query string first: parsing it costs more than the rest of a hit
        query_token = "access_token" in request.query_string and "access_token" in request.query
        outcome = await guard.check(
            request.headers.getall(hdrs.AUTHORIZATION, []),
            query_token,
            lambda: dpop_request(request),
        )
        if outcome is None:
            outcome = guard.required()
        if isinstance(outcome, Answer):
            if outcome.status == 503:
                log.warning("%s %s: %s", request.method, request.path, outcome.description)
            return _render(outcome)
        request[CLAIMS_KEY] = outcome
        return await handler(request)

    return middleware


def setup(
    app: web.Application,
    verifier: TokenVerifier,
    listener: RevocationListener | None = None,
    *,
    realm: str = "tokend",
    exempt: Iterable[str] = (),
    public_url: str = "",
) -> None:
    """Protect ``app``: add the middleware and start/close verifier and listener with it.

    The listener's ``key.rotated`` events make the verifier refetch the JWKS, unless
    the listener already has an ``on_event`` callback of its own. ``public_url``: the
    service's URL as its clients call it (DPoP proofs name it + the request path).
    """
    app.middlewares.append(
        auth_middleware(verifier, listener, realm=realm, exempt=exempt, public_url=public_url)
    )
    if listener is not None and listener.on_event is None:
        listener.on_event = refresh_on_rotation(verifier)

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
