"""Operation descriptions of the social-login routes (``oidc_routes``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ...oidc_rules import MAX_RETURN_TO
from ...settings import Settings
from .components import token_body_schema
from .core import (
    BEARER,
    BODY,
    DPOP_PROOF,
    PROTECTED,
    STORE,
    Schema,
    doc,
    error_response,
    form_request,
    header,
    json_content,
    json_request,
    redirect,
    ref,
    responses,
)


def provider_param(settings: Settings) -> Schema:
    """The ``provider`` path parameter, naming the configured providers."""
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


def _query(name: str, schema: Any, description: str | None = None) -> Schema:
    parameter: Schema = {"name": name, "in": "query", "required": False}
    if description is not None:
        parameter["description"] = description
    parameter["schema"] = schema
    return parameter


def _object(properties: Schema, *required: str) -> Schema:
    schema: Schema = {"type": "object"}
    if required:
        schema["required"] = list(required)
    schema["additionalProperties"] = True
    schema["properties"] = properties
    return schema


_CODE = {"type": "string", "minLength": 1, "maxLength": 128}

login = doc(
    tag="oidc",
    operation_id="oidcLogin",
    summary="Start a social login: redirect to the provider",
    description="Authorization code flow with PKCE S256, state and nonce. Sets the "
    "browser-binding cookie `tokend_oidc_browser`. With a `return_to`, `code_challenge` is "
    "required: the `login_code` that return_to receives is redeemed only with its "
    "`code_verifier`. At most TOKEND_OIDC_STARTS_PER_IP starts (with link starts) per client "
    "IP every TOKEND_LOGIN_FAILURE_WINDOW seconds (429).",
    parameters=[
        provider_param,
        _query("return_to", return_to_schema, "where to send the browser afterwards"),
        _query(
            "code_challenge",
            {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
            "required with return_to: BASE64URL(SHA-256(code_verifier)) of the application's "
            "own secret code_verifier (RFC 7636 S256)",
        ),
        _query(
            "code_challenge_method",
            {"type": "string", "enum": ["S256"]},
            "only S256 (the default); plain is refused",
        ),
    ],
    responses=responses(
        "400",
        "404",
        "502",
        *STORE,
        s302=redirect("To the provider's authorization endpoint"),
        s429=_too_many_starts(),
    ),
)

callback = doc(
    tag="oidc",
    operation_id="oidcCallback",
    summary="The provider's redirect back to tokend",
    description="Checks state (single use, bound to the browser), exchanges the code and "
    "verifies the ID token. With a `return_to`: 302 there with `login_code` (or `link_code`, "
    "or `error`); without: the token body (or the link_code) as JSON. A link flow links "
    "nothing here: its `link_code` must be confirmed at `POST /auth/oidc/link/confirm`.",
    parameters=[
        provider_param,
        *(
            _query(name, {"type": "string"})
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
    responses=responses(
        "404",
        "409",
        "502",
        *STORE,
        s200={
            "description": "Without return_to: the token pair of the new session, or the "
            "link_code of a link flow (valid 300 s, single use)",
            "content": json_content(
                {
                    "oneOf": [
                        lambda settings: ref("schemas", token_body_schema(settings)),
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
        s302=redirect("To return_to with login_code, link_code, or error"),
        s400=error_response(
            "A missing, unknown, used or foreign state, a provider error, a bad ID token; "
            "never a session"
        ),
    ),
)

exchange = doc(
    tag="oidc",
    operation_id="oidcExchange",
    summary="Redeem a login_code (single use, 60 s) for a token pair",
    description="The `code_verifier` must be the one whose S256 challenge started the login; "
    "a wrong or missing one refuses and burns the code. In cookie mode "
    "(`TOKEND_REFRESH_COOKIE=true`) the refresh token is set in the `__Host-tokend-refresh` "
    "cookie instead of the body, and a request with an `Origin` that is not allowed is 403 "
    "`forbidden`. A DPoP proof (the `DPoP` header) binds the tokens to its key, as at "
    "/auth/login; a refused proof leaves the code unused.",
    parameters=[DPOP_PROOF],
    request=json_request(
        _object(
            {
                "login_code": _CODE,
                "code_verifier": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9._~-]{43,128}$",
                    "description": "RFC 7636 section 4.1",
                },
            },
            "login_code",
            "code_verifier",
        ),
        {
            "login_code": "qOVcXcmJ0C7f1o0S2dSyr6iNsvQe0QfHq3gYw2yCk2w",
            "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        },
    ),
    responses=responses(
        "403",
        "413",
        "415",
        *STORE,
        s200=ref("responses", "Token"),
        s400=error_response(
            "Malformed, or an unknown, expired or used login_code, or a code_verifier that "
            "does not fit its code_challenge (`invalid_grant`)"
        ),
    ),
)


def _nullable_return_to(settings: Settings) -> Schema:
    return {**return_to_schema(settings), "nullable": True}


link = doc(
    tag="oidc",
    operation_id="oidcLink",
    summary="Start linking a provider account to the caller",
    description="Returns tokend's `/auth/oidc/{provider}/link/start` URL with a one-time "
    "ticket (60 s): open it in the caller's own browser by a top-level navigation. The flow "
    "is then bound to that browser, and its link_code to this session (`POST "
    "/auth/oidc/link/confirm`). Counts against TOKEND_OIDC_STARTS_PER_IP (429).",
    security=BEARER,
    parameters=[provider_param],
    request=json_request(_object({"return_to": _nullable_return_to}), required=False),
    responses=responses(
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
)

link_start = doc(
    tag="oidc",
    operation_id="oidcLinkStart",
    summary="Take up a link ticket in the browser: redirect to the provider",
    description="A top-level navigation only (a request whose Sec-Fetch-Dest is not "
    "`document` is refused). Consumes the ticket, sets the browser-binding cookie "
    "`tokend_oidc_browser`; the callback must come back to this browser.",
    parameters=[
        provider_param,
        {
            "name": "ticket",
            "in": "query",
            "required": True,
            "description": "from `POST /auth/oidc/{provider}/link` (single use)",
            "schema": {"type": "string", "maxLength": 128},
        },
    ],
    responses=responses(
        "404",
        "502",
        *STORE,
        s302=redirect("To the provider's authorization endpoint"),
        s400=error_response(
            "An unknown, expired or used ticket, one of another provider, a session that has "
            "ended, or not a top-level navigation"
        ),
    ),
)

link_confirm = doc(
    tag="oidc",
    operation_id="oidcLinkConfirm",
    summary="Link the provider account of a link_code to the caller",
    description="Only the session (same user, same sid) that started the link may confirm "
    "it; any other caller gets 400 `invalid_grant` and burns the code.",
    security=BEARER,
    request=json_request(
        _object({"link_code": _CODE}, "link_code"),
        {"link_code": "Jq3mW5aW0v3vN4o1tH8nq0H4k2cR7yX9bQe6sPzL1dA"},
    ),
    responses=responses(
        *BODY,
        *PROTECTED,
        "409",
        s200={
            "description": "The identity that was linked",
            "content": json_content(ref("schemas", "Linked")),
        },
        s400=error_response(
            "Malformed, or an unknown, expired, used or foreign link_code (`invalid_grant`)"
        ),
    ),
)

list_identities = doc(
    tag="oidc",
    operation_id="listIdentities",
    summary="The caller's linked provider accounts",
    security=BEARER,
    responses=responses(
        *PROTECTED,
        s200={
            "description": "Identities, and whether the caller has a password",
            "content": json_content(
                {
                    "type": "object",
                    "required": ["identities", "has_password"],
                    "additionalProperties": False,
                    "properties": {
                        "identities": {"type": "array", "items": ref("schemas", "Identity")},
                        "has_password": {"type": "boolean"},
                    },
                }
            ),
        },
    ),
)


def _provider_to_unlink(settings: Settings) -> Schema:
    return {**provider_param(settings), "description": "the provider name to unlink"}


unlink = doc(
    tag="oidc",
    operation_id="unlinkIdentity",
    summary="Unlink a provider account",
    description="409 when it is the caller's last way to log in.",
    security=BEARER,
    parameters=[_provider_to_unlink],
    responses=responses(*PROTECTED, "404", "409", s204=ref("responses", "NoContent")),
)

backchannel_logout = doc(
    tag="oidc",
    operation_id="oidcBackchannelLogout",
    summary="OpenID Connect Back-Channel Logout: the provider ends a user's sessions",
    description="Register `{TOKEND_ISSUER}/auth/oidc/{provider}/backchannel-logout` as the "
    "client's `backchannel_logout_uri` at the provider. The logout token is checked as "
    "section 2.6 of the spec says (signature from the provider's JWKS with an announced "
    "algorithm, `iss`, `aud`, `iat`, `exp`, `typ` absent, `JWT` or `logout+jwt`, the "
    "back-channel logout event, `sid` and/or `sub`, no `nonce`, a `jti` not seen before); "
    "then the tokend sessions from that provider session (`sid`), or with `sub` alone every "
    "tokend session of that provider account, end (`session.revoked`, reason `logout`).",
    request=form_request(
        {
            "type": "object",
            "required": ["logout_token"],
            "additionalProperties": True,
            "properties": {
                "logout_token": {
                    "type": "string",
                    "maxLength": 16384,
                    "description": "the provider's logout token (a signed JWT)",
                }
            },
        },
        example={"logout_token": "eyJhbGciOiJSUzI1NiIsInR5cCI6ImxvZ291dCtqd3QifQ.e30.c2ln"},
    ),
    parameters=[provider_param],
    responses=responses(
        *BODY,
        *STORE,
        "404",
        "502",
        s200={
            "description": "The logout token was valid; its sessions have ended (the body "
            "is empty)",
            "headers": {"Cache-Control": header({"type": "string"}, "no-store")},
        },
        s400=error_response(
            "Malformed, or a logout token that fails a check or was seen before "
            "(`invalid_request`); nothing is revoked"
        ),
    ),
)
