"""tokend_client: verify tokend access tokens and follow its revocations in any aiohttp service.

    verifier = TokenVerifier(jwks_url, issuer=..., audience=...)
    listener = RevocationListener(redis_url, prefix="tokend")
    setup(app, verifier, listener)          # middleware + start/close with the app
    ...
    claims = request[CLAIMS_KEY]            # in a handler

And the client side of tokend's flow (log in, send the access token, refresh it once
for all concurrent callers, log in again when the session is over):

    async with TokenSession("http://tokend:8080", store=FileTokenStore(path)) as tokend:
        await tokend.login("alice", password)
        async with tokend.get("/auth/me") as resp:
            print(await resp.json())

The package imports nothing from the tokend server; it needs aiohttp, PyJWT[crypto],
redis and prometheus-client.
"""

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

__all__ = [
    "CLAIMS_KEY",
    "FileTokenStore",
    "InvalidToken",
    "JWKSUnavailable",
    "LoginFailed",
    "LoginHook",
    "LoginRequired",
    "MemoryTokenStore",
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
