"""Refresh load for fault and topology tests: every user refreshing in a loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any


class RefreshLoad:
    """Every user refreshing in a loop, counting what came back."""

    def __init__(self, client: Any, tokens: list[str]) -> None:
        self.client = client
        self.tokens = tokens
        self.statuses: Counter[int] = Counter()
        #: Per user: the 503s it got.
        self.unavailable: Counter[int] = Counter()
        self.without_retry_after = 0
        self.unexpected: list[tuple[int, int, str]] = []
        self.killed_at: float | None = None
        #: Per user: seconds from the kill to the user's first 200 after it.
        self.back: dict[int, float] = {}
        self.stop = asyncio.Event()

    async def user(self, i: int) -> None:
        while not self.stop.is_set():
            resp = await self.client.post("/auth/refresh", json={"refresh_token": self.tokens[i]})
            body = await resp.json()
            self.statuses[resp.status] += 1
            if resp.status == 200:
                self.tokens[i] = body["refresh_token"]
                if self.killed_at is not None and i not in self.back:
                    self.back[i] = time.monotonic() - self.killed_at
            elif resp.status == 503:
                self.unavailable[i] += 1
                if "Retry-After" not in resp.headers:
                    self.without_retry_after += 1
                await asyncio.sleep(0.05)
            else:
                self.unexpected.append((i, resp.status, str(body)))
                return  # a user refused a refresh is logged out: stop hammering
            await asyncio.sleep(0.01)
