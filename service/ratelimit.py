"""Failed-login limits per username and per client IP, counted in Redis."""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from .errors import RateLimited
from .redisconn import redis_errors


class LoginLimiter:
    """Fixed-window counters of failed logins; over the limit → RateLimited."""

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, per_user: int, per_ip: int, window: int
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_user = per_user
        self.per_ip = per_ip
        self.window = window

    def _keys(self, username: str, ip: str) -> tuple[str, str]:
        # Hash the username: arbitrary user input never becomes a raw key name.
        digest = hashlib.sha256(username.encode()).hexdigest()[:32]
        return f"{self.prefix}:lf:u:{digest}", f"{self.prefix}:lf:ip:{ip}"

    async def check(self, username: str, ip: str) -> None:
        """Raise RateLimited when either counter is at its limit."""
        user_key, ip_key = self._keys(username, ip)
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(user_key)
                pipe.get(ip_key)
                pipe.ttl(user_key)
                pipe.ttl(ip_key)
                user_n, ip_n, user_ttl, ip_ttl = await pipe.execute()
        waits = []
        if user_n is not None and int(user_n) >= self.per_user:
            waits.append(user_ttl)
        if ip_n is not None and int(ip_n) >= self.per_ip:
            waits.append(ip_ttl)
        if waits:
            raise RateLimited(max(max(waits), 1))

    async def failed(self, username: str, ip: str) -> None:
        """Count one failed login against both the username and the IP."""
        user_key, ip_key = self._keys(username, ip)
        with redis_errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in (user_key, ip_key):
                    pipe.incr(key)
                    pipe.expire(key, self.window, nx=True)
                await pipe.execute()

    async def succeeded(self, username: str) -> None:
        """A successful login clears the username's counter (not the IP's)."""
        user_key, _ = self._keys(username, "")
        with redis_errors():
            await self.redis.delete(user_key)
