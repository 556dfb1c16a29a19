"""/auth/*: register, login, refresh, me, logout, sessions, password."""

from __future__ import annotations

from aiohttp import web

from ..auth import Principal, TokenPair
from ..errors import BadRequest
from .apidoc import auth as spec
from .appkeys import AUTH, SETTINGS
from .request import bearer_token, client_info, json_body
from .responses import json_response

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def token_response(pair: TokenPair) -> web.Response:
    """The token body, with the tokens also in the seed's response headers."""
    headers = {
        **NO_STORE,
        "Authorization": f"Bearer {pair.access_token}",
        "X-Refresh-Token": pair.refresh_token,
    }
    return json_response(pair.body(), headers=headers)


async def authenticated(request: web.Request) -> Principal:
    """The verified caller of a protected resource (RFC 6750 errors otherwise)."""
    token = bearer_token(request)
    assert token is not None
    return await request.app[AUTH].callers.authenticate(token)


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
    body = await json_body(request)
    settings = request.app[SETTINGS]
    pair = await request.app[AUTH].logins.login(
        body.get("username"),
        body.get("password"),
        client_info(request, settings),
    )
    return token_response(pair)


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
        raise BadRequest("missing refresh token (Authorization: Bearer <refresh token>)")
    if not isinstance(token, str) or not token:
        raise BadRequest("refresh_token must be a string")
    settings = request.app[SETTINGS]
    pair = await request.app[AUTH].refreshes.refresh(token, client_info(request, settings))
    return token_response(pair)


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
    principal = await authenticated(request)
    await request.app[AUTH].session_control.logout(principal)
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
