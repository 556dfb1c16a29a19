"""The bare aiohttp app, as examples/protected_service.py without tokend: web.run_app,
one process, no access log."""

from __future__ import annotations

import os

from _document import DOCUMENT  # this directory: the script's own (sys.path[0])
from aiohttp import web

PID = str(os.getpid())


async def ok(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT, headers={"Cache-Control": "no-store"})


async def name_the_worker(request: web.Request, response: web.StreamResponse) -> None:
    # as the example does it: every response, refusals included, names its process
    response.headers["X-Worker-Pid"] = PID


def main() -> None:
    app = web.Application()
    app.on_response_prepare.append(name_the_worker)
    app.router.add_get("/protected", ok)
    app.router.add_get("/healthz", ok)
    web.run_app(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8081")),
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
