"""The bare FastAPI app under uvicorn, as examples/fastapi_service.py: WORKERS processes
(default 1, the bench sets 2), the same pure-ASGI ``X-Worker-Pid`` wrapper, async routes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from _document import DOCUMENT  # this directory: the script's own (sys.path[0])
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HERE = Path(__file__).resolve().parent
FACTORY = "fastapi_bare:asgi"


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


def create_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/protected")
    async def protected() -> Response:
        return JSONResponse(DOCUMENT, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"ok": True})

    return app


def asgi() -> WorkerPid:
    return WorkerPid(create_app())


def main() -> None:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    uvicorn.run(
        FACTORY,
        factory=True,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8081")),
        workers=int(os.environ.get("WORKERS", "1")),
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
