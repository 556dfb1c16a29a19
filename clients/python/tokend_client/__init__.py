"""tokend_client: verify tokend access tokens and follow its revocations in any Python service.

One framework-independent core (``TokenVerifier``, ``RevocationListener``, the ``Guard``
that turns a request's ``Authorization`` into claims or an RFC 6750 answer) and a thin
integration per framework, each imported only when asked for:

    tokend_client.starlette   ASGI middleware (Starlette, FastAPI, Litestar, Quart...)
    tokend_client.fastapi     a FastAPI dependency returning the claims
    tokend_client.django      Django middleware, ``tokend_required``, a DRF authentication
    tokend_client.flask       the ``Tokend(app)`` extension and its ``required`` decorator
    tokend_client (below)     the aiohttp middleware: ``setup(app, verifier, listener)``
    tokend_client.dpop        DPoP (RFC 9449): ``verify_proof``, ``MemoryReplayCache``, ``DPoPKey``

The aiohttp integration:

    verifier = TokenVerifier(jwks_url, issuer=..., audience=...)
    listener = RevocationListener(redis_url, prefix="tokend")   # or RedisTarget.from_env(env)
    setup(app, verifier, listener)          # middleware + start/close with the app
    ...
    claims = request[CLAIMS_KEY]            # in a handler

And the client side of tokend's flow (log in, send the access token, refresh it once
for all concurrent callers, log in again when the session is over):

    async with TokenSession("http://tokend:8080", store=FileTokenStore(path)) as tokend:
        await tokend.login("alice", password)
        async with tokend.get("/auth/me") as resp:
            print(await resp.json())

The package imports nothing from the tokend server. It requires only PyJWT[crypto] and
redis; aiohttp (the client side and the aiohttp middleware), prometheus-client (the
listener's metrics) and each framework come with their extras. Every name below is
imported on first use (PEP 562), so ``from tokend_client import TokenVerifier`` loads no
framework and ``from tokend_client import TokenSession`` loads neither redis nor
prometheus-client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._background import BackgroundListener
    from ._errors import (
        InvalidToken,
        JWKSUnavailable,
        LoginFailed,
        LoginRequired,
        TokendClientError,
        TokendUnavailable,
        TokenExpired,
        TokenRevoked,
    )
    from ._guard import Answer, Guard, has_scope
    from ._listener import RevocationListener
    from ._middleware import CLAIMS_KEY, auth_middleware, setup
    from ._session import LoginHook, TokenSession
    from ._store import FileTokenStore, MemoryTokenStore, Tokens, TokenStore
    from ._subscriber import Subscriber, SubscriberSettings
    from ._verifier import TokenVerifier
    from .redis_target import RedisTarget

# Public name → the private module that defines it.
_EXPORTS = {
    "Answer": "._guard",
    "BackgroundListener": "._background",
    "Guard": "._guard",
    "has_scope": "._guard",
    "Subscriber": "._subscriber",
    "SubscriberSettings": "._subscriber",
    "InvalidToken": "._errors",
    "JWKSUnavailable": "._errors",
    "LoginFailed": "._errors",
    "LoginRequired": "._errors",
    "TokendClientError": "._errors",
    "TokendUnavailable": "._errors",
    "TokenExpired": "._errors",
    "TokenRevoked": "._errors",
    "RevocationListener": "._listener",
    "CLAIMS_KEY": "._middleware",
    "RedisTarget": ".redis_target",
    "auth_middleware": "._middleware",
    "setup": "._middleware",
    "LoginHook": "._session",
    "TokenSession": "._session",
    "FileTokenStore": "._store",
    "MemoryTokenStore": "._store",
    "Tokens": "._store",
    "TokenStore": "._store",
    "TokenVerifier": "._verifier",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CLAIMS_KEY",
    "Answer",
    "BackgroundListener",
    "FileTokenStore",
    "Guard",
    "InvalidToken",
    "JWKSUnavailable",
    "LoginFailed",
    "LoginHook",
    "LoginRequired",
    "MemoryTokenStore",
    "RedisTarget",
    "RevocationListener",
    "Subscriber",
    "SubscriberSettings",
    "TokenExpired",
    "TokenRevoked",
    "TokenSession",
    "TokenStore",
    "TokenVerifier",
    "TokendClientError",
    "TokendUnavailable",
    "Tokens",
    "auth_middleware",
    "has_scope",
    "setup",
]
