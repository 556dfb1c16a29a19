"""tokend_client: verify tokend access tokens and follow its revocations in any aiohttp service.

    verifier = TokenVerifier(jwks_url, issuer=..., audience=...)
    listener = RevocationListener(redis_url, prefix="tokend")
    setup(app, verifier, listener)          # middleware + start/close with the app
    ...
    claims = request[CLAIMS_KEY]            # in a handler

The package imports nothing from the tokend server; it needs aiohttp, PyJWT[crypto],
redis and prometheus-client.
"""

from ._errors import (
    InvalidToken,
    JWKSUnavailable,
    LoginRequired,
    TokendClientError,
    TokenExpired,
    TokenRevoked,
)
from ._listener import RevocationListener
from ._middleware import CLAIMS_KEY, auth_middleware, setup
from ._verifier import TokenVerifier

__all__ = [
    "CLAIMS_KEY",
    "InvalidToken",
    "JWKSUnavailable",
    "LoginRequired",
    "RevocationListener",
    "TokenExpired",
    "TokenRevoked",
    "TokenVerifier",
    "TokendClientError",
    "auth_middleware",
    "setup",
]
