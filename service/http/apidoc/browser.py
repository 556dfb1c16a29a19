"""Operation descriptions of what tokend serves browsers: ``/static/{name}`` (``static``)
and, for ``pages``, its two pages."""

from __future__ import annotations

from .core import doc, error_response, header, responses

_PAGE_HEADERS = {
    "Content-Security-Policy": header(
        {"type": "string"},
        "`default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'`",
    ),
    "Referrer-Policy": header({"type": "string", "enum": ["no-referrer"]}, "No referrer"),
    "X-Content-Type-Options": header({"type": "string", "enum": ["nosniff"]}, "No sniffing"),
}

static_file = doc(
    tag="browser",
    operation_id="staticFile",
    summary="A file of tokend's browser client and pages (`service/static/`)",
    description="Only files that exist in the package directory, by plain name (no path, "
    "no leading dot); anything else is 404 `not_found`. `Cache-Control: no-cache`. "
    "`tokend-client.js` is the JavaScript client (docs/browser.md).",
    parameters=[
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
            "example": "tokend-client.js",
        }
    ],
    responses=responses(
        s200={
            "description": "The file",
            "headers": {
                **_PAGE_HEADERS,
                "Cache-Control": header({"type": "string", "enum": ["no-cache"]}, "Revalidate"),
            },
            "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
            },
        },
        s404=error_response("No such static file (`not_found`)"),
    ),
)


_PAGE_PARAMETERS = [
    {
        "name": "lang",
        "in": "query",
        "required": False,
        "description": "The page language, `en` or `ko`, overriding Accept-Language "
        "(any other value is ignored: the page is never refused for it)",
        "schema": {"type": "string", "example": "ko"},
    },
    {
        "name": "return_to",
        "in": "query",
        "required": False,
        "description": "Where to go after the login: a path on tokend or a URL of an "
        "allowed origin (TOKEND_ALLOWED_ORIGINS, TOKEND_OIDC_RETURN_TO); anything else is "
        "ignored",
        "schema": {"type": "string"},
    },
]
_HTML = {
    "description": "The page (HTML); its language is in Content-Language",
    "content": {"text/html": {"schema": {"type": "string"}}},
}

# The two pages of service/http/pages.py.
login_page = doc(
    tag="pages",
    operation_id="loginPage",
    summary="The login page",
    description="Password login and one button per configured OpenID provider. English or "
    "Korean from Accept-Language or `lang`; no inline script or style (strict CSP).",
    parameters=_PAGE_PARAMETERS,
    responses=responses(s200=_HTML),
)

account_page = doc(
    tag="pages",
    operation_id="accountPage",
    summary="The account page",
    description="The caller's sessions (sign out one, all others, everywhere), password "
    "change and linked accounts; the page script calls the API with the browser's tokens "
    "and goes to /login when there are none.",
    parameters=_PAGE_PARAMETERS[:1],
    responses=responses(s200=_HTML),
)
