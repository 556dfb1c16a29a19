"""The protected example service as a one-file Django project under gunicorn (WSGI) or
uvicorn (ASGI).

    python examples/django_service.py
    SERVER=uvicorn python examples/django_service.py

It serves what examples/protected_service.py (aiohttp) serves, with tokend_client.django:
GET /protected (the token's claims, or the RFC 6750 refusal), GET /healthz (200 once the
deny list has been replayed, else 503), GET /metrics (Prometheus text of the revocation
listener). Every response carries ``X-Worker-Pid``, the gunicorn worker that answered.
Environment: the TOKEND_* variables of protected_service.py (TOKEND_JWKS_URL,
TOKEND_REDIS_MODE and TOKEND_REDIS_URL or TOKEND_REDIS_SENTINELS..., TOKEND_REDIS_PREFIX,
TOKEND_ISSUER, TOKEND_AUDIENCE, TOKEND_JWKS_CACHE_TTL...), which become settings.TOKEND,
and:

    PORT      default: 8081 (HOST default: 127.0.0.1)
    SERVER    gunicorn (default: sync workers, WSGI) or uvicorn (ASGI worker processes)
    WORKERS   worker processes; default: 2
    PRELOAD   1: load the application in the master before forking (gunicorn --preload)

Each worker follows the revocation events itself (tokend_client's BackgroundListener
starts in every worker after the fork, or on its first use) and waits for the replay of
the deny list before it takes requests (under uvicorn, /healthz and every token check
answer 503 until it has). SIGTERM stops the server and its workers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import django
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_safe
from gunicorn.app.base import BaseApplication
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokend_client import BackgroundListener, SubscriberSettings
from tokend_client.django import get_subscriber, health_view, tokend_required

NAME = "django_service"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORY = "examples.django_service:asgi"  # what each uvicorn worker imports


# --- the project: settings, middleware, views, urls -------------------------------------


def tokend_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """settings.TOKEND from the environment: every TOKEND_* name without its prefix."""
    names = {k.removeprefix("TOKEND_"): v for k, v in env.items() if k.startswith("TOKEND_")}
    return {**names, "EXEMPT": ["/healthz", "/metrics"], "REQUIRE": True}


def configure(env: Mapping[str, str]) -> None:
    """Configure Django for this module (once per process)."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="django-service-example: no sessions, no signing",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        MIDDLEWARE=[f"{__name__}.WorkerPidMiddleware", "tokend_client.django.TokendMiddleware"],
        USE_TZ=True,
        LOGGING_CONFIG=None,
        TOKEND=tokend_settings(env),
    )
    django.setup()
    # no access log: not Django's 4xx lines either ("Unauthorized: /protected")
    logging.getLogger("django.request").setLevel(logging.ERROR)


class WorkerPidMiddleware:
    """``X-Worker-Pid`` on every response, refusals and 404s included (outermost); sync
    under WSGI, async under ASGI (no thread hop per request)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        response = self.get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        response = await self.get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response


@tokend_required
def protected(request: HttpRequest) -> HttpResponse:
    """The caller's verified claims."""
    claims = request.tokend  # type: ignore[attr-defined, unused-ignore]
    return JsonResponse(claims, headers={"Cache-Control": "no-store"})


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of this worker's listener."""
    listener = get_subscriber().listener
    registry = None if listener is None else listener.registry
    body = b"" if registry is None else generate_latest(registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """aiohttp's plain 404, as protected_service answers it."""
    return HttpResponse("404: Not Found", status=404, content_type="text/plain; charset=utf-8")


urlpatterns = [
    path("protected", require_safe(protected)),  # GET and HEAD, as aiohttp's add_get
    path("healthz", require_safe(health_view)),
    path("metrics", require_safe(metrics)),
]


# --- gunicorn ---------------------------------------------------------------------------


def post_worker_init(worker: Any) -> None:
    """In each worker, before it takes requests: replay the deny list (up to first_wait)."""
    listener = get_subscriber().listener
    if isinstance(listener, BackgroundListener) and not listener.wait_ready(listener.first_wait):
        worker.log.warning("revocation list not replayed yet; answering 503 until it is")


class Service(BaseApplication):  # type: ignore[misc]
    """gunicorn running this project, configured in code."""

    def __init__(self, options: dict[str, Any], env: Mapping[str, str]) -> None:
        self.options = options
        self.env = env
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # control_socket_disable: gunicorn 25.1 and later
                self.cfg.set(key, value)

    def load(self) -> Any:
        from django.core.wsgi import get_wsgi_application

        configure(self.env)
        application = get_wsgi_application()
        get_subscriber()  # built here: with --preload in the master, started after the fork
        return application


def asgi() -> Any:
    """What each uvicorn worker serves: the project as an ASGI application, its listener
    started now (every token check answers 503 until the replay is done)."""
    from django.core.asgi import get_asgi_application

    configure(os.environ)
    application = get_asgi_application()
    listener = get_subscriber().listener
    if isinstance(listener, BackgroundListener):
        listener.start()
    return application


def options(env: Mapping[str, str]) -> dict[str, Any]:
    """gunicorn's settings from the environment (ValueError names a bad one)."""
    try:
        port = int(env.get("PORT", "8081"))
    except ValueError:
        raise ValueError(f"PORT: expected a port number, got {env['PORT']!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"PORT: expected a port number, got {env['PORT']!r}")
    try:
        workers = int(env.get("WORKERS", "2"))
    except ValueError:
        raise ValueError(f"WORKERS: expected a number, got {env['WORKERS']!r}") from None
    if workers < 1:
        raise ValueError(f"WORKERS: must be >= 1, got {env['WORKERS']!r}")
    server = env.get("SERVER", "gunicorn").strip().lower() or "gunicorn"
    if server not in ("gunicorn", "uvicorn"):
        raise ValueError(f"SERVER: expected gunicorn or uvicorn, got {env['SERVER']!r}")
    preload = env.get("PRELOAD", "").strip().lower()
    if preload not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"PRELOAD: expected 1 or 0, got {env['PRELOAD']!r}")
    return {
        "server": server,
        "host": env.get("HOST", "127.0.0.1"),
        "port": port,
        "bind": f"{env.get('HOST', '127.0.0.1')}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "preload_app": preload in ("1", "true", "yes", "on"),
        "accesslog": None,
        "post_worker_init": post_worker_init,
        "proc_name": NAME,
        # several instances may run at once: no shared control socket in $HOME
        "control_socket_disable": True,
    }


def main() -> None:
    """Run gunicorn or uvicorn until SIGTERM (or SIGINT)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = dict(os.environ)
    try:
        chosen = options(env)
        SubscriberSettings.from_env(env).verifier()  # every TOKEND_* value, checked now
    except ValueError as exc:
        sys.exit(f"{NAME}: bad setting: {exc}")
    if chosen.pop("server") == "gunicorn":
        Service(chosen, env).run()
        return
    import uvicorn

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # the import string below, also in each worker
    uvicorn.run(
        FACTORY,
        factory=True,
        host=chosen["host"],
        port=chosen["port"],
        workers=chosen["workers"],
        lifespan="off",  # Django answers no lifespan; the listener starts in asgi()
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
