"""examples/protected_service.py in FastAPI: ``python examples/fastapi_service.py``.

It verifies access tokens from tokend's JWKS and follows tokend's revocation events,
so a logout at tokend is refused here within milliseconds. Environment:

    TOKEND_JWKS_URL        default: $TOKEND_ISSUER/.well-known/jwks.json
    TOKEND_REDIS_MODE      standalone (default), cluster or sentinel, with
                           TOKEND_REDIS_URL (default: redis://127.0.0.1:6379/0; a cluster:
                           any node), or TOKEND_REDIS_SENTINELS and
                           TOKEND_REDIS_SENTINEL_MASTER: the same variables as tokend's
    TOKEND_REDIS_PREFIX    default: tokend
    TOKEND_ISSUER          default: http://127.0.0.1:8080
    TOKEND_AUDIENCE        default: tokend
    PORT                   default: 8081 (HOST default: 127.0.0.1)
    WORKERS                uvicorn worker processes; default 1
    TOKEND_JWKS_CACHE_TTL, TOKEND_JWKS_MIN_REFETCH   seconds; defaults 300 and 30
    TOKEND_VERIFY_CACHE_SIZE   verified tokens remembered; default 10000, 0 disables

Routes: GET /protected (the token's claims, or the RFC 6750 401), GET /metrics
(Prometheus text, the listener's metrics included), GET /healthz (200 once the
deny list has been replayed, else 503). Every response carries ``X-Worker-Pid``, the
process that answered. Each worker process builds its own app (the uvicorn factory
``examples.fastapi_service:asgi``) and follows the revocations on its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokend_client import Subscriber, SubscriberSettings
from tokend_client.fastapi import TokenClaims, install, require_token

ROOT = Path(__file__).resolve().parent.parent
FACTORY = "examples.fastapi_service:asgi"


class WorkerPid:
    """ASGI middleware: ``X-Worker-Pid`` on every response of this process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (b"x-worker-pid", str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_)


def create_app(env: Mapping[str, str] | None = None) -> FastAPI:
    """The example service, configured from ``env`` (default: the environment)."""
    settings = SubscriberSettings.from_env(os.environ if env is None else env)
    subscriber = Subscriber(settings, threaded=False)
    # No /docs or /openapi.json: the routes are protected_service's, no more.
    app = FastAPI(title="tokend FastAPI example", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.subscriber = subscriber
    install(app, subscriber, require=True, exempt=("/healthz", "/metrics"))

    @app.get("/protected")
    async def protected(token: Annotated[TokenClaims, Depends(require_token())]) -> Response:
        """The caller's verified claims."""
        return JSONResponse(dict(token), headers={"Cache-Control": "no-store"})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of the listener."""
        registry = getattr(subscriber.listener, "registry", None)
        body = generate_latest(registry) if registry is not None else b""
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/healthz")
    async def healthz() -> Response:
        """200 once the revocation stream has been replayed."""
        status, body = subscriber.health()
        return JSONResponse(body, status_code=status)

    return app


def asgi(env: Mapping[str, str] | None = None) -> WorkerPid:
    """What uvicorn serves: the app, wrapped so that even its 500s carry X-Worker-Pid."""
    return WorkerPid(create_app(env))


def _integer(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}: expected a positive integer, got {raw!r}")
    return int(raw)


def main() -> None:
    """Run the service until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        create_app(os.environ)  # a bad setting stops us here, in one line (not in a worker)
        port = _integer("PORT", 8081)
        workers = _integer("WORKERS", 1)
    except ValueError as exc:
        sys.exit(f"fastapi_service: bad setting: {exc}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the import string below, also in each worker
    uvicorn.run(
        FACTORY,
        factory=True,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
