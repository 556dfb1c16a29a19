"""Operation descriptions of the ``/oauth/*`` routes (``oauth_routes``)."""

from __future__ import annotations

from ...oauth import MAX_SCOPE_LENGTH
from .core import (
    BODY,
    DPOP_PROOF,
    EXAMPLE_ACCESS,
    EXAMPLE_PASSWORD,
    EXAMPLE_REFRESH,
    EXAMPLE_USERNAME,
    OAUTH_CLIENT,
    STORE,
    Schema,
    doc,
    error_response,
    form_request,
    header,
    json_content,
    ref,
    responses,
)

_NO_STORE = {"Cache-Control": header({"type": "string", "enum": ["no-store"]}, "never cached")}


def _invalid_client() -> Schema:
    return error_response(
        "Client authentication failed (`invalid_client`)",
        headers={
            "WWW-Authenticate": header(
                {"type": "string", "enum": ['Basic realm="tokend"']}, "RFC 6749 section 5.2"
            )
        },
    )


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


_TOKEN_FORM: Schema = {
    "type": "object",
    "required": ["grant_type"],
    "additionalProperties": True,
    "description": "RFC 6749 section 4.3 (`password`) or section 6 (`refresh_token`). Empty "
    "parameters count as omitted, a repeated one is 400, unknown ones are ignored.",
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

token = doc(
    tag="oauth",
    operation_id="oauthToken",
    summary="Token endpoint (RFC 6749): password and refresh_token grants",
    description="With a valid DPoP proof (RFC 9449, the `DPoP` header) the access token is "
    "bound to its key (`cnf.jkt`, `token_type: DPoP`), and so is a public client's refresh "
    "token, whose refresh then needs a proof by that key (400 `invalid_dpop_proof`, nothing "
    "rotated). A client registered with `dpop_bound_access_tokens` must send a proof.",
    security=OAUTH_CLIENT,
    parameters=[DPOP_PROOF],
    request=form_request(
        _TOKEN_FORM,
        examples={
            "password": {
                "grant_type": "password",
                "username": EXAMPLE_USERNAME,
                "password": EXAMPLE_PASSWORD,
            },
            "refresh_token": {"grant_type": "refresh_token", "refresh_token": EXAMPLE_REFRESH},
        },
    ),
    responses=responses(
        "413",
        "415",
        "429",
        *STORE,
        s200={
            "description": "The token pair (RFC 6749 section 5.1), body only",
            "headers": _NO_STORE,
            "content": json_content(ref("schemas", "TokenBody")),
        },
        s400=error_response(
            "RFC 6749 section 5.2: invalid_request, invalid_grant (wrong credentials, a bad, "
            "expired, revoked or reused refresh token), unsupported_grant_type, invalid_scope, "
            "unauthorized_client"
        ),
        s401=_invalid_client(),
    ),
)

revoke = doc(
    tag="oauth",
    operation_id="oauthRevoke",
    summary="Token revocation (RFC 7009)",
    description="200 whether or not the token was valid; revoking a refresh token ends its "
    "whole session.",
    security=OAUTH_CLIENT,
    request=form_request(
        _token_param_form("RFC 7009 section 2.1"),
        example={"token": EXAMPLE_ACCESS, "token_type_hint": "access_token"},
    ),
    responses=responses(
        *BODY,
        *STORE,
        s200={"description": "Revoked, or the token was not valid anyway", "headers": _NO_STORE},
        s401=_invalid_client(),
    ),
)

introspect = doc(
    tag="oauth",
    operation_id="oauthIntrospect",
    summary="Token introspection (RFC 7662), confidential clients only",
    security=OAUTH_CLIENT,
    request=form_request(
        _token_param_form("RFC 7662 section 2.1"), example={"token": EXAMPLE_ACCESS}
    ),
    responses=responses(
        *BODY,
        *STORE,
        s200={
            "description": "The token's state",
            "content": json_content(ref("schemas", "Introspection")),
        },
        s401=_invalid_client(),
    ),
)
