"""One exception tree for tokend; the HTTP layer maps each class to a status and OAuth code.

    TokendError                          root of every error tokend raises on purpose
    ├── ConfigError                      a setting is missing or malformed (start-up only)
    ├── BadRequest                       the request itself is malformed
    │   ├── UnsupportedMediaType         the body is not of the accepted content type
    │   ├── PayloadTooLarge              the body exceeds the size limit
    │   ├── HeaderTooLarge               a request header exceeds the size limit
    │   ├── InvalidGrant                 refresh token, code or credentials invalid
    │   ├── UnsupportedGrantType         a grant type the token endpoint does not serve
    │   ├── InvalidScope                 a scope that is not allowed
    │   ├── UnauthorizedClient           the client may not use this token or grant
    │   ├── ValidationFailed             a field breaks a rule (username, password)
    │   ├── InvalidDPoPProof             a token request's DPoP proof is missing or refused
    │   │   └── UseDPoPNonce             the proof lacks tokend's current DPoP nonce
    │   └── SocialLoginFailed            OIDC callback: state, provider error, ID token
    │       ├── SocialLoginRefused       the provider answered an error; carries it
    │       ├── SocialLoginDenied        the linked account is disabled or gone
    │       └── SocialGrantInvalid       the provider's code or ID token is refused
    ├── InvalidClient                    OAuth client authentication failed
    ├── Unauthorized                     no credentials at all
    ├── InvalidToken                     token expired, revoked, malformed, wrong type
    │   ├── TokenExpired                 its lifetime has passed
    │   ├── TokenRevoked                 it or its session was revoked
    │   └── InvalidResourceProof         a protected resource's DPoP proof is refused
    │       └── ResourceNonceRequired    the proof lacks tokend's current DPoP nonce
    ├── InvalidCredentials               wrong username or password
    ├── Forbidden                        the caller may not do this
    ├── NotFound                         no such resource (or not the caller's)
    ├── Conflict                         the resource already exists
    ├── RateLimited                      too many attempts; carries retry_after
    └── Unavailable                      Redis or database gone; carries retry_after
        ├── ProviderUnavailable          an OpenID provider down, slow or answering garbage
        ├── ReplicaLag                   a write not on enough replicas in time
        └── LayoutMismatch               Redis holds data in another partition count

The domain raises these and never imports aiohttp; ``service.http.errors`` holds the one
table from class to HTTP status and OAuth error code, and renders every error response.
``tests/test_errors_tree.py`` keeps this drawing equal to the classes.
"""

from __future__ import annotations


class TokendError(Exception):
    """Root of every error tokend raises on purpose."""

    description: str = "internal error"

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description or self.description)
        if description is not None:
            self.description = description


class ConfigError(TokendError):
    """A setting is missing or malformed; start-up stops with this one line."""


class BadRequest(TokendError):
    """The request itself is malformed."""

    description = "malformed request"


class UnsupportedMediaType(BadRequest):
    """The body is not of the content type the endpoint accepts."""


class PayloadTooLarge(BadRequest):
    """The body exceeds the size limit."""

    description = "request body too large"


class HeaderTooLarge(BadRequest):
    """A request header exceeds the size limit (the answer never echoes it)."""

    description = "request header too large"


class InvalidGrant(BadRequest):
    """The grant (refresh token, credentials) is invalid, per RFC 6749 section 5.2."""


class UnsupportedGrantType(BadRequest):
    """The token endpoint does not support this grant type."""


class InvalidScope(BadRequest):
    """The requested scope is not allowed."""


class UnauthorizedClient(BadRequest):
    """The client may not use this token or grant."""


class ValidationFailed(BadRequest):
    """A field of the request breaks a rule (username or password policy)."""


class InvalidDPoPProof(BadRequest):
    """A token request's DPoP proof (RFC 9449) is missing where one is required, or
    refused by a check of section 4.3."""

    description = "invalid DPoP proof"


class UseDPoPNonce(InvalidDPoPProof):
    """The token request's DPoP proof lacks tokend's current nonce (RFC 9449 section 8):
    retry with the one in the answer's ``DPoP-Nonce`` header."""

    description = "a DPoP nonce is required: retry with the DPoP-Nonce of this answer"


class SocialLoginFailed(BadRequest):
    """An OpenID Connect login failed at the callback (state, request, provider answer)."""

    description = "social login failed"


class SocialLoginRefused(SocialLoginFailed):
    """The provider answered the authorization request with an error; ``provider_error``
    is its OAuth error code (one of the codes RFC 6749 and OpenID Connect define)."""

    def __init__(self, description: str, provider_error: str) -> None:
        super().__init__(description)
        self.provider_error = provider_error


class SocialLoginDenied(SocialLoginFailed):
    """The account the social login leads to is disabled, or the one to link to is gone."""


class SocialGrantInvalid(SocialLoginFailed):
    """The provider refused the authorization code, or its ID token does not verify."""


class InvalidClient(TokendError):
    """OAuth client authentication failed."""

    description = "client authentication failed"


class Unauthorized(TokendError):
    """No credentials were sent to a protected resource (RFC 6750 section 3.1: no error code)."""

    description = "authentication required"


class InvalidToken(TokendError):
    """The token is expired, revoked, malformed or of the wrong type."""

    description = "invalid token"


class TokenExpired(InvalidToken):
    """The token's lifetime has passed."""

    description = "token expired"


class TokenRevoked(InvalidToken):
    """The token or its session was revoked."""

    description = "token revoked"


class InvalidResourceProof(InvalidToken):
    """The DPoP proof sent with a DPoP-bound access token to a protected resource is
    refused (RFC 9449 section 7.1: 401, ``invalid_dpop_proof``)."""

    description = "invalid DPoP proof"


class ResourceNonceRequired(InvalidResourceProof):
    """A protected resource's DPoP proof lacks tokend's current nonce (RFC 9449
    section 9: 401, ``use_dpop_nonce``)."""

    description = "a DPoP nonce is required: retry with the DPoP-Nonce of this answer"


class InvalidCredentials(TokendError):
    """Username or password is wrong (one generic message for both)."""

    description = "invalid username or password"


class Forbidden(TokendError):
    """The caller may not do this."""

    description = "forbidden"


class NotFound(TokendError):
    """No such resource (or not the caller's)."""

    description = "not found"


class Conflict(TokendError):
    """The resource already exists."""

    description = "already exists"


class RateLimited(TokendError):
    """Too many attempts; try again after ``retry_after`` seconds."""

    description = "too many attempts, try again later"

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))


class Unavailable(TokendError):
    """A backing store (Redis, database) is unreachable; retry later."""

    description = "service temporarily unavailable"

    def __init__(self, description: str | None = None, retry_after: int = 1) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class ProviderUnavailable(Unavailable):
    """An external OpenID provider is unreachable, slow or answered garbage (upstream)."""

    description = "identity provider unavailable"


class ReplicaLag(Unavailable):
    """A write is on the primary but not yet on TOKEND_REDIS_REPLICA_ACKS replicas."""

    description = "the write is not yet on enough replicas"


class LayoutMismatch(Unavailable):
    """Redis holds tokend data laid out in another partition count than
    TOKEND_REDIS_PARTITIONS (start-up stops; a request is answered 503)."""

    description = "Redis holds data of another partition layout"
