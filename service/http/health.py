"""Liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import async_sessionmaker

from .. import db
from ..errors import Unavailable
from ..redisconn import redis_errors
from .apidoc import discovery as spec
from .appkeys import ENGINE, METRICS, REDIS
from .errors import render
from .responses import json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
@spec.healthz
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
@spec.readyz
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    try:
        with redis_errors():
            await request.app[REDIS].ping()
        checks["redis"] = "ok"
    except Unavailable:
        checks["redis"] = "unavailable"
    try:
        await db.ping(async_sessionmaker(request.app[ENGINE]))
        checks["database"] = "ok"
    except Unavailable:
        checks["database"] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return json_response({"status": "ready", "checks": checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return render(Unavailable(f"not ready: {down}", retry_after=1))


@routes.get("/metrics")
@spec.metrics
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
    )
