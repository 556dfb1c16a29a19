"""Public discovery documents: the JWKS (RFC 7517) and server metadata (RFC 8414)."""

from __future__ import annotations

from aiohttp import web

from tokend_client.dpop import ALGORITHMS

from .apidoc import discovery as spec
from .appkeys import CLOCK, KEYRING, SETTINGS
from .responses import json_response

routes = web.RouteTableDef()


@routes.get("/.well-known/jwks.json")
@spec.jwks
async def jwks(request: web.Request) -> web.Response:
    keys = request.app[KEYRING].jwks(request.app[CLOCK]())
    # Short public caching: subscribers pick up a new key within a minute.
    return json_response(keys, headers={"Cache-Control": "public, max-age=60"})


@routes.get("/.well-known/oauth-authorization-server")
@spec.metadata
async def metadata(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    base = settings.issuer
    return json_response(
        {
            "issuer": base,
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "grant_types_supported": ["password", "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [settings.signing_alg],
            # OpenID Connect Back-Channel Logout 1.0 section 2.1 (workers/backchannel.py)
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            # RFC 9449 section 5.1: the DPoP proof algorithms tokend accepts
            "dpop_signing_alg_values_supported": list(ALGORITHMS),
        }
    )
