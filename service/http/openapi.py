"""The OpenAPI 3.0 description of the whole HTTP API, served at ``GET /openapi.json``.

The document is built in code from the running settings (``servers`` is TOKEND_ISSUER,
the configured OpenID providers name the ``provider`` parameter), so it cannot drift from
a deployment. ``tests/test_openapi.py`` checks it against the router (every route is
documented, every documented path exists), validates it as OpenAPI and runs schemathesis
against a live tokend with it: every status, header and body here is what the server
really answers. Examples are illustrative; the schemathesis test patches in credentials
and tokens of the instance under test so that the examples reach the success paths.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ..oauth import MAX_SCOPE_LENGTH
from ..oidc_flow import MAX_RETURN_TO
from ..passwords import MAX_PASSWORD, MIN_PASSWORD
from ..settings import Settings
from .appkeys import SETTINGS
from .request import MAX_BODY

routes = web.RouteTableDef()

OPENAPI_VERSION = "3.0.3"
Schema = dict[str, Any]

# -- reusable pieces ----------------------------------------------------------------------

_REF = "#/components"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# RFC 6749 section 2.3: client_secret_basic (the scheme), or client_secret_post / none
# (client_id and client_secret as form parameters), which OpenAPI cannot name as a scheme.
OAUTH_CLIENT: list[dict[str, list[str]]] = [{"clientBasic": []}, {}]

USERNAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._@+-]{2,63}$"
# No control characters (Unicode category Cc), as service.passwords checks.
PASSWORD_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
# RFC 6750 section 2.1 b64token, the only bearer token syntax tokend reads.
TOKEN_PATTERN = "^[A-Za-z0-9._~+/-]+=*$"

EXAMPLE_USERNAME = "alice"
EXAMPLE_PASSWORD = "correct horse battery staple"
EXAMPLE_ACCESS = "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiIuLi4ifQ.c2ln"
EXAMPLE_REFRESH = "eyJhbGciOiJIUzI1NiIsInR5cCI6InJ0K2p3dCJ9.eyJzaWQiOiIuLi4ifQ.c2ln"
EXAMPLE_SID = "Yl1qk7dXQ8yq3yG5t3mXxw"


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"{_REF}/{kind}/{name}"}


def json_content(schema: Schema, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def error_response(description: str, *, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": json_content(ref("schemas", "Error")),
    }
    if headers:
        response["headers"] = headers
    return response


def header(schema: Schema, description: str, *, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": schema}


def responses(*names: str, **own: Schema) -> dict[str, Any]:
    """Operation responses: its own (keyed ``s200`` etc.) plus shared ones by status."""
    result: dict[str, Any] = {key.lstrip("s"): value for key, value in own.items()}
    for name in (*names, "431"):  # every route may meet a header over 8 KiB
        result.setdefault(name, ref("responses", name))
    return dict(sorted(result.items()))


# Statuses every route with a request body or a backing store can answer.
BODY = ("400", "413", "415")
STORE = ("503",)
PROTECTED = ("400", "401", "503")


def _components(settings: Settings) -> dict[str, Any]:
    retry_after = header({"type": "integer", "minimum": 1}, "Seconds to wait before trying again")
    no_store = header({"type": "string", "enum": ["no-store"]}, "Never cache this answer")
    token_headers = {
        "Cache-Control": no_store,
        "Authorization": header(
            {"type": "string", "pattern": "^Bearer [A-Za-z0-9._~+/-]+=*$"},
            "The new access token, as the seed's flow carries it: `Bearer <access token>`",
        ),
        "X-Refresh-Token": header(
            {"type": "string", "pattern": TOKEN_PATTERN}, "The new (rotated) refresh token"
        ),
    }
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
                    "temporarily_unavailable, or `unauthorized` when no credentials were sent",
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
                    "minLength": 3,
                    "maxLength": 64,
                    "pattern": USERNAME_PATTERN,
                    "description": "3 to 64 ASCII letters, digits and `._@+-`, starting with a "
                    "letter or digit; case-insensitive (stored lower-case, NFKC-folded)",
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
                "token_type": {"type": "string", "enum": ["Bearer"]},
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
            },
        },
        "Introspection": {
            "type": "object",
            "description": "RFC 7662 section 2.2: only `active: false` for an inactive token.",
            "required": ["active"],
            "additionalProperties": False,
            "properties": {
                "active": {"type": "boolean"},
                "token_type": {"type": "string", "enum": ["Bearer", "refresh_token"]},
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
            "wrong-type token (`invalid_token`), per RFC 6750 section 3",
            headers={
                "WWW-Authenticate": header(
                    {"type": "string", "pattern": '^Bearer realm="tokend"'},
                    '`Bearer realm="tokend"`, with `error` and `error_description` when a '
                    "token was sent",
                )
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
            "description": "The token pair; the tokens also travel in the response headers",
            "headers": token_headers,
            "content": json_content(
                ref("schemas", "TokenBody"),
                {
                    "access_token": EXAMPLE_ACCESS,
                    "token_type": "Bearer",
                    "expires_in": settings.access_ttl,
                    "refresh_token": EXAMPLE_REFRESH,
                    "refresh_expires_in": settings.refresh_idle_ttl,
                },
            ),
        },
        "NoContent": {"description": "Done"},
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
                "never in the URL). A malformed header is 400 `invalid_request`.",
            },
            "refreshToken": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A refresh token in `Authorization: Bearer <refresh token>` "
                "(the seed's flow); /auth/refresh also takes it in the JSON body instead",
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


def _token_form() -> Schema:
    return {
        "type": "object",
        "required": ["grant_type"],
        "additionalProperties": True,
        "description": "RFC 6749 section 4.3 (`password`) or section 6 (`refresh_token`). "
        "Empty parameters count as omitted, a repeated one is 400, unknown ones are ignored.",
        "properties": {
            "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
            "username": {"type": "string", "description": "grant_type=password"},
            "password": {"type": "string", "description": "grant_type=password"},
            "refresh_token": {"type": "string", "description": "grant_type=refresh_token"},
            "scope": {
                "type": "string",
                "maxLength": MAX_SCOPE_LENGTH,
                "description": "space-separated; a refresh may narrow it, never widen it",
            },
            "client_id": {"type": "string", "description": "client_secret_post or none"},
            "client_secret": {"type": "string", "description": "client_secret_post"},
        },
    }


def _token_param_form(extra_description: str) -> Schema:
    return {
        "type": "object",
        "required": ["token"],
        "additionalProperties": True,
        "description": extra_description,
        "properties": {
            "token": {"type": "string", "description": "an access or refresh token"},
            "token_type_hint": {
                "type": "string",
                "description": "`access_token` or `refresh_token`; only orders the lookup",
            },
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
        },
    }


def _provider_param(settings: Settings) -> Schema:
    schema: Schema = {"type": "string"}
    names = sorted(settings.oidc_providers)
    if names:
        schema["example"] = names[0]
    return {
        "name": "provider",
        "in": "path",
        "required": True,
        "description": "A provider name from TOKEND_OIDC_PROVIDERS"
        + (f" (here: {', '.join(names)})" if names else " (none configured here)"),
        "schema": schema,
    }


def _escape(text: str) -> str:
    """``text`` as a literal in a regular expression that Python and ECMA 262 both read."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\/" else c for c in text)


def return_to_schema(settings: Settings) -> Schema:
    """A return_to the server accepts: an allowed prefix, then more path and a query.

    The server compares parsed URLs (service.oidc_flow.return_to_allowed); this pattern
    describes a safe subset of what it accepts (no dot segments, no percent escapes).
    """
    if not settings.oidc_return_to:
        return {"type": "string", "maxLength": 0, "description": "TOKEND_OIDC_RETURN_TO is empty"}
    alternatives = []
    for prefix in settings.oidc_return_to:
        path = urlsplit(prefix).path
        more = "[A-Za-z0-9_~/-]*" if path.endswith("/") else "(/[A-Za-z0-9_~/-]*)?"
        alternatives.append(_escape(prefix) + more)
    return {
        "type": "string",
        "maxLength": MAX_RETURN_TO,
        "pattern": f"^(({'|'.join(alternatives)})(\\?[A-Za-z0-9_.~=&-]*)?)?$",
        "description": "empty (as if absent), or a URL starting with a prefix from "
        "TOKEND_OIDC_RETURN_TO: " + ", ".join(settings.oidc_return_to),
    }


def _too_many_starts() -> Schema:
    return error_response(
        "More than TOKEND_OIDC_STARTS_PER_IP social-login starts from this client IP in "
        "TOKEND_LOGIN_FAILURE_WINDOW (`slow_down`)",
        headers={
            "Retry-After": header(
                {"type": "integer", "minimum": 1}, "Seconds to wait before trying again"
            )
        },
    )


def _redirect(description: str) -> Schema:
    return {
        "description": description,
        "headers": {
            "Location": header({"type": "string"}, "where the browser goes next"),
            "Cache-Control": header({"type": "string"}, "no-store"),
        },
    }


def _paths(settings: Settings) -> dict[str, Any]:
    provider = _provider_param(settings)
    token_op = ref("responses", "Token")
    return {
        "/healthz": {
            "get": {
                "tags": ["health"],
                "operationId": "healthz",
                "summary": "Liveness",
                "responses": responses(
                    s200={
                        "description": "The process is up",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["status"],
                                "additionalProperties": False,
                                "properties": {"status": {"type": "string", "enum": ["ok"]}},
                            }
                        ),
                    }
                ),
            }
        },
        "/readyz": {
            "get": {
                "tags": ["health"],
                "operationId": "readyz",
                "summary": "Readiness: Redis and the database reachable",
                "responses": responses(
                    "503",
                    s200={
                        "description": "Ready",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["status", "checks"],
                                "additionalProperties": False,
                                "properties": {
                                    "status": {"type": "string", "enum": ["ready"]},
                                    "checks": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            }
                        ),
                    },
                ),
            }
        },
        "/metrics": {
            "get": {
                "tags": ["health"],
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": responses(
                    s200={
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                ),
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["discovery"],
                "operationId": "openapi",
                "summary": "This document",
                "responses": responses(
                    s200={"description": "OpenAPI 3.0", "content": json_content({"type": "object"})}
                ),
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "tags": ["discovery"],
                "operationId": "jwks",
                "summary": "Public signing keys (RFC 7517)",
                "description": "The next key before it signs, the active one, and retired "
                "ones until their last access token has expired. Cacheable for 60 s.",
                "responses": responses(
                    s200={
                        "description": "The JWK set",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["keys"],
                                "additionalProperties": False,
                                "properties": {
                                    "keys": {"type": "array", "items": ref("schemas", "JWK")}
                                },
                            }
                        ),
                    }
                ),
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "tags": ["discovery"],
                "operationId": "authorizationServerMetadata",
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": responses(
                    s200={
                        "description": "The metadata",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": [
                                    "issuer",
                                    "token_endpoint",
                                    "revocation_endpoint",
                                    "introspection_endpoint",
                                    "jwks_uri",
                                    "grant_types_supported",
                                    "response_types_supported",
                                ],
                                "properties": {
                                    "issuer": {"type": "string", "enum": [settings.issuer]},
                                    "token_endpoint": {"type": "string"},
                                    "revocation_endpoint": {"type": "string"},
                                    "introspection_endpoint": {"type": "string"},
                                    "jwks_uri": {"type": "string"},
                                    "grant_types_supported": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "response_types_supported": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                },
                            }
                        ),
                    }
                ),
            }
        },
        "/auth/register": {
            "post": {
                "tags": ["auth"],
                "operationId": "register",
                "summary": "Create a user",
                "description": "403 `forbidden` when registration is closed "
                "(`TOKEND_REGISTRATION=closed`); every attempt counts against the client IP's "
                "registration limit (429), a taken name (409) too.",
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        ref("schemas", "Credentials"),
                        {"username": EXAMPLE_USERNAME, "password": EXAMPLE_PASSWORD},
                    ),
                },
                "responses": responses(
                    *BODY,
                    "403",
                    "409",
                    "429",
                    *STORE,
                    s201={
                        "description": "Created",
                        "content": json_content(ref("schemas", "User")),
                    },
                ),
            }
        },
        "/auth/login": {
            "post": {
                "tags": ["auth"],
                "operationId": "login",
                "summary": "Log in with username and password",
                "description": "401 `invalid_grant` for an unknown user and a wrong password "
                "alike, and for a login whose credentials were checked before the user was "
                "disabled, deleted, changed their password or logged out everywhere; failed "
                "logins per username and per client IP, and successful logins per user, are "
                "limited (429). Past `TOKEND_MAX_SESSIONS_PER_USER` the user's least recently "
                "used session ends (`session.revoked`, reason `session_limit`).",
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        ref("schemas", "Credentials"),
                        {"username": EXAMPLE_USERNAME, "password": EXAMPLE_PASSWORD},
                    ),
                },
                "responses": responses(
                    *BODY,
                    "429",
                    *STORE,
                    s200=token_op,
                    s401=error_response("Wrong username or password (`invalid_grant`)"),
                ),
            }
        },
        "/auth/refresh": {
            "post": {
                "tags": ["auth"],
                "operationId": "refresh",
                "summary": "Rotate a refresh token: a new access token and refresh token",
                "description": "The refresh token goes in `Authorization: Bearer` or in the "
                "JSON body, never both (400). Within the reuse grace the previous token gets "
                "the same successor; any older token revokes the whole session.",
                "security": [{"refreshToken": []}, {}],
                "requestBody": {
                    "required": False,
                    "content": json_content(
                        {
                            "type": "object",
                            "additionalProperties": True,
                            "properties": {
                                "refresh_token": {"type": "string", "pattern": TOKEN_PATTERN}
                            },
                        },
                        {"refresh_token": EXAMPLE_REFRESH},
                    ),
                },
                "responses": responses(*BODY, *PROTECTED, s200=token_op),
            }
        },
        "/auth/me": {
            "get": {
                "tags": ["auth"],
                "operationId": "me",
                "summary": "The caller",
                "security": BEARER,
                "responses": responses(
                    *PROTECTED,
                    s200={
                        "description": "The caller",
                        "content": json_content(ref("schemas", "Me")),
                    },
                ),
            }
        },
        "/auth/logout": {
            "post": {
                "tags": ["auth"],
                "operationId": "logout",
                "summary": "Revoke the caller's session",
                "security": BEARER,
                "responses": responses(*PROTECTED, s204=ref("responses", "NoContent")),
            }
        },
        "/auth/logout-all": {
            "post": {
                "tags": ["auth"],
                "operationId": "logoutAll",
                "summary": "Revoke every session of the caller",
                "security": BEARER,
                "responses": responses(*PROTECTED, s204=ref("responses", "NoContent")),
            }
        },
        "/auth/sessions": {
            "get": {
                "tags": ["auth"],
                "operationId": "listSessions",
                "summary": "The caller's live sessions, newest first, a page at a time",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Sessions per page (default 50)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "The `next_cursor` of the previous page",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,7}$"},
                    },
                ],
                "responses": responses(
                    *PROTECTED,
                    s200={
                        "description": "The sessions",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["sessions", "next_cursor"],
                                "additionalProperties": False,
                                "properties": {
                                    "sessions": {
                                        "type": "array",
                                        "items": ref("schemas", "Session"),
                                    },
                                    "next_cursor": {
                                        "type": "string",
                                        "nullable": True,
                                        "description": "Pass as `cursor` for the next page; "
                                        "null on the last",
                                    },
                                },
                            }
                        ),
                    },
                ),
            }
        },
        "/auth/sessions/{sid}": {
            "delete": {
                "tags": ["auth"],
                "operationId": "deleteSession",
                "summary": "Revoke one of the caller's sessions",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "sid",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": EXAMPLE_SID,
                    }
                ],
                "responses": responses(*PROTECTED, "404", s204=ref("responses", "NoContent")),
            }
        },
        "/auth/password": {
            "post": {
                "tags": ["auth"],
                "operationId": "changePassword",
                "summary": "Change the caller's password; ends every other session",
                "description": "Wrong current passwords count per user and per client IP "
                "like failed logins (429 past the limits).",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["current_password", "new_password"],
                            "additionalProperties": True,
                            "properties": {
                                "current_password": {"type": "string", "maxLength": MAX_PASSWORD},
                                "new_password": {
                                    "type": "string",
                                    "minLength": MIN_PASSWORD,
                                    "maxLength": MAX_PASSWORD,
                                    "pattern": PASSWORD_PATTERN,
                                },
                            },
                        },
                        {
                            "current_password": EXAMPLE_PASSWORD,
                            "new_password": "a new and longer passphrase",
                        },
                    ),
                },
                "responses": responses(
                    *BODY,
                    *PROTECTED,
                    "429",
                    s200={
                        "description": "Changed; how many other sessions were revoked",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["revoked_sessions"],
                                "additionalProperties": False,
                                "properties": {
                                    "revoked_sessions": {"type": "integer", "minimum": 0}
                                },
                            }
                        ),
                    },
                    s401=error_response(
                        "No or a bad token (`invalid_token`, with WWW-Authenticate), or the "
                        "current password is wrong (`invalid_grant`)"
                    ),
                ),
            }
        },
        "/oauth/token": {
            "post": {
                "tags": ["oauth"],
                "operationId": "oauthToken",
                "summary": "Token endpoint (RFC 6749): password and refresh_token grants",
                "security": OAUTH_CLIENT,
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": _token_form(),
                            "examples": {
                                "password": {
                                    "value": {
                                        "grant_type": "password",
                                        "username": EXAMPLE_USERNAME,
                                        "password": EXAMPLE_PASSWORD,
                                    }
                                },
                                "refresh_token": {
                                    "value": {
                                        "grant_type": "refresh_token",
                                        "refresh_token": EXAMPLE_REFRESH,
                                    }
                                },
                            },
                        }
                    },
                },
                "responses": responses(
                    "413",
                    "415",
                    "429",
                    *STORE,
                    s200={
                        "description": "The token pair (RFC 6749 section 5.1), body only",
                        "headers": {
                            "Cache-Control": header(
                                {"type": "string", "enum": ["no-store"]}, "never cached"
                            )
                        },
                        "content": json_content(ref("schemas", "TokenBody")),
                    },
                    s400=error_response(
                        "RFC 6749 section 5.2: invalid_request, invalid_grant (wrong "
                        "credentials, a bad, expired, revoked or reused refresh token), "
                        "unsupported_grant_type, invalid_scope, unauthorized_client"
                    ),
                    s401=_invalid_client(),
                ),
            }
        },
        "/oauth/revoke": {
            "post": {
                "tags": ["oauth"],
                "operationId": "oauthRevoke",
                "summary": "Token revocation (RFC 7009)",
                "description": "200 whether or not the token was valid; revoking a refresh "
                "token ends its whole session.",
                "security": OAUTH_CLIENT,
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": _token_param_form("RFC 7009 section 2.1"),
                            "example": {"token": EXAMPLE_ACCESS, "token_type_hint": "access_token"},
                        }
                    },
                },
                "responses": responses(
                    *BODY,
                    *STORE,
                    s200={
                        "description": "Revoked, or the token was not valid anyway",
                        "headers": {
                            "Cache-Control": header(
                                {"type": "string", "enum": ["no-store"]}, "never cached"
                            )
                        },
                    },
                    s401=_invalid_client(),
                ),
            }
        },
        "/oauth/introspect": {
            "post": {
                "tags": ["oauth"],
                "operationId": "oauthIntrospect",
                "summary": "Token introspection (RFC 7662), confidential clients only",
                "security": OAUTH_CLIENT,
                "requestBody": {
                    "required": True,
                    "content": {
                        FORM: {
                            "schema": _token_param_form("RFC 7662 section 2.1"),
                            "example": {"token": EXAMPLE_ACCESS},
                        }
                    },
                },
                "responses": responses(
                    *BODY,
                    *STORE,
                    s200={
                        "description": "The token's state",
                        "content": json_content(ref("schemas", "Introspection")),
                    },
                    s401=_invalid_client(),
                ),
            }
        },
        "/auth/oidc/{provider}/login": {
            "get": {
                "tags": ["oidc"],
                "operationId": "oidcLogin",
                "summary": "Start a social login: redirect to the provider",
                "description": "Authorization code flow with PKCE S256, state and nonce. Sets "
                "the browser-binding cookie `tokend_oidc_browser`. With a `return_to`, "
                "`code_challenge` is required: the `login_code` that return_to receives is "
                "redeemed only with its `code_verifier`. At most TOKEND_OIDC_STARTS_PER_IP "
                "starts (with link starts) per client IP every TOKEND_LOGIN_FAILURE_WINDOW "
                "seconds (429).",
                "parameters": [
                    provider,
                    {
                        "name": "return_to",
                        "in": "query",
                        "required": False,
                        "description": "where to send the browser afterwards",
                        "schema": return_to_schema(settings),
                    },
                    {
                        "name": "code_challenge",
                        "in": "query",
                        "required": False,
                        "description": "required with return_to: "
                        "BASE64URL(SHA-256(code_verifier)) of the application's own secret "
                        "code_verifier (RFC 7636 S256)",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                    },
                    {
                        "name": "code_challenge_method",
                        "in": "query",
                        "required": False,
                        "description": "only S256 (the default); plain is refused",
                        "schema": {"type": "string", "enum": ["S256"]},
                    },
                ],
                "responses": responses(
                    "400",
                    "404",
                    "502",
                    *STORE,
                    s302=_redirect("To the provider's authorization endpoint"),
                    s429=_too_many_starts(),
                ),
            }
        },
        "/auth/oidc/{provider}/callback": {
            "get": {
                "tags": ["oidc"],
                "operationId": "oidcCallback",
                "summary": "The provider's redirect back to tokend",
                "description": "Checks state (single use, bound to the browser), exchanges "
                "the code and verifies the ID token. With a `return_to`: 302 there with "
                "`login_code` (or `link_code`, or `error`); without: the token body (or "
                "the link_code) as JSON. A link flow links nothing here: its `link_code` "
                "must be confirmed at `POST /auth/oidc/link/confirm`.",
                "parameters": [
                    provider,
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                        for name in ("state", "code", "iss", "error", "error_description")
                    ),
                    {
                        "name": "tokend_oidc_browser",
                        "in": "cookie",
                        "required": False,
                        "description": "the browser-binding cookie set by the login redirect",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": responses(
                    "404",
                    "409",
                    "502",
                    *STORE,
                    s200={
                        "description": "Without return_to: the token pair of the new session, "
                        "or the link_code of a link flow (valid 300 s, single use)",
                        "content": json_content(
                            {
                                "oneOf": [
                                    ref("schemas", "TokenBody"),
                                    {
                                        "type": "object",
                                        "required": ["link_code", "provider"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "link_code": {"type": "string"},
                                            "provider": {"type": "string"},
                                        },
                                    },
                                ]
                            }
                        ),
                    },
                    s302=_redirect("To return_to with login_code, link_code, or error"),
                    s400=error_response(
                        "A missing, unknown, used or foreign state, a provider error, a bad "
                        "ID token; never a session"
                    ),
                ),
            }
        },
        "/auth/oidc/exchange": {
            "post": {
                "tags": ["oidc"],
                "operationId": "oidcExchange",
                "summary": "Redeem a login_code (single use, 60 s) for a token pair",
                "description": "The `code_verifier` must be the one whose S256 challenge "
                "started the login; a wrong or missing one refuses and burns the code.",
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["login_code", "code_verifier"],
                            "additionalProperties": True,
                            "properties": {
                                "login_code": {"type": "string", "minLength": 1, "maxLength": 128},
                                "code_verifier": {
                                    "type": "string",
                                    "pattern": "^[A-Za-z0-9._~-]{43,128}$",
                                    "description": "RFC 7636 section 4.1",
                                },
                            },
                        },
                        {
                            "login_code": "qOVcXcmJ0C7f1o0S2dSyr6iNsvQe0QfHq3gYw2yCk2w",
                            "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                        },
                    ),
                },
                "responses": responses(
                    "413",
                    "415",
                    *STORE,
                    s200=token_op,
                    s400=error_response(
                        "Malformed, or an unknown, expired or used login_code, or a code_verifier "
                        "that does not fit its code_challenge (`invalid_grant`)"
                    ),
                ),
            }
        },
        "/auth/oidc/{provider}/link": {
            "post": {
                "tags": ["oidc"],
                "operationId": "oidcLink",
                "summary": "Start linking a provider account to the caller",
                "description": "Returns tokend's `/auth/oidc/{provider}/link/start` URL with "
                "a one-time ticket (60 s): open it in the caller's own browser by a "
                "top-level navigation. The flow is then bound to that browser, and its "
                "link_code to this session (`POST /auth/oidc/link/confirm`). Counts "
                "against TOKEND_OIDC_STARTS_PER_IP (429).",
                "security": BEARER,
                "parameters": [provider],
                "requestBody": {
                    "required": False,
                    "content": json_content(
                        {
                            "type": "object",
                            "additionalProperties": True,
                            "properties": {
                                "return_to": {**return_to_schema(settings), "nullable": True}
                            },
                        }
                    ),
                },
                "responses": responses(
                    *BODY,
                    *PROTECTED,
                    "404",
                    s429=_too_many_starts(),
                    s200={
                        "description": "The tokend URL to send the caller's browser to",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["authorization_url"],
                                "additionalProperties": False,
                                "properties": {"authorization_url": {"type": "string"}},
                            }
                        ),
                    },
                ),
            }
        },
        "/auth/oidc/{provider}/link/start": {
            "get": {
                "tags": ["oidc"],
                "operationId": "oidcLinkStart",
                "summary": "Take up a link ticket in the browser: redirect to the provider",
                "description": "A top-level navigation only (a request whose Sec-Fetch-Dest "
                "is not `document` is refused). Consumes the ticket, sets the "
                "browser-binding cookie `tokend_oidc_browser`; the callback must come back "
                "to this browser.",
                "parameters": [
                    provider,
                    {
                        "name": "ticket",
                        "in": "query",
                        "required": True,
                        "description": "from `POST /auth/oidc/{provider}/link` (single use)",
                        "schema": {"type": "string", "maxLength": 128},
                    },
                ],
                "responses": responses(
                    "404",
                    "502",
                    *STORE,
                    s302=_redirect("To the provider's authorization endpoint"),
                    s400=error_response(
                        "An unknown, expired or used ticket, one of another provider, a "
                        "session that has ended, or not a top-level navigation"
                    ),
                ),
            }
        },
        "/auth/oidc/link/confirm": {
            "post": {
                "tags": ["oidc"],
                "operationId": "oidcLinkConfirm",
                "summary": "Link the provider account of a link_code to the caller",
                "description": "Only the session (same user, same sid) that started the "
                "link may confirm it; any other caller gets 400 `invalid_grant` and burns "
                "the code.",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "required": ["link_code"],
                            "additionalProperties": True,
                            "properties": {
                                "link_code": {"type": "string", "minLength": 1, "maxLength": 128}
                            },
                        },
                        {"link_code": "Jq3mW5aW0v3vN4o1tH8nq0H4k2cR7yX9bQe6sPzL1dA"},
                    ),
                },
                "responses": responses(
                    *BODY,
                    *PROTECTED,
                    "409",
                    s200={
                        "description": "The identity that was linked",
                        "content": json_content(ref("schemas", "Linked")),
                    },
                    s400=error_response(
                        "Malformed, or an unknown, expired, used or foreign link_code "
                        "(`invalid_grant`)"
                    ),
                ),
            }
        },
        "/auth/identities": {
            "get": {
                "tags": ["oidc"],
                "operationId": "listIdentities",
                "summary": "The caller's linked provider accounts",
                "security": BEARER,
                "responses": responses(
                    *PROTECTED,
                    s200={
                        "description": "Identities, and whether the caller has a password",
                        "content": json_content(
                            {
                                "type": "object",
                                "required": ["identities", "has_password"],
                                "additionalProperties": False,
                                "properties": {
                                    "identities": {
                                        "type": "array",
                                        "items": ref("schemas", "Identity"),
                                    },
                                    "has_password": {"type": "boolean"},
                                },
                            }
                        ),
                    },
                ),
            }
        },
        "/auth/identities/{provider}": {
            "delete": {
                "tags": ["oidc"],
                "operationId": "unlinkIdentity",
                "summary": "Unlink a provider account",
                "description": "409 when it is the caller's last way to log in.",
                "security": BEARER,
                "parameters": [{**provider, "description": "the provider name to unlink"}],
                "responses": responses(
                    *PROTECTED, "404", "409", s204=ref("responses", "NoContent")
                ),
            }
        },
    }


def _invalid_client() -> Schema:
    return error_response(
        "Client authentication failed (`invalid_client`)",
        headers={
            "WWW-Authenticate": header(
                {"type": "string", "enum": ['Basic realm="tokend"']}, "RFC 6749 section 5.2"
            )
        },
    )


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for an instance with these settings."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "tokend",
            "version": "0.1.0",
            "description": "JWT token service: password and social login, rotating refresh "
            "tokens, revocation (RFC 6750, 6749, 7009, 7662, 8414, 9068). Every error is JSON "
            "`{error, error_description}` and never cached; a method a path does not have is "
            "405 with `Allow`; an unknown path is 404.",
            "license": {"name": "MIT"},
        },
        "servers": [{"url": settings.issuer}],
        "tags": [
            {"name": "auth", "description": "Password login, refresh, sessions"},
            {"name": "oauth", "description": "OAuth 2.0 endpoints for standard clients"},
            {"name": "oidc", "description": "Social login (OpenID Connect relying party)"},
            {"name": "discovery", "description": "Keys, metadata, this document"},
            {"name": "health", "description": "Liveness, readiness, metrics"},
        ],
        "paths": _paths(settings),
        "components": _components(settings),
    }


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(build_document(request.app[SETTINGS])),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=60"},
    )
