"""The refresh ceiling: one aiohttp handler doing only one refresh's unavoidable work.

Verify one EdDSA refresh JWT (PyJWT, key loaded once), one EVALSHA of a tiny rotation
script (GET, compare, SET), sign a new access and a new refresh token (EdDSA) and answer
the token body with the tokens also in ``Authorization`` and ``X-Refresh-Token``, like
tokend, so bench/refresh.lua follows the chain. No metrics, no events, no checks beyond
PyJWT's; stdlib json and asyncio.

``MINIMAL_LIKE_TOKEND=1`` (for both commands) makes the same crypto and runtime choices as
tokend does today instead: the refresh token MACed with HS256 (a 32-byte key), the access
token still EdDSA, orjson for the body and uvloop for the loop. That variant is the
like-for-like floor: what tokend's own code costs on top of it is the gap to close.

    python bench/minimal_refresh.py tokens N WORKDIR PREFIX   # keys + tokens, Redis state
    python bench/minimal_refresh.py serve PORT WORKDIR PREFIX
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REDIS_URL = "redis://127.0.0.1:6379/0"
ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "tokend"
KID = "minimal-1"
ACCESS_TTL = 900
REFRESH_TTL = 1_209_600
LIKE_TOKEND = os.environ.get("MINIMAL_LIKE_TOKEND") == "1"
ROTATE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def _key(workdir: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((workdir / "key.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _refresh_key(workdir: Path) -> Any:
    """The refresh token's key: the Ed25519 key, or (like tokend) a 32-byte MAC key."""
    return (workdir / "mac.key").read_bytes() if LIKE_TOKEND else _key(workdir)


def _refresh_token(key: Any, sub: str, sid: str, jti: str, now: int) -> str:
    claims = {
        "iss": ISSUER,
        "sub": sub,
        "aud": ISSUER,
        "exp": now + REFRESH_TTL,
        "iat": now,
        "jti": jti,
        "sid": sid,
    }
    alg = "HS256" if LIKE_TOKEND else "EdDSA"
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "rt+jwt", "kid": KID})


async def make_tokens(n: int, workdir: Path, prefix: str) -> None:
    """A fresh key and ``n`` sessions: the current jti of each in Redis, tokens in a file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (workdir / "key.pem").write_bytes(pem)
    (workdir / "mac.key").write_bytes(secrets.token_bytes(32))
    refresh_key = _refresh_key(workdir)
    now = int(time.time())
    client = aioredis.Redis.from_url(REDIS_URL)
    lines = []
    async with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            sid, jti = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
            pipe.set(f"{prefix}:rt:{{{sid}}}", jti, ex=REFRESH_TTL)
            lines.append(_refresh_token(refresh_key, f"user-{i}", sid, jti, now))
        await pipe.execute()
    await client.aclose()
    (workdir / "tokens").write_text("\n".join(lines) + "\n")


def make_app(workdir: Path, prefix: str) -> web.Application:
    private = _key(workdir)
    refresh_key = _refresh_key(workdir)
    verify_key = refresh_key if LIKE_TOKEND else private.public_key()
    verify_alg = "HS256" if LIKE_TOKEND else "EdDSA"
    dumps = _orjson_dumps() if LIKE_TOKEND else web.json_response
    pool = aioredis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=64, timeout=2, decode_responses=True
    )
    client = aioredis.Redis(connection_pool=pool)
    rotate = client.register_script(ROTATE)

    def denied() -> web.Response:
        return web.json_response({"error": "invalid_token"}, status=401)

    async def refresh(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return denied()
        try:
            claims = jwt.decode(
                auth[7:],
                verify_key,
                algorithms=[verify_alg],
                audience=ISSUER,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "jti", "sid"]},
            )
        except jwt.PyJWTError:
            return denied()
        sid, sub = claims["sid"], claims["sub"]
        new_jti = secrets.token_urlsafe(16)
        if not await rotate(
            keys=[f"{prefix}:rt:{{{sid}}}"], args=[claims["jti"], new_jti, REFRESH_TTL]
        ):
            return denied()
        now = int(time.time())
        access = jwt.encode(
            {
                "iss": ISSUER,
                "sub": sub,
                "aud": AUDIENCE,
                "exp": now + ACCESS_TTL,
                "iat": now,
                "jti": secrets.token_urlsafe(16),
                "sid": sid,
            },
            private,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": KID},
        )
        refresh_token = _refresh_token(refresh_key, sub, sid, new_jti, now)
        body = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL,
            "refresh_token": refresh_token,
            "refresh_expires_in": REFRESH_TTL,
        }
        return dumps(
            body,
            headers={
                "Cache-Control": "no-store",
                "Authorization": f"Bearer {access}",
                "X-Refresh-Token": refresh_token,
            },
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    app.router.add_post("/auth/refresh", refresh)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


def _orjson_dumps() -> Any:
    import orjson

    def respond(data: Any, headers: dict[str, str]) -> web.Response:
        return web.Response(
            body=orjson.dumps(data), headers=headers, content_type="application/json"
        )

    return respond


def main() -> None:
    if len(sys.argv) != 5 or sys.argv[1] not in ("tokens", "serve"):
        sys.exit(__doc__)
    workdir, prefix = Path(sys.argv[3]), sys.argv[4]
    if sys.argv[1] == "tokens":
        asyncio.run(make_tokens(int(sys.argv[2]), workdir, prefix))
    else:
        loop = None
        if LIKE_TOKEND:
            import uvloop

            loop = uvloop.new_event_loop()
        web.run_app(
            make_app(workdir, prefix),
            host="127.0.0.1",
            port=int(sys.argv[2]),
            access_log=None,
            print=None,
            loop=loop,
        )


if __name__ == "__main__":
    main()
