"""/auth/oidc/*, /auth/identities: social login with OpenID Connect providers.

Errors before the callback's state is known are JSON; once the state names a return_to
(checked against TOKEND_OIDC_RETURN_TO when the login began), failures redirect there
with ``error`` and ``error_description`` instead. A failure never starts a session.

Every flow is bound to the browser that started it (the ``tokend_oidc_browser`` cookie,
set by a top-level GET). A link flow's callback links nothing: its ``link_code`` must be
confirmed with the Bearer token of the session that asked for the link.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import async_sessionmaker

from ..backchannel import BackchannelLogout
from ..browser_settings import issuer_origin
from ..errors import BadRequest, TokendError
from ..identities import SqlIdentityStore
from ..oidc import HTTP_TIMEOUT, ProviderClient
from ..oidc_flow import STATE_TTL, SocialLogin
from ..oidc_rules import check_code_challenge, with_query
from ..settings import Settings
from .apidoc import oidc as spec
from .appkeys import AUTH, CLOCK, ENGINE, OIDC, REDIS, SETTINGS
from .auth_routes import NO_STORE, authenticated
from .dpop import token_key
from .errors import oauth_code
from .refresh_cookie import check_setting_origin, token_response
from .request import client_info, form_body, json_body

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
        backchannel = BackchannelLogout(
            providers=providers,
            redis=app[REDIS],
            prefix=settings.redis_prefix,
            control=app[AUTH].session_control,
            clock=app[CLOCK],
            leeway=settings.leeway,
            session_ttl=settings.refresh_absolute_ttl,
        )
        app[OIDC] = SocialLogin(
            backchannel=backchannel,
            providers=providers,
            redis=app[REDIS],
            prefix=settings.redis_prefix,
            identities=SqlIdentityStore(async_sessionmaker(app[ENGINE], expire_on_commit=False)),
            auth=app[AUTH],
            base_url=settings.issuer,
            # tokend's own sign-in page may always be returned to (service/http/pages.py)
            return_to=(*settings.oidc_return_to, issuer_origin(settings.issuer) + "/login"),
            starts_per_ip=settings.oidc_starts_per_ip,
            starts_window=settings.login_failure_window,
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


def _browser(request: web.Request) -> str:
    """The browser-binding cookie's value, or a new one."""
    browser = request.cookies.get(BROWSER_COOKIE, "")
    return browser if _BROWSER_VALUE.fullmatch(browser) else secrets.token_urlsafe(32)


def _client_ip(request: web.Request) -> str:
    settings = request.app[SETTINGS]
    return client_info(request, settings).ip


def _to_provider(request: web.Request, url: str, browser: str) -> web.Response:
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


@routes.get("/auth/oidc/{provider}/login", allow_head=False)
@spec.login
async def login(request: web.Request) -> web.Response:
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    params = _single_params(request)
    return_to = flow.check_return_to(params.get("return_to"))
    # The login_code that return_to will carry is bound to the application that started
    # the login: only its code_verifier redeems it (RFC 7636 style, S256 only). Without a
    # return_to no code is issued, but a challenge that is given must still be well formed.
    given = "code_challenge" in params or "code_challenge_method" in params
    challenge = (
        check_code_challenge(params.get("code_challenge"), params.get("code_challenge_method"))
        if return_to or given
        else None
    )
    await flow.starts.take(_client_ip(request))
    browser = _browser(request)
    url = await flow.begin(name, return_to=return_to, browser=browser, code_challenge=challenge)
    return _to_provider(request, url, browser)


@routes.get("/auth/oidc/{provider}/link/start", allow_head=False)
@spec.link_start
async def link_start(request: web.Request) -> web.Response:
    """The caller's browser, by a top-level navigation, takes up a link ticket: the flow is
    bound to this browser's cookie from here on, then 302 to the provider."""
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    # Fetch metadata, where the browser sends it: only a top-level navigation may start
    # a link (a fetch or a frame would not be the user's own visible browser tab).
    if request.headers.get("Sec-Fetch-Dest", "document") != "document" or request.headers.get(
        "Sec-Fetch-Mode", "navigate"
    ) not in ("navigate", "nested-navigate"):
        raise BadRequest("a link must be opened by a top-level navigation of the browser")
    browser = _browser(request)
    url = await flow.begin_link(name, _single_params(request).get("ticket"), browser)
    return _to_provider(request, url, browser)


@routes.get("/auth/oidc/{provider}/callback", allow_head=False)
@spec.callback
async def callback(request: web.Request) -> web.Response:
    flow = request.app[OIDC]
    params = _single_params(request)
    pending = await flow.resume(
        request.match_info["provider"], params.get("state"), request.cookies.get(BROWSER_COOKIE)
    )
    client = client_info(request, request.app[SETTINGS])
    if request.app[SETTINGS].dpop == "required" and not pending.return_to and not pending.link_user:
        # This answer is the token pair itself: TOKEND_DPOP=required binds it as at
        # /auth/oidc/exchange (checked before the session is made; a browser uses return_to).
        client = replace(client, jkt=await token_key(request, required=True))
    try:
        done = await flow.complete(pending, params, client)
    except TokendError as exc:
        if not pending.return_to:
            raise
        return _redirect(
            with_query(
                pending.return_to,
                error=oauth_code(exc) or "access_denied",
                error_description=exc.description,
            )
        )
    if done.link_code is not None:  # links nothing yet: the asking session confirms it
        if pending.return_to:
            return _redirect(with_query(pending.return_to, link_code=done.link_code))
        return web.json_response(
            {"link_code": done.link_code, "provider": done.provider}, headers=NO_STORE
        )
    if done.login_code is not None and pending.return_to:
        return _redirect(with_query(pending.return_to, login_code=done.login_code))
    assert done.pair is not None
    return token_response(request, done.pair)


@routes.post("/auth/oidc/exchange")
@spec.exchange
async def exchange(request: web.Request) -> web.Response:
    check_setting_origin(request)
    body = await json_body(request)
    mode = request.app[SETTINGS].dpop
    # The proof before the code: a refused proof does not burn the login code.
    jkt = await token_key(request, required=mode == "required", honoured=mode != "off")
    pair = await request.app[OIDC].redeem_login_code(
        body.get("login_code"), body.get("code_verifier"), jkt=jkt
    )
    return token_response(request, pair)


@routes.post("/auth/oidc/link/confirm")
@spec.link_confirm
async def link_confirm(request: web.Request) -> web.Response:
    """Confirm a link_code with the Bearer token of the session that asked for the link."""
    principal = await authenticated(request)
    body = await json_body(request)
    identity = await request.app[OIDC].confirm_link(body.get("link_code"), principal)
    return web.json_response(
        {"linked": {"provider": identity.provider, "issuer": identity.issuer}}, headers=NO_STORE
    )


@routes.post("/auth/oidc/{provider}/link")
@spec.link
async def link(request: web.Request) -> web.Response:
    """Start linking a provider account to the caller: a tokend URL (with a one-time
    ticket, LINK_TICKET_TTL seconds) to send the caller's own browser to."""
    principal = await authenticated(request)
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    body = await json_body(request, optional=True) if request.body_exists else {}
    return_to = flow.check_return_to(body.get("return_to"))
    await flow.starts.take(_client_ip(request))
    ticket = await flow.issue_link_ticket(name, principal, return_to)
    return web.json_response(
        {"authorization_url": flow.link_start_uri(name, ticket)}, headers=NO_STORE
    )


@routes.post("/auth/oidc/{provider}/backchannel-logout")
@spec.backchannel_logout
async def backchannel_logout(request: web.Request) -> web.Response:
    """OpenID Connect Back-Channel Logout 1.0: the provider's logout token ends the tokend
    sessions of that provider session (or, with sub only, of that provider account)."""
    flow = request.app[OIDC]
    name = request.match_info["provider"]
    flow.provider(name)
    form = await form_body(request)
    await flow.backchannel.logout(name, form.get("logout_token"))
    # Section 2.8: 200 on success, and the answer is never cached.
    return web.Response(status=200, headers=NO_STORE)


@routes.get("/auth/identities")
@spec.list_identities
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
@spec.unlink
async def unlink(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    await request.app[OIDC].identities.unlink(principal.user.id, request.match_info["provider"])
    return web.Response(status=204)
