"""The FastAPI integration: a security dependency returning the token's claims.

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from tokend_client.fastapi import TokenClaims, install, require_token

    app = FastAPI()
    install(app, Subscriber(SubscriberSettings.from_env(os.environ), threaded=False))

    @app.get("/orders")
    async def orders(token: Annotated[TokenClaims, Depends(require_token("orders:read"))]):
        return {"for": token["sub"]}

``install`` adds :class:`~tokend_client.starlette.TokendMiddleware` (which checks the
token, answers malformed, invalid, revoked and 503 cases itself and starts the
subscriber with the app's lifespan) and an exception handler for the dependency's
refusals. The dependency, a ``SecurityBase`` with an HTTP bearer model, puts a
``bearerFormat: JWT`` security scheme in the OpenAPI document and answers like tokend:
no token → 401 with ``WWW-Authenticate: Bearer realm="..."``; a token without the
scope asked for → 403 ``insufficient_scope``. Bodies are tokend's JSON ``{"error",
"error_description"}``, not FastAPI's ``{"detail"}``. Claims come back as a
:class:`TokenClaims` dict; the route's return annotation should not be ``TokenClaims``
when it returns them (FastAPI would drop the claims the TypedDict does not name).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import cast

from fastapi import FastAPI
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from ._guard import has_scope
from ._subscriber import Subscriber, SubscriberSettings
from .starlette import SUBSCRIBER_KEY, TokenClaims, TokendMiddleware, TokendRefusal

__all__ = [
    "TokenClaims",
    "TokendBearer",
    "TokendRefusal",
    "install",
    "refusal_handler",
    "require_token",
]


class TokendBearer(SecurityBase):
    """A dependency: the claims of the request's verified, unrevoked token, holding
    every scope in ``scope`` (space-separated or an iterable) when one is given."""

    def __init__(
        self,
        scope: str | Iterable[str] | None = None,
        *,
        scheme_name: str = "tokend",
        description: str | None = None,
    ) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT", description=description)
        self.scheme_name = scheme_name
        self.scope = (
            None if scope is None else " ".join(scope.split() if isinstance(scope, str) else scope)
        )

    async def __call__(self, request: HTTPConnection) -> TokenClaims:
        subscriber = request.scope.get(SUBSCRIBER_KEY)
        if not isinstance(subscriber, Subscriber):
            raise RuntimeError(
                "tokend_client: TokendBearer needs TokendMiddleware on the app: call "
                "tokend_client.fastapi.install(app, subscriber)"
            )
        claims = request.scope["state"].get("tokend")
        if claims is None:
            raise TokendRefusal(subscriber.guard.required())
        if self.scope and not has_scope(claims, self.scope):
            raise TokendRefusal(subscriber.guard.forbidden(self.scope))
        return cast(TokenClaims, claims)


def require_token(scope: str | Iterable[str] | None = None) -> TokendBearer:
    """``Depends(require_token("a b"))``: the claims of a token holding scopes a and b."""
    return TokendBearer(scope)


async def refusal_handler(request: Request, exc: Exception) -> Response:
    """Render a :class:`TokendRefusal` as tokend's JSON answer."""
    answer = cast(TokendRefusal, exc).answer
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.header_dict())


def install(
    app: FastAPI,
    subscriber: Subscriber | None = None,
    *,
    settings: SubscriberSettings | None = None,
    require: bool = False,
    exempt: Iterable[str] = (),
) -> Subscriber:
    """Add TokendMiddleware and the refusal handler to ``app``; the Subscriber in use
    (built from ``settings``, default the environment, when none is given)."""
    if subscriber is None:
        subscriber = Subscriber(settings or SubscriberSettings.from_env(os.environ), threaded=False)
    app.add_middleware(
        TokendMiddleware, subscriber=subscriber, require=require, exempt=tuple(exempt)
    )
    app.add_exception_handler(TokendRefusal, refusal_handler)
    return subscriber
