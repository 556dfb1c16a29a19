"""The bare Django app, as examples/django_service.py without tokend: settings in this
file, the same outermost ``X-Worker-Pid`` middleware, gunicorn sync workers (WORKERS,
default 2) configured in code the same way."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import django
from _document import DOCUMENT  # this directory: the script's own (sys.path[0])
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_safe
from gunicorn.app.base import BaseApplication


class WorkerPidMiddleware:
    """``X-Worker-Pid`` on every response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response["X-Worker-Pid"] = str(os.getpid())
        return response


def ok(request: HttpRequest) -> HttpResponse:
    return JsonResponse(DOCUMENT, headers={"Cache-Control": "no-store"})


urlpatterns = [path("protected", require_safe(ok)), path("healthz", require_safe(ok))]


def configure() -> None:
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench-bare-django: no sessions, no signing",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        MIDDLEWARE=[f"{__name__}.WorkerPidMiddleware"],
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)


class Service(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from django.core.wsgi import get_wsgi_application

        configure()
        return get_wsgi_application()


def main() -> None:
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8081")
    Service(
        {
            "bind": f"{host}:{port}",
            "workers": int(os.environ.get("WORKERS", "2")),
            "worker_class": "sync",
            "accesslog": None,
            "control_socket_disable": True,
        }
    ).run()


if __name__ == "__main__":
    main()
