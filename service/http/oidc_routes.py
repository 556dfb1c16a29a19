"""/auth/oidc/*, /auth/identities: social login with OpenID Connect providers.

Errors before the callback's state is known are JSON; once the state names a return_to
(checked against TOKEND_OIDC_RETURN_TO when the login began), failures redirect there
with ``error`` and ``error_description`` instead. A failure never starts a session.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import async_sessionmaker

from ..errors import BadRequest, TokendError
from ..identities import SqlIdentityStore
from ..oidc import HTTP_TIMEOUT, ProviderClient
from ..oidc_flow import STATE_TTL, SocialLogin, with_query
from ..settings import Settings
from .appkeys import AUTH, CLOCK, ENGINE, OIDC, REDIS, SETTINGS
from .auth_routes import NO_STORE, authenticated, token_response
from .request import client_info, json_body

routes = web.RouteTableDef()

BROWSER_COOKIE = "tokend_oidc_browser"
_BROWSER_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")
_REDIRECT_HEADERS = {**NO_STORE, "Referrer-Policy": "no-referrer"}


def setup_oidc(app: web.Application, settings: Settings) -> None:
    """The outbound HTTP session and the social-login flow; no provider is contacted here."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        http = aiohttp.ClientSession(
            timeout=HTTP_TIMEOUT,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "tokend"},
        )
        providers = {
            name: ProviderClient(provider, http, clock=app[CLOCK], leeway=settings.leeway)
            for name, provider in settings.oidc_providers.items()
        }
        app[OIDC] = SocialLogin(
            providers=providers,
            redis=app[REDIS],
            prefix=settings.redis_prefix,
            identities=SqlIdentityStore(async_sessionmaker(app[ENGINE], expire_on_commit=False)),
            auth=app[AUTH],
            base_url=settings.issuer,
            return_to=settings.oidc_return_to,
        )
        yield
        await http.close()

    app.cleanup_ctx.append(ctx)


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={**_REDIRECT_HEADERS, "Location": location})


def _single_params(request: web.Request) -> dict[str, str]:
    """The query as a dict; RFC 6749 section 3.1: no parameter may be repeated."""
    params: dict[str, str] = {}
    for key, value in request.query.items():
        if key in params:
            raise BadRequest(f"parameter {key[:32]} given more than once")
        params[key] = value
    return params


@routes.get("/auth/oidc/{provider}/login", allow_head=False)
async def login(request: web.Request) -> web.Response:
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    return_to = flow.check_return_to(_single_params(request).get("return_to"))
    browser = request.cookies.get(BROWSER_COOKIE, "")
    if not _BROWSER_VALUE.fullmatch(browser):
        browser = secrets.token_urlsafe(32)
    url = await flow.begin(name, return_to=return_to, browser=browser)
    response = _redirect(url)
    # Binds the state to this browser: a callback URL sent to someone else fails there
    # (login CSRF). Lax is sent on the provider's top-level redirect back to tokend.
    response.set_cookie(
        BROWSER_COOKIE,
        browser,
        max_age=STATE_TTL,
        path="/auth/oidc/",
        httponly=True,
        samesite="Lax",
        secure=request.app[SETTINGS].issuer.startswith("https:"),
    )
    return response


@routes.get("/auth/oidc/{provider}/callback", allow_head=False)
async def callback(request: web.Request) -> web.Response:
    flow = request.app[OIDC]
    params = _single_params(request)
    pending = await flow.resume(
        request.match_info["provider"], params.get("state"), request.cookies.get(BROWSER_COOKIE)
    )
    settings = request.app[SETTINGS]
    client = client_info(request, trust_forwarded_for=settings.trust_forwarded_for)
    try:
        account = await flow.finish(pending, params)
        if pending.link_user is not None:
            identity = await flow.link(pending.link_user, account)
            if pending.return_to:
                return _redirect(with_query(pending.return_to, linked=identity.provider))
            return web.json_response(
                {"linked": {"provider": identity.provider, "issuer": identity.issuer}},
                headers=NO_STORE,
            )
        user = await flow.local_user(account)
        if pending.return_to:
            code = await flow.issue_login_code(user, client)
            return _redirect(with_query(pending.return_to, login_code=code))
        return token_response(await flow.start_session(user, client))
    except TokendError as exc:
        request.app[AUTH].metrics.logins.labels("oidc_failed").inc()
        if not pending.return_to:
            raise
        return _redirect(
            with_query(
                pending.return_to,
                error=exc.code or "access_denied",
                error_description=exc.description,
            )
        )


@routes.post("/auth/oidc/exchange")
async def exchange(request: web.Request) -> web.Response:
    body = await json_body(request)
    pair = await request.app[OIDC].redeem_login_code(body.get("login_code"))
    return token_response(pair)


@routes.post("/auth/oidc/{provider}/link")
async def link(request: web.Request) -> web.Response:
    """Start linking a provider account to the caller: the URL to send their browser to.

    The URL is as sensitive as a password-reset link: single use, valid STATE_TTL seconds.
    """
    principal = await authenticated(request)
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    body = await json_body(request, optional=True) if request.body_exists else {}
    return_to = flow.check_return_to(body.get("return_to"))
    url = await flow.begin(name, return_to=return_to, link_user=principal.user.id)
    return web.json_response({"authorization_url": url}, headers=NO_STORE)


@routes.get("/auth/identities")
async def list_identities(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    identities = await request.app[OIDC].identities.list_for_user(principal.user.id)
    body: list[dict[str, Any]] = [
        {
            "provider": i.provider,
            "issuer": i.issuer,
            "subject": i.subject,
            "email": i.email,
            "created": i.created_at,
        }
        for i in identities
    ]
    return web.json_response(
        {"identities": body, "has_password": principal.user.password_hash is not None},
        headers=NO_STORE,
    )


@routes.delete("/auth/identities/{provider}")
async def unlink(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    await request.app[OIDC].identities.unlink(principal.user.id, request.match_info["provider"])
    return web.Response(status=204)
