"""The bare Flask app, as examples/flask_service.py without tokend: the same JSON
response and ``X-Worker-Pid`` hook, gunicorn sync workers (WORKERS, default 2)."""

from __future__ import annotations

import json
import os
from typing import Any

import gunicorn.app.base  # type: ignore[import-untyped]
from _document import DOCUMENT  # this directory: the script's own (sys.path[0])
from flask import Flask, Response


def create_app() -> Flask:
    app = Flask(__name__)

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    def ok() -> Response:
        return Response(
            json.dumps(DOCUMENT),
            headers={"Cache-Control": "no-store"},
            content_type="application/json; charset=utf-8",
        )

    app.add_url_rule("/protected", "protected", ok, methods=["GET"])
    app.add_url_rule("/healthz", "healthz", ok, methods=["GET"])
    return app


class Server(gunicorn.app.base.BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app()


def main() -> None:
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8081")
    Server(
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
