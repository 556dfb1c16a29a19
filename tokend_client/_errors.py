"""The one exception tree of tokend_client.

    TokendClientError
    ├── InvalidToken        401 invalid_token: malformed, wrong type, bad signature, wrong iss/aud
    │   ├── TokenExpired    past ``exp`` (after the verifier's leeway)
    │   └── TokenRevoked    on the revocation listener's deny list
    ├── JWKSUnavailable     503: no signing keys could be fetched; carries ``retry_after``
    └── LoginRequired       the session is over; the user has to log in again (client side)

Each error knows its OAuth error code and HTTP status, so one place (the middleware)
renders them all. PyJWT, aiohttp and redis errors are wrapped where they enter the
library and never escape it raw.
"""

from __future__ import annotations

__all__ = [
    "InvalidToken",
    "JWKSUnavailable",
    "LoginRequired",
    "TokenExpired",
    "TokenRevoked",
    "TokendClientError",
]


class TokendClientError(Exception):
    """Root of every error tokend_client raises on purpose."""

    status: int = 500
    code: str = "server_error"
    description: str = "internal error"

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.description)
        if description is not None:
            self.description = description


class InvalidToken(TokendClientError):
    """The access token is malformed, of the wrong type, badly signed or not for us."""

    status = 401
    code = "invalid_token"
    description = "invalid token"


class TokenExpired(InvalidToken):
    """The access token's lifetime has passed."""

    description = "token expired"


class TokenRevoked(InvalidToken):
    """The access token, its session or its user was revoked."""

    description = "token revoked"


class JWKSUnavailable(TokendClientError):
    """No signing keys are known and the JWKS could not be fetched; retry later."""

    status = 503
    code = "temporarily_unavailable"
    description = "signing keys unavailable"

    def __init__(self, description: str | None = None, retry_after: int = 5) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))


class LoginRequired(TokendClientError):
    """The refresh token is expired or revoked: the user has to log in again."""

    status = 401
    code = "invalid_grant"
    description = "log in again"
