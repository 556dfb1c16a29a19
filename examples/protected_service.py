"""A small service protected by tokend: ``python examples/protected_service.py``.

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
    TOKEND_JWKS_CACHE_TTL, TOKEND_JWKS_MIN_REFETCH   seconds; defaults 300 and 30
    TOKEND_VERIFY_CACHE_SIZE   verified tokens remembered; default 10000, 0 disables
    TOKEND_LEEWAY, TOKEND_EXP_LEEWAY   seconds allowed on iat/nbf (30) and on exp (0, max 5)
    TOKEND_PUBLIC_URL      the URL clients call (a proxy's, e.g. https://api.example.com):
                           DPoP proofs must name it + the request path (default: the URL
                           the service sees)
    CORS_ORIGINS           comma-separated origins (scheme://host[:port]) whose pages may
                           call GET /protected with a bearer token (default: none): a
                           preflight from one is answered 204 (Allow-Methods GET,
                           Allow-Headers Authorization, Content-Type, DPoP) and every answer to
                           one carries Access-Control-Allow-Origin and exposes
                           WWW-Authenticate (the client library reads invalid_token there);
                           with the setting, every answer carries Vary: Origin

The FastAPI, Flask and Django examples next to this one read the same variables and
answer the same way (every response names its process in ``X-Worker-Pid``).

Routes: GET /protected (the token's claims, or the RFC 6750 401), GET /metrics
(Prometheus text, the listener's metrics included), GET /healthz (200 once the
deny list has been replayed, else 503).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokend_client import CLAIMS_KEY, RevocationListener, SubscriberSettings, setup

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LISTENER: web.AppKey[RevocationListener] = web.AppKey("listener", RevocationListener)
CORS: web.AppKey[frozenset[str]] = web.AppKey("cors", frozenset)


async def protected(request: web.Request) -> web.Response:
    """The caller's verified claims."""
    return web.json_response(request[CLAIMS_KEY], headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of the listener."""
    body = generate_latest(request.app[LISTENER].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """200 once the revocation stream has been replayed."""
    listener = request.app[LISTENER]
    if not listener.ready:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ok", "last_event": listener.last_id})


async def _name_the_worker(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Worker-Pid"] = str(os.getpid())


@web.middleware
async def _preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A CORS preflight from a CORS_ORIGINS page, answered before the token check."""
    origin = request.headers.get("Origin")
    if (
        request.method == "OPTIONS"
        and origin in request.app[CORS]
        and "Access-Control-Request-Method" in request.headers
    ):
        allow = {
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, DPoP",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers=allow)
    return await handler(request)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origins = request.app[CORS]
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"


def create_app(env: Mapping[str, str]) -> web.Application:
    """The example service, configured from ``env``."""
    settings = SubscriberSettings.from_env(env)
    listener = settings.listener()
    cors = frozenset(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
    # CORS only when asked for: each middleware and response hook costs every request
    app = web.Application(middlewares=[_preflight] if cors else [])  # outside the token check
    app[LISTENER] = listener
    app[CORS] = cors
    app.on_response_prepare.append(_name_the_worker)
    if cors:
        app.on_response_prepare.append(_cors_headers)
    setup(
        app,
        settings.verifier(),
        listener,
        exempt=("/healthz", "/metrics"),
        public_url=settings.public_url,  # TOKEND_PUBLIC_URL: what DPoP proofs name
    )
    app.router.add_get("/protected", protected)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    """Run the service until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        app = create_app(os.environ)
        port = int(os.environ.get("PORT", "8081"))
    except ValueError as exc:
        sys.exit(f"protected_service: bad setting: {exc}")
    web.run_app(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=port,
        print=lambda line: print(line, flush=True),
        access_log=None,
    )


if __name__ == "__main__":
    main()
