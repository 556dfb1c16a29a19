"""The OpenAPI 3.0 description of the whole HTTP API, served at ``GET /openapi.json``.

The document is built from the app's router: each route's handler carries its operation
object (``service.http.apidoc``), so a route without a description cannot be served (the
build raises) and the document describes only routes that exist. The running settings
fill in the rest (``servers`` is TOKEND_ISSUER, the configured OpenID providers name the
``provider`` parameter). ``tests/test_openapi.py`` validates it as OpenAPI and runs
schemathesis against the document exactly as a live tokend serves it.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import orjson
from aiohttp import hdrs, web

from ..settings import Settings
from .apidoc import discovery
from .apidoc.components import components
from .apidoc.core import operation_of, resolve
from .appkeys import SETTINGS

routes = web.RouteTableDef()

OPENAPI_VERSION = "3.0.3"
VERSION = version("tokend")


class UndocumentedRoute(LookupError):
    """A route whose handler carries no OpenAPI description (``@doc``)."""


def _paths(settings: Settings, router: web.UrlDispatcher) -> dict[str, Any]:
    """Every route of the router (HEAD beside a GET is part of the GET), as described."""
    served = {
        (route.method, route.resource.canonical) for route in router.routes() if route.resource
    }
    paths: dict[str, Any] = {}
    for route in router.routes():
        if route.resource is None:
            continue
        method, path = route.method, route.resource.canonical
        if method == hdrs.METH_HEAD and (hdrs.METH_GET, path) in served:
            continue
        operation = operation_of(route.handler)
        if operation is None:
            raise UndocumentedRoute(f"{method} {path}: its handler has no @doc description")
        paths.setdefault(path, {})[method.lower()] = resolve(operation, settings)
    return paths


def build_document(settings: Settings, router: web.UrlDispatcher) -> dict[str, Any]:
    """The OpenAPI document for the routes of ``router`` with these settings."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "tokend",
            "version": VERSION,
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
        "paths": _paths(settings, router),
        "components": components(settings),
    }


@routes.get("/openapi.json")
@discovery.openapi
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=orjson.dumps(build_document(request.app[SETTINGS], request.app.router)),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=60"},
    )
