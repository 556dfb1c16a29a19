"""A fixed-window counter per client IP for starts of social-login flows.

Each start of ``GET /auth/oidc/{provider}/login`` (unauthenticated) or
``POST /auth/oidc/{provider}/link`` writes a short-lived record to Redis; without a
limit one client could fill Redis with them. Same counting as service/ratelimit.py:
INCR and EXPIRE NX in one atomic step, so the window starts at the first start.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .errors import RateLimited
from .keyspace import Keyspace
from .redisconn import redis_errors

# KEYS: the IP's counter.  ARGV: limit, window.
# Returns 0 when the start is allowed, else the seconds until the window ends.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2], 'NX')
if n > tonumber(ARGV[1]) then
    return math.max(1, redis.call('TTL', KEYS[1]))
end
return 0
"""


class FlowStartLimiter:
    """At most ``per_ip`` flow starts per client IP every ``window`` seconds."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, per_ip: int, window: int) -> None:
        self.prefix = prefix
        self.per_ip = per_ip
        self.window = window
        self._count = redis.register_script(_COUNT)

    def key(self, ip: str) -> str:
        # Hashed: the IP text (possibly from X-Forwarded-For) never becomes a raw key name.
        return Keyspace(self.prefix).oidc_starts(ip)

    async def check(self, ip: str) -> None:
        """Count a start, or raise RateLimited (429 with Retry-After) over the limit."""
        with redis_errors():
            wait = int(await self._count(keys=[self.key(ip)], args=[self.per_ip, self.window]))
        if wait:
            raise RateLimited(wait, "too many social-login starts from this address")
