"""Fixtures of the browser tests: ``make_stack`` starts tokend and the example service as
real processes on the test's Redis prefix and a migrated SQLite database of their own."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.migrate import upgrade_async
from tests.browser.stack import CHROMIUM, HERE, Stack, close_stack, node_missing, start_stack
from tests.conftest import open_redis
from tests.support.redisdata import wipe

MakeStack = Callable[..., Awaitable[Stack]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the system Chromium (tests/browser, Node + playwright-core)"
    )


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Node.js, the locked npm packages and /usr/bin/chromium (scripts/test-setup.sh
    installs the last two; without Node.js it says the browser tests are skipped)."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    assert (HERE / "node_modules" / "playwright-core").is_dir(), (
        "tests/browser/node_modules missing: run scripts/test-setup.sh (npm ci)"
    )
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run scripts/test-setup.sh"


@pytest.fixture
async def make_stack(
    browser_ready: None,
    tmp_path: Path,
    redis_env: dict[str, str],
    redis_prefix: str,
    redis_target: Any,
) -> AsyncIterator[MakeStack]:
    """``await make_stack(cookie=..., pages=1, foreign=(), **env)``: the first on the
    test's Redis prefix, each further one on a prefix of its own (wiped afterwards); each
    with a database of its own."""
    stacks: list[Stack] = []
    prefixes: list[str] = []
    numbers = itertools.count()
    migrating = asyncio.Lock()  # alembic's context is global: one migration at a time

    async def make(*, cookie: bool, **options: Any) -> Stack:
        n = next(numbers)  # before any await: two may start at once
        prefix = redis_prefix if n == 0 else f"{redis_prefix}-{n}"
        if n:
            prefixes.append(prefix)
        database_url = f"sqlite+aiosqlite:///{tmp_path / f'tokend-{n}.db'}"
        async with migrating:
            await upgrade_async(database_url)
        stack = await start_stack(
            tmp_path, f"stack{n}", redis_env, prefix, database_url, cookie=cookie, **options
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await close_stack(stack)
    if prefixes:
        client = await open_redis(redis_target)
        try:
            for prefix in prefixes:
                await wipe(client, prefix)
        finally:
            await client.aclose()
