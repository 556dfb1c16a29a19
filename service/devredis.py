"""A private redis-server for `tokend dev` when nothing answers at the configured URL."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from .errors import ConfigError

HOW_TO_GET_REDIS = (
    "no Redis answers at {url} and no redis-server is on the PATH: install Redis "
    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
    "or set TOKEND_REDIS_URL"
)


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_for_dev(url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: ``url`` itself, or a private server stopped on exit."""
    if answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(HOW_TO_GET_REDIS.format(url=url))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tokend-redis-") as workdir:
        proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        private = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while not answers(private):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"TOKEND_REDIS_URL: could not start redis-server on {port}")
                time.sleep(0.05)
            yield private
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
