"""``GET /static/{name}``: the files of the package directory ``service/static/`` (the
browser client and the pages' scripts and styles), and nothing else."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from ..errors import NotFound
from .apidoc import browser as spec
from .pagesec import page_headers

routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

# A plain file name: no separator, no leading dot (so no "..", no hidden files).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def static_file(name: str) -> Path:
    """The file ``name`` in STATIC_DIR; NotFound for anything else."""
    suffix = Path(name).suffix.lower()
    if not _NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
        raise NotFound("no such static file")
    path = STATIC_DIR / name
    if path.parent != STATIC_DIR or not path.is_file():
        raise NotFound("no such static file")
    return path


@routes.get("/static/{name}")
@spec.static_file
async def serve(request: web.Request) -> web.Response:
    path = static_file(request.match_info["name"])
    body = await asyncio.to_thread(path.read_bytes)
    headers = {
        **page_headers(),
        "Cache-Control": "no-cache",
        "Content-Type": CONTENT_TYPES[path.suffix.lower()],
    }
    return web.Response(body=body, headers=headers)
