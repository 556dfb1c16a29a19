"""The shared components of the OpenAPI document: schemas, responses, security schemes."""

from __future__ import annotations

from typing import Any

from ...passwords import MAX_PASSWORD, MIN_PASSWORD
from ...settings import Settings
from ...users import USERNAME_MAX, USERNAME_MIN, USERNAME_PATTERN
from ..refresh_cookie import REFRESH_COOKIE
from ..request import MAX_BODY
from .core import (
    EXAMPLE_ACCESS,
    EXAMPLE_REFRESH,
    PASSWORD_PATTERN,
    TOKEN_PATTERN,
    Schema,
    error_response,
    header,
    json_content,
    ref,
)

# The server case-folds a username before it checks the pattern.
USERNAME_SCHEMA_PATTERN = "^" + USERNAME_PATTERN.replace("a-z", "A-Za-z") + "$"


def token_body_schema(settings: Settings) -> str:
    """The schema of /auth/login's, /auth/refresh's and the code exchange's body."""
    return "CookieTokenBody" if settings.refresh_cookie else "TokenBody"


def components(settings: Settings) -> dict[str, Any]:
    """The ``components`` object for an instance with these settings."""
    retry_after = header({"type": "integer", "minimum": 1}, "Seconds to wait before trying again")
    no_store = header({"type": "string", "enum": ["no-store"]}, "Never cache this answer")
    token_headers = {
        "Cache-Control": no_store,
        "Authorization": header(
            {"type": "string", "pattern": "^(Bearer|DPoP) [A-Za-z0-9._~+/-]+=*$"},
            "The new access token, as the seed's flow carries it: `Bearer <access token>` "
            "(`DPoP <access token>` when it is DPoP-bound)",
        ),
        "DPoP-Nonce": header(
            {"type": "string"},
            "With TOKEND_DPOP_NONCE: the nonce for the client's next DPoP proof",
            required=False,
        ),
        "X-Refresh-Token": header(
            {"type": "string", "pattern": TOKEN_PATTERN}, "The new (rotated) refresh token"
        ),
    }
    if settings.refresh_cookie:
        del token_headers["X-Refresh-Token"]
        token_headers["Set-Cookie"] = header(
            {"type": "string", "pattern": f"^{REFRESH_COOKIE}="},
            f"The new (rotated) refresh token: `{REFRESH_COOKIE}=<token>; HttpOnly; Secure; "
            "SameSite=Strict; Path=/; Max-Age=<its remaining lifetime>`",
        )
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "description": "Every error answer (RFC 6749 section 5.2 shape).",
            "required": ["error", "error_description"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "string",
                    "description": "An OAuth 2.0 / RFC 6750 error code, e.g. invalid_request, "
                    "invalid_grant, invalid_token, invalid_client, unsupported_grant_type, "
                    "invalid_scope, unauthorized_client, not_found, conflict, slow_down, "
                    "temporarily_unavailable, invalid_dpop_proof and use_dpop_nonce (RFC 9449), "
                    "or `unauthorized` when no credentials were sent",
                },
                "error_description": {"type": "string"},
            },
            "example": {"error": "invalid_token", "error_description": "token expired"},
        },
        "Credentials": {
            "type": "object",
            "required": ["username", "password"],
            "additionalProperties": True,
            "description": "Unknown members are ignored.",
            "properties": {
                "username": {
                    "type": "string",
                    "minLength": USERNAME_MIN,
                    "maxLength": USERNAME_MAX,
                    "pattern": USERNAME_SCHEMA_PATTERN,
                    "description": f"{USERNAME_MIN} to {USERNAME_MAX} ASCII letters, digits and "
                    "`._@+-`, starting with a letter or digit; case-insensitive (stored "
                    "lower-case, NFKC-folded)",
                },
                "password": {
                    "type": "string",
                    "minLength": MIN_PASSWORD,
                    "maxLength": MAX_PASSWORD,
                    "pattern": PASSWORD_PATTERN,
                    "description": f"{MIN_PASSWORD} to {MAX_PASSWORD} characters, no control "
                    "characters, not the username",
                },
            },
        },
        "User": {
            "type": "object",
            "required": ["id", "username"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "description": "the user id (`sub` of tokens)"},
                "username": {"type": "string"},
            },
        },
        "TokenBody": {
            "type": "object",
            "description": "RFC 6749 section 5.1, plus the refresh token's own lifetime.",
            "required": [
                "access_token",
                "token_type",
                "expires_in",
                "refresh_token",
                "refresh_expires_in",
            ],
            "additionalProperties": False,
            "properties": {
                "access_token": {
                    "type": "string",
                    "pattern": TOKEN_PATTERN,
                    "description": "JWT per RFC 9068 (`typ: at+jwt`), signed with "
                    f"{settings.signing_alg}; verify it with the JWKS",
                },
                "token_type": {
                    "type": "string",
                    "enum": ["Bearer", "DPoP"],
                    "description": "`DPoP` when the request carried a valid DPoP proof: the "
                    "access token (and a public client's refresh token) is bound to its key",
                },
                "expires_in": {"type": "integer", "minimum": 0},
                "refresh_token": {
                    "type": "string",
                    "pattern": TOKEN_PATTERN,
                    "description": "JWT with `typ: rt+jwt`; rotated on every refresh",
                },
                "refresh_expires_in": {"type": "integer", "minimum": 0},
                "scope": {"type": "string"},
            },
        },
        "CookieTokenBody": {
            "type": "object",
            "description": "The token body in cookie mode (`TOKEND_REFRESH_COOKIE=true`): "
            f"the refresh token is in the `{REFRESH_COOKIE}` cookie, not here.",
            "required": ["access_token", "token_type", "expires_in", "refresh_expires_in"],
            "additionalProperties": False,
            "properties": {},
        },
        "Me": {
            "type": "object",
            "required": ["sub", "username", "sid", "exp"],
            "additionalProperties": False,
            "properties": {
                "sub": {"type": "string"},
                "username": {"type": "string"},
                "sid": {"type": "string"},
                "exp": {"type": "integer"},
            },
        },
        "Session": {
            "type": "object",
            "required": [
                "id",
                "created",
                "last_used",
                "expires",
                "user_agent",
                "ip",
                "client_id",
                "current",
                "bound",
            ],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "created": {"type": "number", "description": "epoch seconds"},
                "last_used": {"type": "number", "description": "epoch seconds"},
                "expires": {
                    "type": "number",
                    "description": "epoch seconds: the earlier of the idle and absolute deadline",
                },
                "user_agent": {"type": "string"},
                "ip": {"type": "string"},
                "client_id": {"type": "string", "nullable": True},
                "current": {
                    "type": "boolean",
                    "description": "the session of the token making this request",
                },
                "bound": {
                    "type": "boolean",
                    "description": "the session's login proved a DPoP key: its tokens are "
                    "bound to it (RFC 9449)",
                },
            },
        },
        "Introspection": {
            "type": "object",
            "description": "RFC 7662 section 2.2: only `active: false` for an inactive token.",
            "required": ["active"],
            "additionalProperties": False,
            "properties": {
                "active": {"type": "boolean"},
                "token_type": {"type": "string", "enum": ["Bearer", "DPoP", "refresh_token"]},
                "username": {"type": "string"},
                "scope": {"type": "string"},
                "client_id": {"type": "string"},
                "sub": {"type": "string"},
                "aud": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}},
                    ]
                },
                "iss": {"type": "string"},
                "exp": {"type": "integer"},
                "iat": {"type": "integer"},
                "jti": {"type": "string"},
                "sid": {"type": "string"},
                "cnf": {
                    "type": "object",
                    "description": "RFC 9449 section 6.2: the DPoP key a bound token is "
                    "bound to (its RFC 7638 thumbprint)",
                    "required": ["jkt"],
                    "properties": {"jkt": {"type": "string"}},
                },
            },
        },
        "JWK": {
            "type": "object",
            "required": ["kty", "kid", "alg", "use"],
            "additionalProperties": False,
            "description": "A public key (RFC 7517); never a private member.",
            "properties": {
                "kty": {"type": "string", "enum": ["OKP", "EC", "RSA"]},
                "kid": {"type": "string", "description": "RFC 7638 thumbprint"},
                "alg": {"type": "string", "enum": ["EdDSA", "ES256", "RS256"]},
                "use": {"type": "string", "enum": ["sig"]},
                "crv": {"type": "string"},
                "x": {"type": "string"},
                "y": {"type": "string"},
                "n": {"type": "string"},
                "e": {"type": "string"},
            },
        },
        "Identity": {
            "type": "object",
            "required": ["provider", "issuer", "subject", "email", "created"],
            "additionalProperties": False,
            "properties": {
                "provider": {"type": "string"},
                "issuer": {"type": "string"},
                "subject": {"type": "string"},
                "email": {"type": "string", "nullable": True},
                "created": {"type": "number", "description": "epoch seconds"},
            },
        },
        "Linked": {
            "type": "object",
            "required": ["linked"],
            "additionalProperties": False,
            "properties": {
                "linked": {
                    "type": "object",
                    "required": ["provider", "issuer"],
                    "additionalProperties": False,
                    "properties": {
                        "provider": {"type": "string"},
                        "issuer": {"type": "string"},
                    },
                }
            },
        },
    }
    shared: dict[str, Schema] = {
        "400": error_response("Malformed request: `invalid_request` and the rule it breaks"),
        "401": error_response(
            "No credentials (`unauthorized`), or an expired, revoked, malformed or "
            "wrong-type token (`invalid_token`), per RFC 6750 section 3; a DPoP-bound token "
            "sent as Bearer, an unbound one with the DPoP scheme or a proof by another key "
            "(`invalid_token`), a refused DPoP proof (`invalid_dpop_proof`) or one without "
            "the current nonce (`use_dpop_nonce`, with `DPoP-Nonce`), per RFC 9449 section 7",
            headers={
                "WWW-Authenticate": header(
                    {"type": "string", "pattern": '^Bearer realm="tokend"'},
                    'Two challenges: `Bearer realm="tokend"` and `DPoP algs="ES256 EdDSA '
                    'RS256 PS256"`, the one of the scheme used with `error` and '
                    "`error_description` when a token was sent",
                ),
                "DPoP-Nonce": header(
                    {"type": "string"},
                    "With TOKEND_DPOP_NONCE, on an answer to a DPoP request: the nonce for "
                    "the next proof",
                    required=False,
                ),
            },
        ),
        "403": error_response("Not allowed here (`forbidden`)"),
        "404": error_response("No such resource, or not the caller's (`not_found`)"),
        "409": error_response("Conflict (`conflict`)"),
        "413": error_response(f"Request body over {MAX_BODY // 1024} KiB"),
        "415": error_response("Wrong Content-Type for this operation"),
        "429": error_response(
            "Over a limit (`slow_down`): failed logins or password changes per user or "
            "client IP, successful logins per user, registrations per client IP",
            headers={"Retry-After": retry_after},
        ),
        "431": error_response("A request header over 8 KiB (never echoed)"),
        "502": error_response(
            "The OpenID provider is down, slow or answered garbage "
            "(`temporarily_unavailable`); tokend itself stays ready",
            headers={"Retry-After": retry_after},
        ),
        "503": error_response(
            "Redis or the database is unreachable (`temporarily_unavailable`)",
            headers={"Retry-After": retry_after},
        ),
        "Token": {
            "description": "The token pair; the tokens also travel in the response headers"
            + (" (the refresh token only in the cookie)" if settings.refresh_cookie else ""),
            "headers": token_headers,
            "content": json_content(
                ref("schemas", token_body_schema(settings)),
                {
                    "access_token": EXAMPLE_ACCESS,
                    "token_type": "Bearer",
                    "expires_in": settings.access_ttl,
                    **({} if settings.refresh_cookie else {"refresh_token": EXAMPLE_REFRESH}),
                    "refresh_expires_in": settings.refresh_idle_ttl,
                },
            ),
        },
        "NoContent": {"description": "Done"},
    }
    cookie_body = schemas["CookieTokenBody"]
    cookie_body["properties"] = {
        k: v for k, v in schemas["TokenBody"]["properties"].items() if k != "refresh_token"
    }
    return {
        "schemas": schemas,
        "responses": shared,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An access token from /auth/login, /auth/refresh or "
                "/oauth/token in `Authorization: Bearer <token>` (RFC 6750 section 2.1; "
                "never in the URL). A malformed header is 400 `invalid_request`. Every "
                "operation that takes it takes a DPoP-bound token the `dpopAuth` way instead.",
            },
            "refreshToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A refresh token in `Authorization: Bearer <refresh token>` "
                "(the seed's flow); /auth/refresh also takes it in the JSON body instead",
            },
            "refreshCookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": REFRESH_COOKIE,
                "description": "Cookie mode (`TOKEND_REFRESH_COOKIE=true`): the refresh token "
                "in tokend's HttpOnly cookie; such a request also needs an allowed `Origin` "
                "and a non-empty `X-Tokend-CSRF` header (docs/browser.md)",
            },
            "dpopAuth": {
                "type": "http",
                "scheme": "DPoP",
                "description": "A DPoP-bound access token (RFC 9449 section 7.1): "
                "`Authorization: DPoP <token>` and a proof of its key in the `DPoP` header "
                "(`htm`, `htu` = tokend's public URL, `ath` = the token's hash, `nonce` "
                "when TOKEND_DPOP_NONCE is on). A bound token sent as Bearer is 401 "
                "`invalid_token`.",
            },
            "clientBasic": {
                "type": "http",
                "scheme": "basic",
                "description": "OAuth client authentication `client_secret_basic` (RFC 6749 "
                "section 2.3.1). Alternatively `client_secret_post` (client_id and "
                "client_secret form parameters) or, for a public client, `none` (client_id "
                "alone). Using two methods at once is 400.",
            },
        },
    }
