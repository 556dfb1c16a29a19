"""The pages tokend serves to browsers: /login and /account.

Server-rendered HTML (service/pages: templates and strings in English and Korean) with
nothing inline: the page scripts (/static/login.js, /static/account.js) read their
configuration from a ``<script type="application/json" id="tokend-config">`` block,
which a browser never executes, so the pages keep the strict Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..pages import Markup, json_for_script, negotiate, render, strings
from ..pages.returnto import DEFAULT_RETURN_TO, allowed_origins, safe_return_to
from ..settings import Settings
from .apidoc import browser as spec
from .appkeys import SETTINGS
from .pagesec import page_headers

routes = web.RouteTableDef()

# The strings each page script shows by itself (errors, states), sent in its config.
LOGIN_SCRIPT_STRINGS = (
    "working",
    "err_credentials",
    "err_rate_limited",
    "err_rate_limited_later",
    "err_unavailable",
    "err_network",
    "err_invalid",
    "err_provider_down",
    "err_provider_denied",
    "err_provider_failed",
    "err_social_expired",
    "err_generic",
)
ACCOUNT_SCRIPT_STRINGS = (
    "signed_in_as",
    "this_device",
    "unknown_device",
    "device_format",
    "ip_label",
    "created_label",
    "last_used_label",
    "sign_out_session",
    "sign_out_this",
    "signed_out_session",
    "signed_out_others",
    "password_changed",
    "err_current_password",
    "err_password_rejected",
    "err_rate_limited",
    "err_rate_limited_later",
    "err_unavailable",
    "err_network",
    "err_invalid",
    "err_generic",
    "linked_as",
    "linked",
    "not_linked",
    "link",
    "unlink",
    "linked_ok",
    "unlinked_ok",
    "err_unlink_last",
    "err_link_failed",
    "no_providers",
)


def _language(request: web.Request) -> str:
    return negotiate(request.headers.get("Accept-Language"), request.query.get("lang"))


def _language_links(request: web.Request, lang: str, keep: Mapping[str, str]) -> dict[str, str]:
    links: dict[str, str] = {}
    for code in ("en", "ko"):
        links[f"href_{code}"] = f"{request.path}?{urlencode({'lang': code, **keep})}"
        links[f"current_{code}"] = Markup(' aria-current="true"' if code == lang else "")
    return links


def _page(
    request: web.Request,
    *,
    lang: str,
    title: str,
    script: str,
    body: Markup,
    config: dict[str, Any],
    keep: Mapping[str, str],
) -> web.Response:
    text = strings(lang)
    html = render(
        "base.html",
        {
            "lang": lang,
            "title": text[title],
            "site_name": text["site_name"],
            "skip_to_content": text["skip_to_content"],
            "language_label": text["language_label"],
            "config": json_for_script(config),
            "script": script,
            "body": body,
            **_language_links(request, lang, keep),
        },
    )
    headers = {
        **page_headers(),
        "Content-Language": lang,
        "Vary": "Accept-Language",
        "Cache-Control": "no-cache",
    }
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)


def _providers(settings: Settings, text: Mapping[str, str]) -> Markup:
    names = list(settings.oidc_providers)
    if not names:
        return Markup("")
    buttons = "\n".join(
        render(
            "provider_button.html",
            {"name": name, "label": text["continue_with"].replace("{name}", name)},
        )
        for name in names
    )
    return render(
        "providers.html", {"social_heading": text["social_heading"], "buttons": Markup(buttons)}
    )


@routes.get("/login")
@spec.login_page
async def login_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    lang = _language(request)
    text = strings(lang)
    return_to = safe_return_to(request.query.get("return_to"), settings)
    config = {
        "page": "login",
        "lang": lang,
        "cookie": settings.refresh_cookie,
        "providers": list(settings.oidc_providers),
        "returnTo": return_to or DEFAULT_RETURN_TO,
        "allowedOrigins": allowed_origins(settings),
        "strings": {key: text[key] for key in LOGIN_SCRIPT_STRINGS},
    }
    body = render(
        "login.html",
        {
            **{k: text[k] for k in ("login_heading", "username_label", "password_label")},
            "login_submit": text["login_submit"],
            "providers": _providers(settings, text),
        },
    )
    keep = {"return_to": return_to} if return_to else {}
    return _page(
        request,
        lang=lang,
        title="login_title",
        script="login.js",
        body=body,
        config=config,
        keep=keep,
    )


_ACCOUNT_TEXT = (
    "account_heading",
    "loading",
    "sessions_heading",
    "sessions_help",
    "sign_out_others",
    "sign_out_everywhere",
    "password_heading",
    "current_password_label",
    "new_password_label",
    "new_password_help",
    "password_submit",
    "identities_heading",
    "identities_help",
)


@routes.get("/account")
@spec.account_page
async def account_page(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    lang = _language(request)
    text = strings(lang)
    config = {
        "page": "account",
        "lang": lang,
        "cookie": settings.refresh_cookie,
        "providers": list(settings.oidc_providers),
        "strings": {key: text[key] for key in ACCOUNT_SCRIPT_STRINGS},
    }
    body = render("account.html", {key: text[key] for key in _ACCOUNT_TEXT})
    return _page(
        request,
        lang=lang,
        title="account_title",
        script="account.js",
        body=body,
        config=config,
        keep={},
    )
