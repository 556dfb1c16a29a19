"""The aiohttp example as a Flask app behind gunicorn: ``python examples/flask_service.py``.

It serves what the aiohttp example serves, with the same environment (TOKEND_JWKS_URL,
TOKEND_REDIS_URL and the TOKEND_REDIS_MODE family, TOKEND_REDIS_PREFIX, TOKEND_ISSUER,
TOKEND_AUDIENCE, TOKEND_JWKS_CACHE_TTL, TOKEND_JWKS_MIN_REFETCH, TOKEND_VERIFY_CACHE_SIZE;
PORT default 8081, HOST default 127.0.0.1), plus:

    WORKERS                gunicorn sync workers; default 2
    PRELOAD                1: build the app in the master before forking (--preload)

Routes: GET /protected (the token's claims, or the RFC 6750 answer), GET /metrics
(Prometheus text of the listener), GET /healthz (200 once the deny list has been
replayed, else 503). Every response carries ``X-Worker-Pid``. Each worker follows
tokend's revocations in its own thread (started right after the fork with PRELOAD=1,
else when the worker has loaded the app) and waits for the replay before it answers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import gunicorn.app.base  # type: ignore[import-untyped]
from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokend_client import SubscriberSettings
from tokend_client.flask import Tokend, current_claims

EXEMPT = ("/healthz", "/metrics")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON as the aiohttp example sends it."""
    return Response(
        json.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json; charset=utf-8",
    )


def create_app(env: Mapping[str, str]) -> Flask:
    """The example service, configured from ``env`` (ValueError names a bad setting)."""
    app = Flask(__name__)
    app.config.update({k: v for k, v in env.items() if k.startswith("TOKEND_")})
    app.config.update(TOKEND_REQUIRE=True, TOKEND_EXEMPT=EXEMPT)
    tokend = Tokend(app)

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    @app.get("/protected")
    @tokend.required
    def protected() -> Response:
        return json_response(current_claims(), headers={"Cache-Control": "no-store"})

    @app.get("/metrics")
    def metrics() -> Response:
        listener = tokend.subscriber().listener
        body = generate_latest(listener.registry) if listener and listener.registry else b""
        return Response(body, content_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> Response:
        status, body = tokend.subscriber().health()
        return json_response(body, status)

    return app


def warm_up(worker: Any) -> None:
    """gunicorn's post_worker_init: replay the deny list before the worker accepts."""
    app: Flask = worker.wsgi
    listener = app.extensions["tokend"].listener
    if listener is not None and not listener.wait_ready(listener.first_wait):
        worker.log.warning("deny list not replayed yet: answering 503 until it is")


class Server(gunicorn.app.base.BaseApplication):  # type: ignore[misc]
    """gunicorn, configured here rather than from its command line."""

    def __init__(self, env: Mapping[str, str], options: dict[str, Any]) -> None:
        self.env = env
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # in each worker, after the fork; in the master with preload
        return create_app(self.env)


def integer(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number >= 1 from ``env`` (ValueError names it)."""
    raw = env.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}: expected a whole number >= 1, got {raw!r}")
    return int(raw)


def main() -> None:
    """Run gunicorn until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = os.environ
    try:
        # a bad setting stops here, once, rather than in every worker
        SubscriberSettings.from_env(env).verifier()
        port = integer(env, "PORT", 8081)
        workers = integer(env, "WORKERS", 2)
    except ValueError as exc:
        sys.exit(f"flask_service: bad setting: {exc}")
    options = {
        "bind": f"{env.get('HOST', '127.0.0.1')}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "preload_app": env.get("PRELOAD", "").strip().lower() in ("1", "true", "yes", "on"),
        "accesslog": None,
        "control_socket_disable": True,  # gunicorn's control socket: one per $HOME otherwise
        "post_worker_init": warm_up,
    }
    Server(env, options).run()


if __name__ == "__main__":
    main()
