"""Every Redis key and channel name tokend uses, built in one place.

``P`` is the prefix (``TOKEND_REDIS_PREFIX``); one session's keys share the ``{sid}``
hash slot.

    P:s:{sid}      session hash (see service/sessions.py for its fields)
    P:ds:{sid}     the session's access tokens are denied
    P:u:<uid>      zset of the user's sids scored by absolute deadline
    P:du:<uid>     the user's revocation mark "<at>[ <kept sid>]"
    P:dj:<jti>     this access token is denied
    P:exp:<n>      expiry index shard n (of EXPIRY_SHARDS): zset of "sid:uid" by deadline
    P:events       stream of revocation events;  P:revocations  channel of the same
    P:epoch, P:gen, P:fence   the data's position and the last fence (service/fence.py)
    P:<name>:u:<digest>, P:<name>:ip:<ip>, P:<name>:<digest>   limiter counters
    P:oidc:state|code|ticket|link:<sha256>   social-login flow records
    P:oidc:starts:<digest>   social-login flow starts per IP
    P:workers:heartbeat      hash: host:pid → last beat

The subscriber library builds the names it reads (events, channel, epoch, gen, fence)
in ``tokend_client/_keys.py``; a test checks that both agree.

Every script receives the keys it touches through ``KEYS``; ``script_head`` is the part
every script of service/lua/ starts its KEYS with (see common.lua).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# The expiry index is sharded so no single sorted set is hot.
EXPIRY_SHARDS = 16


def expiry_shard(sid: str) -> int:
    """The expiry shard of a session: the sum of its id's bytes modulo EXPIRY_SHARDS."""
    return sum(sid.encode()) % EXPIRY_SHARDS


def _digest(text: str, size: int = 64) -> str:
    # Hashed: user input (usernames, IPs, flow secrets) never becomes a raw key name.
    return hashlib.sha256(text.encode()).hexdigest()[:size]


@dataclass(frozen=True)
class Keyspace:
    """The key and channel names under one prefix."""

    prefix: str

    # sessions
    def session(self, sid: str) -> str:
        return f"{self.prefix}:s:{{{sid}}}"

    def deny_session(self, sid: str) -> str:
        return f"{self.prefix}:ds:{{{sid}}}"

    def user_index(self, uid: str) -> str:
        return f"{self.prefix}:u:{uid}"

    def user_mark(self, uid: str) -> str:
        return f"{self.prefix}:du:{uid}"

    def deny_token(self, jti: str) -> str:
        return f"{self.prefix}:dj:{jti}"

    def expiry(self, shard: int) -> str:
        return f"{self.prefix}:exp:{shard}"

    def expiry_of(self, sid: str) -> str:
        """The expiry shard key a session is indexed in."""
        return self.expiry(expiry_shard(sid))

    # events and position
    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:revocations"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def gen(self) -> str:
        return f"{self.prefix}:gen"

    @property
    def fence(self) -> str:
        return f"{self.prefix}:fence"

    def script_head(self) -> list[str]:
        """The first KEYS of every tokend script: epoch, gen, events stream, channel."""
        return [self.epoch, self.gen, self.events, self.channel]

    # limiters (service/ratelimit.py; social-login starts count as "oidc:starts")
    def limit_user(self, name: str, username: str) -> str:
        return f"{self.prefix}:{name}:u:{_digest(username, 32)}"

    def limit_ip(self, name: str, ip: str) -> str:
        return f"{self.prefix}:{name}:ip:{ip}"

    def limit_count(self, name: str, key: str) -> str:
        return f"{self.prefix}:{name}:{_digest(key, 32)}"

    # social-login flow records (service/oidc_flow.py)
    def oidc_state(self, state: str) -> str:
        return f"{self.prefix}:oidc:state:{_digest(state)}"

    def oidc_code(self, code: str) -> str:
        return f"{self.prefix}:oidc:code:{_digest(code)}"

    def oidc_ticket(self, ticket: str) -> str:
        return f"{self.prefix}:oidc:ticket:{_digest(ticket)}"

    def oidc_link(self, code: str) -> str:
        return f"{self.prefix}:oidc:link:{_digest(code)}"

    # workers
    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}:workers:heartbeat"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key under the prefix."""
        return f"{self.prefix}:*"

    def pattern_under(self, *parts: str) -> str:
        """A SCAN pattern matching the keys of one family (``"lf"``; ``"oidc", "state"``)."""
        return ":".join([self.prefix, *parts, "*"])
