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

Routes: GET /protected (the token's claims, or the RFC 6750 401), GET /metrics
(Prometheus text, the listener's metrics included), GET /healthz (200 once the
deny list has been replayed, else 503).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokend_client import CLAIMS_KEY, RedisTarget, RevocationListener, TokenVerifier, setup

LISTENER: web.AppKey[RevocationListener] = web.AppKey("listener", RevocationListener)


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


def create_app(env: Mapping[str, str]) -> web.Application:
    """The example service, configured from ``env``."""
    issuer = env.get("TOKEND_ISSUER", "http://127.0.0.1:8080")
    verifier = TokenVerifier(
        env.get("TOKEND_JWKS_URL", f"{issuer.rstrip('/')}/.well-known/jwks.json"),
        issuer=issuer,
        audience=env.get("TOKEND_AUDIENCE", "tokend"),
        cache_ttl=float(env.get("TOKEND_JWKS_CACHE_TTL", "300")),
        min_refetch_interval=float(env.get("TOKEND_JWKS_MIN_REFETCH", "30")),
        cache_size=int(env.get("TOKEND_VERIFY_CACHE_SIZE", "10000")),
    )
    listener = RevocationListener(
        RedisTarget.from_env(env),
        prefix=env.get("TOKEND_REDIS_PREFIX", "tokend"),
    )
    app = web.Application()
    app[LISTENER] = listener
    setup(app, verifier, listener, exempt=("/healthz", "/metrics"))
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
