"""Limits counted in Redis: failed logins and failed password changes per user and per
client IP, successful logins per user, registrations per IP, social-login flow starts per
IP (each start writes a short-lived state record: unlimited, one client could fill Redis)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .errors import RateLimited
from .keyspace import Keyspace
from .redisconn import redis_errors
from .settings import Settings

# Check and count in one atomic step: counting only after the (slow) password verify
# let any number of concurrent guesses pass the check before the first one was counted.
# KEYS: user counter, IP counter.  ARGV: per_user, per_ip, window.
# Returns 0 when the attempt is counted, else the seconds until the blocking window ends.
_RESERVE = """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local over, wait = false, 1
for i, key in ipairs(KEYS) do
    if tonumber(redis.call('GET', key) or '0') >= limits[i] then
        over = true
        wait = math.max(wait, redis.call('TTL', key))
    end
end
if over then
    return wait
end
for _, key in ipairs(KEYS) do
    redis.call('INCR', key)
    redis.call('EXPIRE', key, ARGV[3], 'NX')
end
return 0
"""

# Give back an attempt (KEYS: the counters to give it back to).
_RELEASE = """
for _, key in ipairs(KEYS) do
    if tonumber(redis.call('GET', key) or '0') > 0 then
        redis.call('DECR', key)
    end
end
return 0
"""


class LoginLimiter:
    """Fixed-window counters of failed logins; over the limit → RateLimited.

    Every attempt counts as a failure from ``check`` on; ``succeeded`` takes it back,
    and so does ``undecided`` when the attempt could not be judged (database down).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        per_user: int,
        per_ip: int,
        window: int,
        name: str = "lf",
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.name = name
        self.keys = Keyspace(prefix)
        self.per_user = per_user
        self.per_ip = per_ip
        self.window = window
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        # On a cluster the two counters live in different slots: one script each.
        self.clustered = isinstance(redis, RedisCluster)

    def _keys(self, username: str, ip: str) -> tuple[str, str]:
        # The username is hashed: arbitrary user input never becomes a raw key name.
        return self.keys.limit_user(self.name, username), self.keys.limit_ip(self.name, ip)

    async def check(self, username: str, ip: str) -> None:
        """Count an attempt against both limits, or raise RateLimited when either is reached."""
        user_key, ip_key = self._keys(username, ip)
        with redis_errors():
            if not self.clustered:
                wait = int(
                    await self._reserve(
                        keys=[user_key, ip_key], args=[self.per_user, self.per_ip, self.window]
                    )
                )
            else:
                # Counted per key in turn; an attempt the IP refuses is given back to
                # the user's counter, so neither counts an attempt that did not happen.
                wait = int(
                    await self._reserve(keys=[user_key], args=[self.per_user, 0, self.window])
                )
                if not wait:
                    wait = int(
                        await self._reserve(keys=[ip_key], args=[self.per_ip, 0, self.window])
                    )
                    if wait:
                        await self._release(keys=[user_key])
        if wait:
            raise RateLimited(wait)

    async def failed(self, username: str, ip: str) -> None:
        """A failed login: already counted by ``check``, which must precede it."""

    async def succeeded(self, username: str, ip: str | None = None) -> None:
        """A successful login clears the username's counter and gives back the IP's attempt."""
        user_key, ip_key = self._keys(username, ip or "")
        with redis_errors():
            await self.redis.delete(user_key)
            if ip is not None:
                await self._release(keys=[ip_key])

    async def undecided(self, username: str, ip: str) -> None:
        """Give back an attempt that was neither a success nor a failure (an outage)."""
        with redis_errors():
            if self.clustered:
                for key in self._keys(username, ip):
                    await self._release(keys=[key])
            else:
                await self._release(keys=list(self._keys(username, ip)))


class CountLimit:
    """A fixed-window count of events per key (successful logins per user, registrations
    and social-login flow starts per IP): over ``limit`` in ``window`` seconds →
    RateLimited, with ``description`` when given."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        name: str,
        limit: int,
        window: int,
        description: str | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.name = name
        self.keys = Keyspace(prefix)
        self.limit = limit
        self.window = window
        self.description = description
        self._reserve = redis.register_script(_RESERVE)

    async def take(self, key: str) -> None:
        """Count one event for ``key``, or raise RateLimited when the window is full."""
        with redis_errors():
            wait = int(
                await self._reserve(
                    keys=[self.keys.limit_count(self.name, key)],
                    args=[self.limit, 0, self.window],
                )
            )
        if wait:
            raise RateLimited(wait, self.description)


@dataclass(frozen=True)
class AuthLimits:
    """Every limit of the authentication use cases."""

    logins: LoginLimiter  # failed logins per username and per IP
    passwords: LoginLimiter  # wrong current passwords at a password change, per user and IP
    sessions: CountLimit  # successful logins per user
    registrations: CountLimit  # registration attempts per IP

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, settings: Settings) -> AuthLimits:
        window, prefix = settings.login_failure_window, settings.redis_prefix
        return cls(
            logins=LoginLimiter(
                redis,
                prefix=prefix,
                per_user=settings.login_failures_per_user,
                per_ip=settings.login_failures_per_ip,
                window=window,
            ),
            passwords=LoginLimiter(
                redis,
                prefix=prefix,
                per_user=settings.login_failures_per_user,
                per_ip=settings.login_failures_per_ip,
                window=window,
                name="pf",
            ),
            sessions=CountLimit(
                redis, prefix=prefix, name="ls", limit=settings.logins_per_user, window=window
            ),
            registrations=CountLimit(
                redis,
                prefix=prefix,
                name="reg",
                limit=settings.registrations_per_ip,
                window=window,
            ),
        )
