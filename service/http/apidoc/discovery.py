"""Operation descriptions of the health and discovery routes (``health``, ``wellknown``,
``openapi``)."""

from __future__ import annotations

from ...settings import Settings
from .core import Schema, doc, json_content, ref, responses


def _object(properties: Schema, *, required: list[str], closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "required": required}
    if closed:
        schema["additionalProperties"] = False
    schema["properties"] = properties
    return schema


healthz = doc(
    tag="health",
    operation_id="healthz",
    summary="Liveness",
    responses=responses(
        s200={
            "description": "The process is up",
            "content": json_content(
                _object({"status": {"type": "string", "enum": ["ok"]}}, required=["status"])
            ),
        }
    ),
)

readyz = doc(
    tag="health",
    operation_id="readyz",
    summary="Readiness: Redis and the database reachable",
    responses=responses(
        "503",
        s200={
            "description": "Ready",
            "content": json_content(
                _object(
                    {
                        "status": {"type": "string", "enum": ["ready"]},
                        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    required=["status", "checks"],
                )
            ),
        },
    ),
)

metrics = doc(
    tag="health",
    operation_id="metrics",
    summary="Prometheus metrics",
    responses=responses(
        s200={
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    ),
)

openapi = doc(
    tag="discovery",
    operation_id="openapi",
    summary="This document",
    responses=responses(
        s200={"description": "OpenAPI 3.0", "content": json_content({"type": "object"})}
    ),
)

jwks = doc(
    tag="discovery",
    operation_id="jwks",
    summary="Public signing keys (RFC 7517)",
    description="The next key before it signs, the active one, and retired ones until their "
    "last access token has expired. Cacheable for 60 s.",
    responses=responses(
        s200={
            "description": "The JWK set",
            "content": json_content(
                _object(
                    {"keys": {"type": "array", "items": ref("schemas", "JWK")}}, required=["keys"]
                )
            ),
        }
    ),
)


def _issuer(settings: Settings) -> Schema:
    return {"type": "string", "enum": [settings.issuer]}


_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}

metadata = doc(
    tag="discovery",
    operation_id="authorizationServerMetadata",
    summary="Authorization server metadata (RFC 8414)",
    responses=responses(
        s200={
            "description": "The metadata",
            "content": json_content(
                _object(
                    {
                        "issuer": _issuer,
                        "token_endpoint": {"type": "string"},
                        "revocation_endpoint": {"type": "string"},
                        "introspection_endpoint": {"type": "string"},
                        "jwks_uri": {"type": "string"},
                        "grant_types_supported": _STRINGS,
                        "response_types_supported": _STRINGS,
                        "backchannel_logout_supported": {"type": "boolean"},
                        "backchannel_logout_session_supported": {"type": "boolean"},
                        "dpop_signing_alg_values_supported": _STRINGS,
                    },
                    required=[
                        "issuer",
                        "token_endpoint",
                        "revocation_endpoint",
                        "introspection_endpoint",
                        "jwks_uri",
                        "grant_types_supported",
                        "response_types_supported",
                    ],
                    closed=False,
                )
            ),
        }
    ),
)
