"""tokend_client: verify tokend access tokens and follow its revocations in any aiohttp service.

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

The package imports nothing from the tokend server. Its two halves import only what they
use: the client side (``TokenSession``, the stores, the errors) needs aiohttp; the
subscriber side adds PyJWT[crypto] for ``TokenVerifier`` and redis and prometheus-client
for ``RevocationListener`` (and ``setup``/``auth_middleware``, which take one). Every name
below is imported on first use (PEP 562), so ``from tokend_client import TokenSession``
loads neither redis nor prometheus-client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from ._listener import RevocationListener
    from ._middleware import CLAIMS_KEY, auth_middleware, setup
    from ._session import LoginHook, TokenSession
    from ._store import FileTokenStore, MemoryTokenStore, Tokens, TokenStore
    from ._verifier import TokenVerifier
    from .redis_target import RedisTarget

# Public name → the private module that defines it.
_EXPORTS = {
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
    "FileTokenStore",
    "InvalidToken",
    "JWKSUnavailable",
    "LoginFailed",
    "LoginHook",
    "LoginRequired",
    "MemoryTokenStore",
    "RedisTarget",
    "RevocationListener",
    "TokenExpired",
    "TokenRevoked",
    "TokenSession",
    "TokenStore",
    "TokenVerifier",
    "TokendClientError",
    "TokendUnavailable",
    "Tokens",
    "auth_middleware",
    "setup",
]
