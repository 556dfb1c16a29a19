"""The security headers of every page tokend serves (/login, /account) and of /static/*:
nothing but tokend's own files may run, be framed around it or receive its forms."""

from __future__ import annotations

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def page_headers() -> dict[str, str]:
    """The headers for a page or a static file (a new dict each call: add to it freely)."""
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
