"""The one place where errors become HTTP answers: one table, JSON bodies, RFC 6750 headers.

``ERRORS`` maps each tokend error class to its HTTP status and OAuth error code; a class
without an entry of its own takes its nearest ancestor's (the class's MRO is walked against
the table, as starlette's exception handler does). ``status_of`` and ``code_of`` are the
lookups for other code (the OpenAPI document); ``render`` builds every error response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import LineTooLong

from tokend_client.dpop import ALGORITHMS as DPOP_ALGORITHMS

from ..errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    HeaderTooLarge,
    InvalidClient,
    InvalidCredentials,
    InvalidDPoPProof,
    InvalidGrant,
    InvalidResourceProof,
    InvalidScope,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    ProviderUnavailable,
    RateLimited,
    ResourceNonceRequired,
    SocialGrantInvalid,
    SocialLoginDenied,
    SocialLoginFailed,
    SocialLoginRefused,
    TokendError,
    Unauthorized,
    UnauthorizedClient,
    Unavailable,
    UnsupportedGrantType,
    UnsupportedMediaType,
    UseDPoPNonce,
    ValidationFailed,
)
from .responses import json_response

log = logging.getLogger("tokend.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Error class → (HTTP status, OAuth error code). An empty code: none (RFC 6750 section 3.1).
ERRORS: dict[type[TokendError], tuple[int, str]] = {
    TokendError: (500, "server_error"),
    ConfigError: (500, "server_error"),
    BadRequest: (400, "invalid_request"),
    UnsupportedMediaType: (415, "invalid_request"),
    PayloadTooLarge: (413, "invalid_request"),
    HeaderTooLarge: (431, "invalid_request"),
    InvalidGrant: (400, "invalid_grant"),
    UnsupportedGrantType: (400, "unsupported_grant_type"),
    InvalidScope: (400, "invalid_scope"),
    UnauthorizedClient: (400, "unauthorized_client"),
    ValidationFailed: (400, "invalid_request"),
    InvalidDPoPProof: (400, "invalid_dpop_proof"),
    UseDPoPNonce: (400, "use_dpop_nonce"),
    SocialLoginFailed: (400, "invalid_request"),
    SocialLoginRefused: (400, "access_denied"),  # the provider's own code, see oauth_code
    SocialLoginDenied: (400, "access_denied"),
    SocialGrantInvalid: (400, "invalid_grant"),
    InvalidClient: (401, "invalid_client"),
    Unauthorized: (401, ""),
    InvalidToken: (401, "invalid_token"),
    InvalidResourceProof: (401, "invalid_dpop_proof"),
    ResourceNonceRequired: (401, "use_dpop_nonce"),
    InvalidCredentials: (401, "invalid_grant"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    RateLimited: (429, "slow_down"),
    Unavailable: (503, "temporarily_unavailable"),
    ProviderUnavailable: (502, "temporarily_unavailable"),
}

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
# RFC 9449 section 7.1: the DPoP challenge names the proof algorithms tokend accepts.
DPOP_CHALLENGE = f'DPoP algs="{" ".join(DPOP_ALGORITHMS)}"'
# request key: the Authorization scheme a protected resource was called with ("Bearer",
# "DPoP"); a token error's code goes on that scheme's challenge.
AUTH_SCHEME = web.RequestKey("tokend.auth_scheme", str)


def entry_of(exc_type: type[TokendError]) -> tuple[type[TokendError], int, str]:
    """The nearest class in ``exc_type``'s MRO with an entry in ``ERRORS``, and that entry."""
    for cls in exc_type.__mro__:
        if cls in ERRORS:
            status, code = ERRORS[cls]
            return cls, status, code
    raise TypeError(f"{exc_type!r} is not a TokendError")


def status_of(exc_type: type[TokendError]) -> int:
    """The HTTP status of an error class."""
    return entry_of(exc_type)[1]


def code_of(exc_type: type[TokendError]) -> str:
    """The OAuth error code of an error class ("" for a bare 401 challenge)."""
    return entry_of(exc_type)[2]


def oauth_code(exc: TokendError) -> str:
    """The OAuth error code an error answers with: its class's, or the provider's own
    when tokend relays a provider's refusal."""
    if isinstance(exc, SocialLoginRefused):
        return exc.provider_error
    return code_of(type(exc))


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


def _challenges(exc: TokendError, code: str, scheme: str) -> list[str] | None:
    """The WWW-Authenticate values of a protected resource's 401: Bearer and DPoP (RFC
    6750 section 3, RFC 9449 section 7.1), the error on the scheme the request used (a
    DPoP proof's error always on DPoP); None for any other error."""
    if isinstance(exc, Unauthorized):
        return [REALM, DPOP_CHALLENGE]
    if not isinstance(exc, InvalidToken):
        return None
    error = f'error="{code}", error_description="{_quote(exc.description)}"'
    if isinstance(exc, InvalidResourceProof) or scheme.lower() == "dpop":
        return [REALM, f"{DPOP_CHALLENGE}, {error}"]
    return [f"{REALM}, {error}", DPOP_CHALLENGE]


def render(exc: TokendError, *, bearer: bool = True, scheme: str = "Bearer") -> web.Response:
    """Map a tokend error to its HTTP answer (``scheme``: the Authorization scheme of a
    protected resource's request)."""
    status, code = status_of(type(exc)), oauth_code(exc)
    headers: dict[str, str] = {}
    challenges = _challenges(exc, code, scheme) if bearer else None
    if challenges is not None:
        headers["WWW-Authenticate"] = challenges[0]
    elif isinstance(exc, InvalidClient):
        headers["WWW-Authenticate"] = 'Basic realm="tokend"'
    if status == 401 and "WWW-Authenticate" not in headers:
        # RFC 9110 section 15.5.2: every 401 carries a challenge (bad login credentials, a
        # wrong current password, a token error where bearer details do not apply).
        headers["WWW-Authenticate"] = REALM
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    response = json_error(status, code, exc.description, headers)
    for challenge in (challenges or [])[1:]:
        response.headers.add("WWW-Authenticate", challenge)
    return response


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
        return render(exc, scheme=request.get(AUTH_SCHEME, "Bearer"))
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
        return render(TokendError())


MAX_HEADER_BYTES = 8192


@web.middleware
async def header_size_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 for any header over 8 KiB, without echoing any part of it."""
    for name, value in request.raw_headers:
        if len(name) + len(value) > MAX_HEADER_BYTES:
            raise HeaderTooLarge()
    return await handler(request)


class _JsonErrorHandler(web.RequestHandler):
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
        error: TokendError
        if isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower():
            error = HeaderTooLarge()
        elif 400 <= status < 500:
            error = BadRequest("malformed HTTP request")
        else:
            error = TokendError()
        response = render(error)
        if status > 500:  # 504: a handler timed out outside every middleware
            response.set_status(status)
        response.force_close()
        return response


async def _not_set_up(request: web.BaseRequest) -> web.StreamResponse:
    raise RuntimeError("TokendRunner.setup() was not awaited")


class _JsonErrorServer(web.Server):
    """aiohttp's low-level server, making connections of ``_JsonErrorHandler``."""

    def __init__(self, **kwargs: Any) -> None:
        handler_cancellation = kwargs.pop("handler_cancellation", False)
        super().__init__(_not_set_up, handler_cancellation=handler_cancellation, **kwargs)
        self.handler_args = kwargs
        self.running_loop = asyncio.get_running_loop()

    def __call__(self) -> web.RequestHandler:
        return _JsonErrorHandler(self, loop=self.running_loop, **self.handler_args)


# Header limits for the parser: generous, so our middleware answers 431 itself for
# anything between 8 KiB and these; beyond them _JsonErrorHandler answers.
HANDLER_ARGS: dict[str, Any] = {"max_line_size": 65536, "max_field_size": 65536}


class TokendRunner(web.ServerRunner):
    """Runs an application as ``web.AppRunner`` does, on connections that render protocol
    errors as JSON without echo.

    aiohttp answers a request its parser refuses (a header past ``max_field_size``, a
    garbage request line) from ``RequestHandler.handle_error``, before any middleware, with
    the parser's message as body: it quotes the first 100 bytes of the offending line. No
    argument of ``AppRunner`` chooses that class, so this runner is built from aiohttp's
    public low-level pieces: an ``AppRunner`` starts the application and provides its
    request handler and factory (``Server.request_handler``, ``Server.request_factory``),
    a ``web.Server`` subclass makes ``_JsonErrorHandler`` connections, and
    ``web.ServerRunner`` serves them.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        self._app_runner = web.AppRunner(app)
        self._json_server = _JsonErrorServer(**{**HANDLER_ARGS, **kwargs})
        super().__init__(
            self._json_server, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout
        )

    @property
    def app(self) -> web.Application:
        return self._app_runner.app

    async def setup(self) -> None:
        await self._app_runner.setup()  # on_startup, freeze, aiohttp's own server
        inner = self._app_runner.server
        assert inner is not None
        self._json_server.request_handler = inner.request_handler
        self._json_server.request_factory = inner.request_factory
        await super().setup()

    async def shutdown(self) -> None:
        await self.app.shutdown()

    async def cleanup(self) -> None:
        await super().cleanup()  # sites, connections, on_shutdown, in-flight handlers
        await self.app.cleanup()
