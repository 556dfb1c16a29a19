"""The one place where errors become HTTP answers: JSON bodies, RFC 6750 headers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web, web_protocol, web_server
from aiohttp.http_exceptions import LineTooLong

from ..errors import (
    InvalidClient,
    InvalidToken,
    RateLimited,
    TokendError,
    Unauthorized,
    Unavailable,
)
from .responses import json_response

log = logging.getLogger("tokend.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for aiohttp's own HTTP exceptions (routing, body size), by status.
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "invalid_request",
    415: "invalid_request",
    431: "invalid_request",
}

REALM = 'Bearer realm="tokend"'


def json_error(
    status: int, code: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error answer that is never cached."""
    body: dict[str, Any] = {"error": code or "unauthorized", "error_description": description}
    response = json_response(body, status=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


def render(exc: TokendError, *, bearer: bool = True) -> web.Response:
    """Map a tokend error to its HTTP answer."""
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = REALM
    elif isinstance(exc, InvalidToken) and bearer:
        headers["WWW-Authenticate"] = (
            f'{REALM}, error="invalid_token", error_description="{_quote(exc.description)}"'
        )
    elif isinstance(exc, InvalidClient):
        headers["WWW-Authenticate"] = 'Basic realm="tokend"'
    if exc.status == 401 and "WWW-Authenticate" not in headers:
        # RFC 9110 section 15.5.2: every 401 carries a challenge (bad login credentials, a
        # wrong current password, a token error where bearer details do not apply).
        headers["WWW-Authenticate"] = REALM
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return json_error(exc.status, exc.code, exc.description, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as JSON; nothing raw (and no traceback) reaches the client."""
    try:
        return await handler(request)
    except TokendError as exc:
        if isinstance(exc, Unavailable):
            log.warning(
                "%s %s: %s (%s)",
                request.method,
                request.path,
                exc.description,
                type(exc.__cause__).__name__,
            )
        return render(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(
            exc.status, "invalid_request" if exc.status < 500 else "server_error"
        )
        # Only Allow is carried over: the exception's own Content-Type would clash with JSON.
        allow = exc.headers.get(hdrs.ALLOW)
        return json_error(exc.status, code, exc.reason, {hdrs.ALLOW: allow} if allow else None)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "server_error", "internal error")


MAX_HEADER_BYTES = 8192


@web.middleware
async def header_size_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 for any header over 8 KiB, without echoing any part of it."""
    for name, value in request.raw_headers:
        if len(name) + len(value) > MAX_HEADER_BYTES:
            return json_error(431, "invalid_request", "request header too large")
    return await handler(request)


class _JsonErrorHandler(web_protocol.RequestHandler):
    """Parser errors (header past the parser's limit, bad request line) as JSON, no echo."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning(
            "rejected a malformed request from %s: %s",
            request.remote,
            type(exc).__name__ if exc else status,
        )
        # The parser's LineTooLong reads "Got more than N bytes when reading: <the line>".
        if isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower():
            status = 431
        code = "server_error" if status >= 500 else "invalid_request"
        description = {431: "request header too large", 500: "internal error"}.get(
            status, "malformed HTTP request"
        )
        response = json_error(status, code, description)
        response.force_close()
        return response


class _JsonErrorServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


# Header limits for the parser: generous, so our middleware answers 431 itself for
# anything between 8 KiB and these; beyond them _JsonErrorHandler answers.
HANDLER_ARGS: dict[str, Any] = {"max_line_size": 65536, "max_field_size": 65536}


class TokendRunner(web.AppRunner):
    """An AppRunner whose connections render protocol errors as JSON without echo."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs = {**HANDLER_ARGS, **kwargs}
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same layout; only the handler factory differs
        return server
