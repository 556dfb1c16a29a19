"""Background tasks stop for good even when a cancellation is dropped on the way."""

from __future__ import annotations

import asyncio

from tokend_client.tasks import stop_tasks


async def test_a_task_that_drops_one_cancellation_is_still_stopped() -> None:
    # What asyncio.wait_for does on Python 3.11 when the cancellation lands as the awaited
    # operation completes (redis-py sends every command through it): the caller gets the
    # result instead of CancelledError, and a loop around it runs on.
    dropped = []

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if not dropped:
                    dropped.append(True)
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.02)
    async with asyncio.timeout(5):
        await stop_tasks([task], recheck=0.1)
    assert dropped and task.cancelled()


async def test_a_task_that_failed_is_not_reported_again() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fail())
    running = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await stop_tasks([failed, running])
    assert running.cancelled() and isinstance(failed.exception(), RuntimeError)
