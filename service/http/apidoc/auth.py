"""Operation descriptions of the ``/auth/*`` password-login routes (``auth_routes``)."""

from __future__ import annotations

from ...passwords import MAX_PASSWORD, MIN_PASSWORD
from .core import (
    BEARER,
    BODY,
    DPOP_PROOF,
    EXAMPLE_PASSWORD,
    EXAMPLE_REFRESH,
    EXAMPLE_SID,
    EXAMPLE_USERNAME,
    PASSWORD_PATTERN,
    PROTECTED,
    STORE,
    TOKEN_PATTERN,
    doc,
    error_response,
    json_content,
    json_request,
    ref,
    responses,
)

_COOKIE_MODE = (
    " In cookie mode (`TOKEND_REFRESH_COOKIE=true`, docs/browser.md) the refresh token is "
    "set in the cookie `__Host-tokend-refresh` (HttpOnly; Secure; SameSite=Strict; Path=/; "
    "Max-Age its remaining lifetime) and is in neither the body nor `X-Refresh-Token`; a "
    "request with an `Origin` that is not allowed is 403 `forbidden`."
)
_CSRF = (
    " A request authenticated by that cookie is honoured only with an allowed `Origin` and "
    "a non-empty `X-Tokend-CSRF` header (403 `forbidden` otherwise)."
)
_TOKEN = ref("responses", "Token")
_NO_CONTENT = ref("responses", "NoContent")
_CREDENTIALS = json_request(
    ref("schemas", "Credentials"), {"username": EXAMPLE_USERNAME, "password": EXAMPLE_PASSWORD}
)

register = doc(
    tag="auth",
    operation_id="register",
    summary="Create a user",
    description="403 `forbidden` when registration is closed (`TOKEND_REGISTRATION=closed`); "
    "every attempt counts against the client IP's registration limit (429), a taken name "
    "(409) too.",
    request=_CREDENTIALS,
    responses=responses(
        *BODY,
        "403",
        "409",
        "429",
        *STORE,
        s201={"description": "Created", "content": json_content(ref("schemas", "User"))},
    ),
)

_DPOP = (
    " With a valid DPoP proof (the `DPoP` header) the tokens are bound to its key "
    "(`token_type: DPoP`); `TOKEND_DPOP=required` refuses a request without one (400 "
    "`invalid_dpop_proof`), `TOKEND_DPOP=off` ignores the header."
)

login = doc(
    tag="auth",
    operation_id="login",
    summary="Log in with username and password",
    description="401 `invalid_grant` for an unknown user and a wrong password alike, and for "
    "a login whose credentials were checked before the user was disabled, deleted, changed "
    "their password or logged out everywhere; failed logins per username and per client IP, "
    "and successful logins per user, are limited (429). Past `TOKEND_MAX_SESSIONS_PER_USER` "
    "the user's least recently used session ends (`session.revoked`, reason "
    "`session_limit`)." + _COOKIE_MODE + _DPOP,
    parameters=[DPOP_PROOF],
    request=_CREDENTIALS,
    responses=responses(
        *BODY,
        "403",
        "429",
        *STORE,
        s200=_TOKEN,
        s401=error_response("Wrong username or password (`invalid_grant`)"),
    ),
)

refresh = doc(
    tag="auth",
    operation_id="refresh",
    summary="Rotate a refresh token: a new access token and refresh token",
    description="The refresh token goes in `Authorization: Bearer` or in the JSON body, never "
    "both (400). Within the reuse grace the previous token gets the same successor; any "
    "older token revokes the whole session." + _COOKIE_MODE + " With neither, the "
    "refresh token is read from the cookie." + _CSRF + _DPOP + " A DPoP-bound refresh "
    "token needs a proof by its key (400 `invalid_dpop_proof` otherwise, and nothing is "
    "rotated).",
    security=[{"refreshToken": []}, {"refreshCookie": []}, {}],
    parameters=[DPOP_PROOF],
    request=json_request(
        {
            "type": "object",
            "additionalProperties": True,
            "properties": {"refresh_token": {"type": "string", "pattern": TOKEN_PATTERN}},
        },
        {"refresh_token": EXAMPLE_REFRESH},
        required=False,
    ),
    responses=responses(*BODY, *PROTECTED, "403", s200=_TOKEN),
)

me = doc(
    tag="auth",
    operation_id="me",
    summary="The caller",
    security=BEARER,
    responses=responses(
        *PROTECTED,
        s200={"description": "The caller", "content": json_content(ref("schemas", "Me"))},
    ),
)

logout = doc(
    tag="auth",
    operation_id="logout",
    summary="Revoke the caller's session",
    description="In cookie mode (`TOKEND_REFRESH_COOKIE=true`) the answer also clears the "
    "`__Host-tokend-refresh` cookie (`Max-Age=0`), and without `Authorization` the cookie's "
    "refresh token names the session to end (as RFC 7009 revokes a refresh token; a dead "
    "one ends nothing, still 204)." + _CSRF,
    security=[*BEARER, {"refreshCookie": []}],
    responses=responses(*PROTECTED, "403", s204=_NO_CONTENT),
)

logout_others = doc(
    tag="auth",
    operation_id="logoutOthers",
    summary="Revoke every session of the caller except this one",
    description="One `session.revoked` event per ended session, reason `logout_others`; the "
    "caller's own session and its tokens stay valid.",
    security=BEARER,
    responses=responses(*PROTECTED, s204=_NO_CONTENT),
)

logout_all = doc(
    tag="auth",
    operation_id="logoutAll",
    summary="Revoke every session of the caller",
    security=BEARER,
    responses=responses(*PROTECTED, s204=_NO_CONTENT),
)

list_sessions = doc(
    tag="auth",
    operation_id="listSessions",
    summary="The caller's live sessions, newest first, a page at a time",
    security=BEARER,
    parameters=[
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
    responses=responses(
        *PROTECTED,
        s200={
            "description": "The sessions",
            "content": json_content(
                {
                    "type": "object",
                    "required": ["sessions", "next_cursor"],
                    "additionalProperties": False,
                    "properties": {
                        "sessions": {"type": "array", "items": ref("schemas", "Session")},
                        "next_cursor": {
                            "type": "string",
                            "nullable": True,
                            "description": "Pass as `cursor` for the next page; null on the last",
                        },
                    },
                }
            ),
        },
    ),
)

delete_session = doc(
    tag="auth",
    operation_id="deleteSession",
    summary="Revoke one of the caller's sessions",
    security=BEARER,
    parameters=[
        {
            "name": "sid",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "example": EXAMPLE_SID,
        }
    ],
    responses=responses(*PROTECTED, "404", s204=_NO_CONTENT),
)

change_password = doc(
    tag="auth",
    operation_id="changePassword",
    summary="Change the caller's password; ends every other session",
    description="Wrong current passwords count per user and per client IP like failed logins "
    "(429 past the limits).",
    security=BEARER,
    request=json_request(
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
        {"current_password": EXAMPLE_PASSWORD, "new_password": "a new and longer passphrase"},
    ),
    responses=responses(
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
                    "properties": {"revoked_sessions": {"type": "integer", "minimum": 0}},
                }
            ),
        },
        s401=error_response(
            "No or a bad token (`invalid_token`, with WWW-Authenticate), or the current "
            "password is wrong (`invalid_grant`)"
        ),
    ),
)
