"""The one exception tree of tokend_client.

    TokendClientError
    ├── InvalidToken        401 invalid_token: malformed, wrong type, bad signature, wrong iss/aud
    │   ├── TokenExpired    past ``exp`` (after the verifier's leeway)
    │   └── TokenRevoked    on the revocation listener's deny list
    ├── JWKSUnavailable     503: no signing keys could be fetched; carries ``retry_after``
    ├── LoginRequired       the session is over; the user has to log in again (client side)
    ├── LoginFailed         tokend refused a login: bad credentials, or 429 with ``retry_after``
    └── TokendUnavailable   tokend answered 503 or could not be reached (client side); the
                            tokens are kept; carries ``retry_after``

Each error knows its OAuth error code and HTTP status, so one place (the middleware)
renders them all. PyJWT, aiohttp and redis errors are wrapped where they enter the
library and never escape it raw.
"""

from __future__ import annotations

__all__ = [
    "InvalidToken",
    "JWKSUnavailable",
    "LoginFailed",
    "LoginRequired",
    "TokenExpired",
    "TokenRevoked",
    "TokendClientError",
    "TokendUnavailable",
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


class LoginFailed(TokendClientError):
    """tokend refused the login: wrong username or password, or too many attempts (429)."""

    status = 401
    code = "invalid_grant"
    description = "login failed"

    def __init__(
        self, description: str | None = None, *, status: int = 401, retry_after: int | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.retry_after = retry_after


class TokendUnavailable(TokendClientError):
    """tokend answered 503 or could not be reached; nothing was lost, retry later."""

    status = 503
    code = "temporarily_unavailable"
    description = "tokend is unavailable"

    def __init__(self, description: str | None = None, retry_after: int = 5) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))
