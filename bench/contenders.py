"""The refresh contenders: each starts its server with its own tokens and names a wrk run.

Every contender is one process on 127.0.0.1 (gunicorn: one sync worker), started fresh
for each round in a temporary directory, with its own SQLite file or Redis prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    GUNICORN,
    HERE,
    NO_LOGIN_LIMITS,
    PYTHON,
    ROOT,
    cleanup_redis_prefix,
    free_port,
    make_sessions,
    new_prefix,
    serve,
    tokend_server,
    workdir,
    write_lines,
)

REFRESH_LUA = str(HERE / "refresh.lua")
REQUEST_LUA = str(HERE / "request.lua")


@dataclass
class WrkTarget:
    url: str
    script: str
    env: dict[str, str]


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    start: Callable[[int], ContextManager[WrkTarget]]  # argument: how many sessions


def _gunicorn(app: str, port: int) -> list[str]:
    return [
        GUNICORN,
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--pythonpath",
        str(ROOT),
        "--log-level",
        "warning",
        app,
    ]


def _setup(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


@contextlib.contextmanager
def tokend(sessions: int) -> Iterator[WrkTarget]:
    with tokend_server(NO_LOGIN_LIMITS) as server, workdir("tokens") as wd:
        bodies = asyncio.run(make_sessions(server.url, sessions))
        tokens = write_lines(wd / "tokens", [b["refresh_token"] for b in bodies])
        yield WrkTarget(server.url + "/auth/refresh", REFRESH_LUA, {"TOKEN_FILE": str(tokens)})


def _simplejwt(rotate: bool) -> Callable[[int], ContextManager[WrkTarget]]:
    @contextlib.contextmanager
    def start(sessions: int) -> Iterator[WrkTarget]:
        with workdir("simplejwt") as wd:
            env = {
                "BENCH_DB": str(wd / "db.sqlite3"),
                "SIMPLEJWT_ROTATE": "1" if rotate else "0",
                "PYTHONPATH": str(ROOT),
            }
            tokens = wd / "tokens"
            _setup(
                [PYTHON, "-m", "bench.peers.simplejwt_app", "setup", str(sessions), str(tokens)],
                wd,
                {**_environ(), **env},
            )
            port = free_port()
            with serve(
                _gunicorn("bench.peers.simplejwt_app:application", port), port=port, cwd=wd, env=env
            ):
                yield WrkTarget(
                    f"http://127.0.0.1:{port}/api/token/refresh/",
                    REFRESH_LUA,
                    {
                        "TOKEN_FILE": str(tokens),
                        "REFRESH_PATH": "/api/token/refresh/",
                        "TOKEN_IN": "json:refresh",
                        "NEXT_TOKEN": "body:refresh" if rotate else "reuse",
                    },
                )

    return start


@contextlib.contextmanager
def flask(sessions: int) -> Iterator[WrkTarget]:
    prefix = new_prefix("flask")
    with workdir("flask") as wd:
        env = {"FLASK_REDIS_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
        tokens = wd / "tokens"
        _setup(
            [PYTHON, "-m", "bench.peers.flask_app", "tokens", str(sessions), str(tokens)],
            wd,
            {**_environ(), **env},
        )
        port = free_port()
        try:
            with serve(_gunicorn("bench.peers.flask_app:app", port), port=port, cwd=wd, env=env):
                yield WrkTarget(
                    f"http://127.0.0.1:{port}/refresh",
                    REFRESH_LUA,
                    {"TOKEN_FILE": str(tokens), "REFRESH_PATH": "/refresh", "NEXT_TOKEN": "reuse"},
                )
        finally:
            cleanup_redis_prefix(prefix)


def _minimal(like_tokend: bool) -> Callable[[int], ContextManager[WrkTarget]]:
    @contextlib.contextmanager
    def start(sessions: int) -> Iterator[WrkTarget]:
        prefix = new_prefix("minimal")
        script = str(HERE / "minimal_refresh.py")
        env = {"MINIMAL_LIKE_TOKEND": "1" if like_tokend else "0"}
        with workdir("minimal") as wd:
            try:
                _setup(
                    [PYTHON, script, "tokens", str(sessions), str(wd), prefix],
                    wd,
                    {**_environ(), **env},
                )
                port = free_port()
                with serve(
                    [PYTHON, script, "serve", str(port), str(wd), prefix],
                    port=port,
                    cwd=wd,
                    env=env,
                ):
                    yield WrkTarget(
                        f"http://127.0.0.1:{port}/auth/refresh",
                        REFRESH_LUA,
                        {"TOKEN_FILE": str(wd / "tokens")},
                    )
            finally:
                cleanup_redis_prefix(prefix)

    return start


@contextlib.contextmanager
def bare(sessions: int) -> Iterator[WrkTarget]:
    with workdir("bare") as wd:
        port = free_port()
        with serve([PYTHON, str(HERE / "bare_app.py"), str(port)], port=port, cwd=wd):
            yield WrkTarget(
                f"http://127.0.0.1:{port}/auth/refresh", REQUEST_LUA, {"METHOD": "POST"}
            )


def _environ() -> dict[str, str]:
    return dict(os.environ)


TOKEND = Contender(
    "tokend", "tokend `/auth/refresh` (rotation, EdDSA access token, events)", tokend
)
SIMPLEJWT_ROTATE = Contender(
    "simplejwt-rotate",
    "simplejwt `TokenRefreshView`, rotation + blacklist (HS256, SQLite)",
    _simplejwt(rotate=True),
)
SIMPLEJWT_PLAIN = Contender(
    "simplejwt-plain",
    "simplejwt `TokenRefreshView`, rotation off (HS256, blacklist check)",
    _simplejwt(rotate=False),
)
FLASK = Contender(
    "flask", "flask-jwt-extended `/refresh`, Redis blocklist, no rotation (HS256)", flask
)
MINIMAL = Contender(
    "minimal",
    "minimal aiohttp refresh (ceiling: EdDSA verify + EVALSHA + 2 EdDSA signs)",
    _minimal(like_tokend=False),
)
MINIMAL_LIKE = Contender(
    "minimal-like",
    "minimal, tokend's choices (HS256 refresh MAC, EdDSA access, uvloop, orjson)",
    _minimal(like_tokend=True),
)
BARE = Contender("bare", "bare aiohttp JSON (framework ceiling)", bare)

ALL = (TOKEND, SIMPLEJWT_ROTATE, SIMPLEJWT_PLAIN, FLASK, MINIMAL, MINIMAL_LIKE, BARE)
