"""The pieces operation descriptions are written with, and the ``doc`` decorator.

A handler carries its OpenAPI operation object (``@doc(...)``, under its route decorator);
``service.http.openapi`` walks the router and asks each handler for it. A value anywhere in
a description may be a function of the settings (the configured providers name the
``provider`` parameter, say): ``resolve`` calls it when the document is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ...settings import Settings

Schema = dict[str, Any]
Handler = TypeVar("Handler", bound=Callable[..., Any])

_ATTRIBUTE = "__openapi_operation__"
_REF = "#/components"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# A protected resource: a bearer token, or a DPoP-bound one with its proof (RFC 9449; the
# dpopAuth scheme, described with bearerAuth: schemathesis probes an http scheme it does not
# know with a bare value, which tokend rightly answers 400, not the 401 it expects).
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# RFC 6749 section 2.3: client_secret_basic (the scheme), or client_secret_post / none
# (client_id and client_secret as form parameters), which OpenAPI cannot name as a scheme.
OAUTH_CLIENT: list[dict[str, list[str]]] = [{"clientBasic": []}, {}]

# RFC 9449 section 4: the proof header of a token request (a protected resource's proof
# is part of the dpopAuth scheme).
DPOP_PROOF: dict[str, Any] = {
    "name": "DPoP",
    "in": "header",
    "required": False,
    "description": "A DPoP proof (RFC 9449 section 4: a `dpop+jwt` JWS by the client's key, "
    "with `htm`, `htu` = tokend's public URL, `iat`, `jti`, and `nonce` when "
    "TOKEND_DPOP_NONCE is on): the tokens issued are bound to that key (`cnf.jkt`, "
    "`token_type: DPoP`). Refused → 400 `invalid_dpop_proof`; a nonce missing → 400 "
    "`use_dpop_nonce` with a `DPoP-Nonce` header to retry with. At most one.",
    "schema": {"type": "string"},
}

# No control characters (Unicode category Cc), as service.passwords checks.
PASSWORD_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
# RFC 6750 section 2.1 b64token, the only bearer token syntax tokend reads.
TOKEN_PATTERN = "^[A-Za-z0-9._~+/-]+=*$"

EXAMPLE_USERNAME = "alice"
EXAMPLE_PASSWORD = "correct horse battery staple"
EXAMPLE_ACCESS = "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiIuLi4ifQ.c2ln"
EXAMPLE_REFRESH = "eyJhbGciOiJIUzI1NiIsInR5cCI6InJ0K2p3dCJ9.eyJzaWQiOiIuLi4ifQ.c2ln"
EXAMPLE_SID = "Yl1qk7dXQ8yq3yG5t3mXxw"

# Statuses every route with a request body or a backing store can answer.
BODY = ("400", "413", "415")
STORE = ("503",)
PROTECTED = ("400", "401", "503")

__all__ = [
    "BEARER",
    "BODY",
    "DPOP_PROOF",
    "FORM",
    "JSON",
    "OAUTH_CLIENT",
    "PROTECTED",
    "STORE",
    "Schema",
    "doc",
    "operation_of",
    "resolve",
]


def ref(kind: str, name: str) -> Schema:
    """A reference to a shared component."""
    return {"$ref": f"{_REF}/{kind}/{name}"}


def json_content(schema: Schema, example: Any = None) -> dict[str, Any]:
    """A JSON media type object."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def json_request(schema: Schema, example: Any = None, *, required: bool = True) -> Schema:
    """A JSON request body."""
    return {"required": required, "content": json_content(schema, example)}


def form_request(schema: Schema, *, example: Any = None, examples: Schema | None = None) -> Schema:
    """A form-encoded request body, with one example or named ones."""
    media: Schema = {"schema": schema}
    if example is not None:
        media["example"] = example
    if examples is not None:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"required": True, "content": {FORM: media}}


def error_response(description: str, *, headers: dict[str, Any] | None = None) -> Schema:
    """A response with the JSON error body."""
    response: Schema = {
        "description": description,
        "content": json_content(ref("schemas", "Error")),
    }
    if headers:
        response["headers"] = headers
    return response


def header(schema: Schema, description: str, *, required: bool = True) -> Schema:
    """A response header object."""
    return {"description": description, "required": required, "schema": schema}


def responses(*names: str, **own: Schema) -> dict[str, Any]:
    """Operation responses: its own (keyed ``s200`` etc.) plus shared ones by status."""
    result: dict[str, Any] = {key.lstrip("s"): value for key, value in own.items()}
    for name in (*names, "431"):  # every route may meet a header over 8 KiB
        result.setdefault(name, ref("responses", name))
    return dict(sorted(result.items()))


def redirect(description: str) -> Schema:
    """A 302 to ``Location``, never cached."""
    return {
        "description": description,
        "headers": {
            "Location": header({"type": "string"}, "where the browser goes next"),
            "Cache-Control": header({"type": "string"}, "no-store"),
        },
    }


def doc(
    *,
    tag: str,
    operation_id: str,
    summary: str,
    responses: Schema,
    description: str | None = None,
    security: list[dict[str, list[str]]] | None = None,
    parameters: Iterable[Any] = (),
    request: Any = None,
) -> Callable[[Handler], Handler]:
    """Attach the OpenAPI operation object to a route handler.

    Put it under the route decorator; the handler itself is returned unchanged.
    """
    operation: Schema = {"tags": [tag], "operationId": operation_id, "summary": summary}
    if description is not None:
        operation["description"] = description
    if security is not None:
        operation["security"] = security
    if parameters := list(parameters):
        operation["parameters"] = parameters
    if request is not None:
        operation["requestBody"] = request
    operation["responses"] = responses

    def attach(handler: Handler) -> Handler:
        setattr(handler, _ATTRIBUTE, operation)
        return handler

    return attach


def operation_of(handler: Callable[..., Any]) -> Schema | None:
    """The operation object ``doc`` attached to a handler, if any."""
    operation: Schema | None = getattr(handler, _ATTRIBUTE, None)
    return operation


def resolve(value: Any, settings: Settings) -> Any:
    """``value`` with every function in it replaced by its result for ``settings``."""
    if callable(value):
        return resolve(value(settings), settings)
    if isinstance(value, dict):
        return {key: resolve(item, settings) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(item, settings) for item in value]
    return value
