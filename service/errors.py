"""One exception tree for tokend; each error knows its OAuth code and HTTP status.

    TokendError
    ├── ConfigError                      bad setting (start-up only)
    ├── BadRequest (400 invalid_request)
    │   ├── UnsupportedMediaType (415)
    │   ├── PayloadTooLarge (413)
    │   ├── HeaderTooLarge (431)
    │   ├── InvalidGrant (400 invalid_grant)
    │   ├── UnsupportedGrantType (400 unsupported_grant_type)
    │   └── SocialLoginFailed (400, own code)    OIDC callback: state, provider error, ID token
    ├── ValidationFailed (400 invalid_request)   a field breaks a rule
    ├── InvalidClient (401 invalid_client)
    ├── Unauthorized (401)                     no credentials at all
    ├── InvalidToken (401 invalid_token)       token expired, revoked, malformed, wrong type
    │   ├── TokenExpired
    │   └── TokenRevoked
    ├── InvalidCredentials (401 invalid_grant) wrong username or password
    ├── NotFound (404 not_found)
    ├── Conflict (409 conflict)
    ├── RateLimited (429 slow_down)            carries retry_after
    └── Unavailable (503 temporarily_unavailable)  Redis or database gone; carries retry_after
        └── ProviderUnavailable (502)          an OpenID provider down, slow or answering garbage

The domain raises these and never imports aiohttp; ``service.http.errors`` renders them.
"""

from __future__ import annotations


class TokendError(Exception):
    """Root of every error tokend raises on purpose."""

    status: int = 500
    code: str = "server_error"
    description: str = "internal error"

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.description)
        if description is not None:
            self.description = description


class ConfigError(TokendError):
    """A setting is missing or malformed; start-up stops with this one line."""


class BadRequest(TokendError):
    """The request itself is malformed."""

    status = 400
    code = "invalid_request"
    description = "malformed request"


class UnsupportedMediaType(BadRequest):
    """The body is not of the content type the endpoint accepts."""

    status = 415


class PayloadTooLarge(BadRequest):
    """The body exceeds the size limit."""

    status = 413
    description = "request body too large"


class HeaderTooLarge(BadRequest):
    """A request header exceeds the size limit."""

    status = 431
    description = "request header too large"


class InvalidGrant(BadRequest):
    """The grant (refresh token, credentials) is invalid, per RFC 6749 section 5.2."""

    code = "invalid_grant"


class UnsupportedGrantType(BadRequest):
    """The token endpoint does not support this grant type."""

    code = "unsupported_grant_type"


class InvalidScope(BadRequest):
    """The requested scope is not allowed."""

    code = "invalid_scope"


class SocialLoginFailed(BadRequest):
    """An OpenID Connect login failed at the callback; ``code`` is an OAuth error code."""

    description = "social login failed"

    def __init__(self, description: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(description)
        self.code = code


class ValidationFailed(BadRequest):
    """A field of the request breaks a rule (username or password policy)."""


class InvalidClient(TokendError):
    """OAuth client authentication failed."""

    status = 401
    code = "invalid_client"
    description = "client authentication failed"


class UnauthorizedClient(BadRequest):
    """The client may not use this token or grant."""

    code = "unauthorized_client"


class Unauthorized(TokendError):
    """No credentials were sent to a protected resource (RFC 6750 section 3.1: no error code)."""

    status = 401
    code = ""
    description = "authentication required"


class InvalidToken(TokendError):
    """The token is expired, revoked, malformed or of the wrong type."""

    status = 401
    code = "invalid_token"
    description = "invalid token"


class TokenExpired(InvalidToken):
    """The token's lifetime has passed."""

    description = "token expired"


class TokenRevoked(InvalidToken):
    """The token or its session was revoked."""

    description = "token revoked"


class InvalidCredentials(TokendError):
    """Username or password is wrong (one generic message for both)."""

    status = 401
    code = "invalid_grant"
    description = "invalid username or password"


class Forbidden(TokendError):
    """The caller may not do this."""

    status = 403
    code = "forbidden"
    description = "forbidden"


class NotFound(TokendError):
    """No such resource (or not the caller's)."""

    status = 404
    code = "not_found"
    description = "not found"


class Conflict(TokendError):
    """The resource already exists."""

    status = 409
    code = "conflict"
    description = "already exists"


class RateLimited(TokendError):
    """Too many attempts; try again after ``retry_after`` seconds."""

    status = 429
    code = "slow_down"
    description = "too many attempts, try again later"

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))


class Unavailable(TokendError):
    """A backing store (Redis, database) is unreachable; retry later."""

    status = 503
    code = "temporarily_unavailable"
    description = "service temporarily unavailable"

    def __init__(self, description: str | None = None, retry_after: int = 1) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class ProviderUnavailable(Unavailable):
    """An external OpenID provider is unreachable, slow or answered garbage (502: upstream)."""

    status = 502
    description = "identity provider unavailable"
