"""Stopping background tasks for good (public: the tokend server uses it too)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks"]


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, recheck: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for`` drops a
    cancellation that lands just as the awaited operation completes (CPython gh-86296,
    fixed in 3.12), and redis-py sends every command through it. A loop around such a
    call then runs on, so a task still running ``recheck`` seconds later is cancelled
    again.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=recheck)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a task that failed on its way out is not news
