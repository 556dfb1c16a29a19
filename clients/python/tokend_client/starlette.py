"""The ASGI integration: a pure ASGI middleware over the Guard, for Starlette, FastAPI,
Litestar, Quart or any ASGI 3 app (it imports no framework).

    subscriber = Subscriber(SubscriberSettings.from_env(os.environ), threaded=False)
    app.add_middleware(TokendMiddleware, subscriber=subscriber, exempt=("/healthz",))
    ...
    tokens = claims(request)       # in an endpoint: the verified claims, or None

Every ``http`` and ``websocket`` scope's ``Authorization`` headers (all of them: two are
refused) and query string (``access_token`` there is refused) go to ``guard.check``, with
the scope's DPoP side (method, ``scheme`` and ``Host``, ``raw_path``, ``DPoP`` headers;
``TOKEND_PUBLIC_URL`` in place of the scheme and host when set):

- a refusal (400, 401, 503: see ``_guard.py``) is answered at once, JSON
  ``{"error", "error_description"}`` with its ``WWW-Authenticate``/``Retry-After``;
- verified, unrevoked claims go to ``scope["state"]["tokend"]`` (``request.state.tokend``);
- no credentials: ``None`` there, or with ``require=True`` the 401 ``guard.required()``.

Paths in ``exempt`` (exact ``scope["path"]`` matches, like the aiohttp ``setup``) are not
checked at all: ``state.tokend`` is None whatever they carry, so a health check answers
even before the deny list is replayed. A websocket handshake is checked the same way; a
refusal is sent as the HTTP answer when the server offers the ``websocket.http.response``
extension, else as ``websocket.close`` with code 1008 (servers turn that into a 403).
Endpoints may ``raise TokendRefusal(guard.forbidden("scope"))``: the middleware renders it
under Starlette and FastAPI; Litestar and Quart answer an exception from a handler with
their own 500 before it reaches the middleware (register a handler for it there).

The middleware speaks the ``lifespan`` protocol too: it starts the subscriber (its
revocation listener) when the server sends ``lifespan.startup``, before the app's own
startup runs, and closes it once the app has shut down. An app without lifespan support
(it raises on the lifespan scope before reading a message) gets the protocol answered by
the middleware. A server that runs no lifespan at all (``uvicorn --lifespan off``, httpx's
``ASGITransport``) gets the subscriber started by the first request and never closed;
until its deny list is replayed, requests with a token are answered 503.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, NotRequired, TypedDict, cast
from urllib.parse import parse_qsl

from ._guard import Answer, DPoPRequest, dpop_path
from ._subscriber import Subscriber, SubscriberSettings

__all__ = ["SUBSCRIBER_KEY", "TokenClaims", "TokendMiddleware", "TokendRefusal", "claims"]

log = logging.getLogger("tokend_client.starlette")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope key under which the middleware leaves its Subscriber for dependencies.
SUBSCRIBER_KEY = "tokend_client.subscriber"


class TokenClaims(TypedDict):
    """The claims of a tokend access token (RFC 9068); extra claims stay in the dict."""

    iss: str
    sub: str
    aud: str | list[str]
    exp: int
    iat: int
    jti: str
    sid: str
    scope: NotRequired[str]
    client_id: NotRequired[str]
    auth_time: NotRequired[float]


class TokendRefusal(Exception):
    """Raised by an endpoint or dependency: the middleware (or FastAPI's handler that
    ``tokend_client.fastapi.install`` registers) answers with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status, answer.error, answer.description)
        self.answer = answer


def claims(request: Any) -> TokenClaims | None:
    """The verified claims of a request (anything with ``.scope``, or a scope), None
    without credentials; RuntimeError when TokendMiddleware did not see the request."""
    scope: Mapping[str, Any] = getattr(request, "scope", request)
    if SUBSCRIBER_KEY not in scope:
        raise RuntimeError("tokend_client: TokendMiddleware is not installed on this app")
    return cast("TokenClaims | None", scope["state"].get("tokend"))


_HTTP_SCHEME = {"ws": "http", "wss": "https"}


def dpop_request(scope: Scope) -> DPoPRequest:
    """The scope's side of a DPoP proof check (only asked for with the DPoP scheme); a
    websocket handshake is named by its http(s) URL."""
    scheme = scope.get("scheme") or "http"
    host = ""
    proofs = []
    for k, v in scope["headers"]:
        if k == b"host":
            host = v.decode("latin-1")
        elif k == b"dpop":
            proofs.append(v.decode("latin-1"))
    if not host and scope.get("server"):
        name, port = scope["server"]
        host = f"{name}:{port}" if port is not None else name
    raw = scope.get("raw_path")
    path = (
        raw.decode("latin-1").partition("?")[0]
        if raw
        else scope.get("root_path", "") + scope["path"]
    )
    return DPoPRequest(
        scope.get("method", "GET"),
        f"{_HTTP_SCHEME.get(scheme, scheme)}://{host}",
        dpop_path(path),
        proofs,
    )


def _header_list(answer: Answer) -> list[tuple[bytes, bytes]]:
    body = answer.json()
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers),
    ]


class TokendMiddleware:
    """Check every request's bearer token; start and close ``subscriber`` with the app.

    Without ``subscriber`` one is built from ``settings`` (default: ``TOKEND_*`` of the
    environment). ``require=True`` answers 401 to requests without credentials on every
    path but ``exempt``.
    """

    def __init__(
        self,
        app: ASGIApp,
        subscriber: Subscriber | None = None,
        *,
        settings: SubscriberSettings | None = None,
        require: bool = False,
        exempt: Iterable[str] = (),
    ) -> None:
        self.app = app
        if subscriber is None:
            settings = settings or SubscriberSettings.from_env(os.environ)
            subscriber = Subscriber(settings, threaded=False)
        self.subscriber = subscriber
        self.guard = subscriber.guard
        self.require = require
        self.exempt = frozenset(exempt)
        self._started = False
        self._closed = False

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            await self.subscriber.start()

    async def _close(self) -> None:
        if self._started and not self._closed:
            self._closed = True
            await self.subscriber.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(scope, receive, send)
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if not self._closed:
            await self._start()  # no-op after the lifespan's startup
        scope[SUBSCRIBER_KEY] = self.subscriber
        state = scope.setdefault("state", {})
        outcome: dict[str, Any] | Answer | None = None
        if scope["path"] not in self.exempt:
            outcome = await self._check(scope)
            if outcome is None and self.require:
                outcome = self.guard.required()
        if isinstance(outcome, Answer):
            if outcome.status == 503:
                log.warning(
                    "%s %s: %s", scope.get("method", "WS"), scope["path"], outcome.description
                )
            if kind == "websocket":
                return await self._refuse_websocket(scope, receive, send, outcome)
            return await self._answer(send, outcome)
        state["tokend"] = outcome
        if kind == "websocket":
            return await self.app(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        except TokendRefusal as refusal:
            # (no wrapper of send on every request to know whether the response began:
            # when it did, the server refuses a second start, and the refusal goes on up)
            try:
                await self._answer(send, refusal.answer)
            except RuntimeError:
                raise refusal from None

    async def _check(self, scope: Scope) -> dict[str, Any] | Answer | None:
        authorization = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        raw: bytes = scope.get("query_string", b"")
        in_url = b"access_token" in raw and any(
            k == "access_token" for k, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
        )
        return await self.guard.check(authorization, in_url, lambda: dpop_request(scope))

    @staticmethod
    async def _answer(send: Send, answer: Answer) -> None:
        headers = _header_list(answer)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.json()})

    @staticmethod
    async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, answer: Answer) -> None:
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = _header_list(answer)
            start = {"status": answer.status, "headers": headers}
            await send({"type": "websocket.http.response.start", **start})
            await send({"type": "websocket.http.response.body", "body": answer.json()})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": answer.error})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = False

        async def receive_() -> Message:
            nonlocal read
            read = True
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
            return message

        async def send_(message: Message) -> None:
            if message["type"] in ("lifespan.startup.failed", "lifespan.shutdown.complete"):
                await self._close()
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except Exception:
            if read:
                await self._close()
                raise
            await self._own_lifespan(receive, send)  # the app does not speak lifespan
        finally:
            await self._close()

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._close()
                await send({"type": "lifespan.shutdown.complete"})
                return
