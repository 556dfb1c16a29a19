"""What a browser scenario runs against: a real ``tokend serve`` process and the example
protected service (examples/protected_service.py, its CORS on), each on a free port, and the
Node scenario script (tests/browser/*.mjs) that drives Chromium.

    stack = await make_stack(cookie=True, pages=2)   # fixture in tests/browser/conftest.py
    stack.base, stack.api, stack.pages[0]            # tokend, example service, page origins
    await stack.register("alice")
    result = await run_scenario("tabs.mjs", stack.config(user="alice"), timeout=150)
    samples = await stack.metrics()                  # tokend's /metrics, parsed

A scenario prints one line ``{"result": {...}}`` on stdout; anything else it prints goes to
the assertion message when it fails or times out (the whole Node process group is killed).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from service.devredis import free_port
from tests.support import PASSWORD
from tests.support.node import run_node
from tests.support.services import SERVICES, ExampleProcess, ServiceSpec

HERE = Path(__file__).resolve().parent
TOKEND_SPEC = ServiceSpec("tokend", HERE / "serve_tokend.py", 1, False)
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Stack:
    """One tokend, the example service that trusts it, and the origins of the test's own
    pages (``pages``: allowed at tokend and at the example service; ``foreign``: not)."""

    tokend: ExampleProcess
    example: ExampleProcess
    cookie: bool
    pages: list[str]
    foreign: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.tokend.port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.example.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        """What a scenario script gets as its argument (JSON)."""
        return {
            "tokend": self.base,
            "api": self.api,
            "cookie": self.cookie,
            "pages": self.pages,
            "foreign": self.foreign,
            "password": PASSWORD,
            "chromium": CHROMIUM,
            **extra,
        }

    async def register(self, username: str) -> None:
        body = {"username": username, "password": PASSWORD}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base}/auth/register", json=body) as resp,
        ):
            assert resp.status == 201, await resp.text()

    async def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """tokend's /metrics: sample name → {sorted labels → value}."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base}/metrics") as resp,
        ):
            assert resp.status == 200
            text = await resp.text()
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def logs(self) -> str:
        return f"{self.tokend.log()}\n{self.example.log()}"


def tokend_env(
    redis_env: dict[str, str], prefix: str, database_url: str, **env: str
) -> dict[str, str]:
    """The environment of a tokend process: the test's Redis, prefix and database, the
    suite's key-encryption key, fast argon2, and ``env``."""
    from tests.support.settings import FAST_ARGON2, TEST_KEK

    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    return {
        **base,
        **redis_env,
        "TOKEND_REDIS_PREFIX": prefix,
        "TOKEND_DATABASE_URL": database_url,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        "TOKEND_REGISTRATIONS_PER_IP": "10000",
        "PYTHONUNBUFFERED": "1",
        **FAST_ARGON2,
        **env,
    }


async def start_stack(
    tmp_path: Path,
    name: str,
    redis_env: dict[str, str],
    prefix: str,
    database_url: str,
    *,
    cookie: bool,
    pages: int = 1,
    foreign: tuple[str, ...] = (),
    **env: str,
) -> Stack:
    """Start tokend (issuer: its own URL; the page origins allowed) and the example
    service (CORS for the same origins). ``foreign`` are hosts (``localhost``,
    ``127.0.0.1``) of page origins on free ports that neither allows."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    origins = [f"http://127.0.0.1:{free_port()}" for _ in range(pages)]
    others = [f"http://{host}:{free_port()}" for host in foreign]
    tokend = ExampleProcess(
        TOKEND_SPEC,
        tokend_env(
            redis_env,
            prefix,
            database_url,
            TOKEND_ISSUER=base,
            TOKEND_REFRESH_COOKIE="true" if cookie else "false",
            TOKEND_ALLOWED_ORIGINS=",".join(origins),
            **env,
        ),
        tmp_path / f"{name}-tokend.log",
        port=port,
    )
    example = ExampleProcess(
        SERVICES["aiohttp"],
        {
            **os.environ,
            **redis_env,
            "PYTHONUNBUFFERED": "1",
            "TOKEND_REDIS_PREFIX": prefix,
            "TOKEND_ISSUER": base,
            "TOKEND_JWKS_URL": f"{base}/.well-known/jwks.json",
            "CORS_ORIGINS": ",".join([base, *origins]),
        },
        tmp_path / f"{name}-example.log",
    )
    stack = Stack(tokend, example, cookie, origins, others)
    try:
        await tokend.start()
        await example.start()
    except BaseException:
        await close_stack(stack)
        raise
    return stack


async def close_stack(stack: Stack) -> None:
    for process in (stack.example, stack.tokend):
        await process.close()


def node_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if shutil.which("node") is None:
        return "Node.js is not installed: browser tests not run"
    return None


async def run_scenario(script: str, config: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``node tests/browser/<script> <config JSON>``; its ``{"result": ...}`` line
    (``tests.support.node.run_node``: a failure, no result line or a timeout fails)."""
    return await run_node(HERE / script, config, timeout=timeout)
