"""/auth/*: register, login, refresh, me, logout, sessions, password. Cookie mode and
its CSRF rule live in ``refresh_cookie``."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import hdrs, web

from ..auth import Principal
from ..errors import BadRequest, InvalidToken, Unauthorized
from . import dpop
from . import refresh_cookie as cookie
from .apidoc import auth as spec
from .appkeys import AUTH, SETTINGS
from .errors import AUTH_SCHEME
from .refresh_cookie import NO_STORE, token_response
from .request import access_credentials, bearer_token, client_info, json_body
from .responses import json_response

routes = web.RouteTableDef()

__all__ = ["NO_STORE", "authenticated", "routes", "token_response"]


async def authenticated(request: web.Request) -> Principal:
    """The verified caller of a protected resource (RFC 6750 and RFC 9449 errors
    otherwise): a bearer token, or a DPoP-bound one with its proof."""
    scheme, token = access_credentials(request)
    request[AUTH_SCHEME] = scheme  # a token error's code goes on this scheme's challenge
    jkt = await dpop.resource_key(request, token) if scheme == "DPoP" else None
    return await request.app[AUTH].callers.authenticate(token, jkt=jkt)


def _dpop_mode(request: web.Request) -> tuple[bool, bool]:
    """(required, honoured) for an /auth/* token request (TOKEND_DPOP)."""
    mode = request.app[SETTINGS].dpop
    return mode == "required", mode != "off"


@routes.post("/auth/register")
@spec.register
async def register(request: web.Request) -> web.Response:
    body = await json_body(request)
    client = client_info(request, request.app[SETTINGS])
    user = await request.app[AUTH].registration.register(
        body.get("username"), body.get("password"), client.ip
    )
    return json_response({"id": user.id, "username": user.username}, status=201)


@routes.post("/auth/login")
@spec.login
async def login(request: web.Request) -> web.Response:
    cookie.check_setting_origin(request)
    body = await json_body(request)
    settings = request.app[SETTINGS]
    required, honoured = _dpop_mode(request)
    # The proof before the password: a refused proof costs no argon2 run.
    jkt = await dpop.token_key(request, required=required, honoured=honoured)
    pair = await request.app[AUTH].logins.login(
        body.get("username"),
        body.get("password"),
        replace(client_info(request, settings), jkt=jkt),
    )
    return token_response(request, pair)


@routes.post("/auth/refresh")
@spec.refresh
async def refresh(request: web.Request) -> web.Response:
    header_token = bearer_token(request, required=False)
    body = await json_body(request, optional=True) if request.body_exists else {}
    body_token = body.get("refresh_token")
    if header_token and body_token is not None:
        raise BadRequest("refresh token sent both in the header and in the body")
    token = header_token or body_token
    if token is None:
        token = cookie.cookie_token(request)
    else:
        cookie.check_setting_origin(request)
    if token is None:
        raise BadRequest("missing refresh token (Authorization: Bearer <refresh token>)")
    if not isinstance(token, str) or not token:
        raise BadRequest("refresh_token must be a string")
    settings = request.app[SETTINGS]
    auth = request.app[AUTH]
    required, honoured = _dpop_mode(request)
    # TOKEND_DPOP=off binds nothing new, but a token bound earlier still needs its key
    # (refreshes.refresh checks the verified claims; this only picks the path).
    jkt = await dpop.token_key(
        request, required=required, honoured=honoured or auth.tokens.peek_bound(token)
    )
    pair = await auth.refreshes.refresh(token, replace(client_info(request, settings), jkt=jkt))
    return token_response(request, pair)


@routes.get("/auth/me")
@spec.me
async def me(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    return json_response(
        {
            "sub": principal.user.id,
            "username": principal.user.username,
            "sid": principal.sid,
            "exp": principal.claims["exp"],
        },
        headers=NO_STORE,
    )


@routes.post("/auth/logout")
@spec.logout
async def logout(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    response = web.Response(status=204)
    if cookie.cookie_mode(request):
        cookie.clear_cookie(response)
        if hdrs.AUTHORIZATION not in request.headers:
            token = cookie.cookie_token(request)
            if token is None:
                raise Unauthorized()
            # As RFC 7009 revokes a refresh token: the session ends; a dead token, nothing.
            try:
                claims = auth.tokens.verify_refresh(token, auth.clock())
            except InvalidToken:
                return response
            await auth.session_control.revoke_refresh_token(claims, reason="logout")
            return response
    principal = await authenticated(request)
    await auth.session_control.logout(principal)
    return response


@routes.post("/auth/logout-others")
@spec.logout_others
async def logout_others(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    await request.app[AUTH].session_control.logout_others(principal)
    return web.Response(status=204)


@routes.post("/auth/logout-all")
@spec.logout_all
async def logout_all(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    await request.app[AUTH].session_control.logout_all(principal)
    return web.Response(status=204)


@routes.get("/auth/sessions")
@spec.list_sessions
async def list_sessions(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    offset = _int_param(request, "cursor", 0, 0, 1_000_000)
    sessions, next_offset = await request.app[AUTH].session_control.list(
        principal, limit=limit, offset=offset
    )
    return json_response(
        {
            "next_cursor": None if next_offset is None else str(next_offset),
            "sessions": [
                {
                    "id": s.sid,
                    "created": s.created,
                    "last_used": s.last_used,
                    "expires": min(s.idle_deadline, s.absolute_deadline),
                    "user_agent": s.user_agent,
                    "ip": s.ip,
                    "client_id": s.client_id or None,
                    "current": s.sid == principal.sid,
                    "bound": s.bound,
                }
                for s in sessions
            ],
        },
        headers=NO_STORE,
    )


MAX_PAGE = 100


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 7 or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


@routes.delete("/auth/sessions/{sid}")
@spec.delete_session
async def delete_session(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    await request.app[AUTH].session_control.delete(principal, request.match_info["sid"])
    return web.Response(status=204)


@routes.post("/auth/password")
@spec.change_password
async def change_password(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    body = await json_body(request)
    revoked = await request.app[AUTH].accounts.change_password(
        principal,
        body.get("current_password"),
        body.get("new_password"),
        client_info(request, request.app[SETTINGS]).ip,
    )
    return json_response({"revoked_sessions": revoked}, headers=NO_STORE)
