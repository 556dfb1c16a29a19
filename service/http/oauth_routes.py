"""/oauth/*: the token (RFC 6749), revocation (RFC 7009) and introspection (RFC 7662)
endpoints for standard OAuth 2.0 clients. The use cases live in ``service.oauth``."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import hdrs, web

from ..errors import BadRequest, InvalidClient
from ..oauth import authenticate_client, require, without_empty
from ..settings import OAuthClient
from . import dpop
from .apidoc import oauth as spec
from .appkeys import AUTH, SETTINGS
from .auth_routes import NO_STORE
from .request import client_info, form_body
from .responses import json_response

routes = web.RouteTableDef()

# RFC 6749 section 2.3.1 and 3.2: credentials never travel in the request URI.
_URL_SECRETS = ("client_secret", "password", "refresh_token", "token", "access_token")


async def _client_and_form(request: web.Request) -> tuple[OAuthClient, dict[str, str]]:
    """The form parameters (empty ones dropped) and the client they authenticate."""
    if any(name in request.query for name in _URL_SECRETS):
        raise BadRequest("credentials in the URL are not accepted; send them in the body")
    form = without_empty(await form_body(request))
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    client = authenticate_client(
        request.app[SETTINGS].oauth_clients, values[0] if values else None, form
    )
    return client, form


@routes.post("/oauth/token")
@spec.token
async def token(request: web.Request) -> web.Response:
    client, form = await _client_and_form(request)
    # RFC 9449 section 5: a proof binds the tokens; a client registered with
    # dpop_bound_access_tokens must send one.
    jkt = await dpop.token_key(request, required=client.dpop_bound_access_tokens)
    origin = client_info(request, request.app[SETTINGS], client_id=client.client_id)
    pair = await request.app[AUTH].oauth.token(client, form, replace(origin, jkt=jkt))
    # RFC 6749 section 5.1: the body only; no tokens in headers that proxies might log.
    return json_response(pair.body(), headers=NO_STORE)


@routes.post("/oauth/revoke")
@spec.revoke
async def revoke(request: web.Request) -> web.Response:
    client, form = await _client_and_form(request)
    token = require(form, "token")
    await request.app[AUTH].oauth.revoke(client, token, form.get("token_type_hint"))
    # RFC 7009 section 2.2: 200 whether or not the token was valid.
    return web.Response(status=200, headers=NO_STORE)


@routes.post("/oauth/introspect")
@spec.introspect
async def introspect(request: web.Request) -> web.Response:
    client, form = await _client_and_form(request)
    if not client.confidential:
        raise InvalidClient("introspection needs a confidential client")
    token = require(form, "token")
    body = await request.app[AUTH].oauth.introspect(token, form.get("token_type_hint"))
    return json_response(body, headers=NO_STORE)
