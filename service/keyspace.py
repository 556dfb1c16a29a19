"""Every Redis key and channel name tokend uses, built in one place.

``P`` is the prefix (``TOKEND_REDIS_PREFIX``). The data is split into partitions
(``TOKEND_REDIS_PARTITIONS``, fixed when a deployment is created; ``P:partitions``
records it): a user lives in partition ``crc32(uid) % n``, and every key of the user
and of the partition's event log shares the partition's hash tag ``T``
(tokend_client/partitions.py), so every script runs in one Redis Cluster slot and a user's
logout-all stays one atomic script.

    P:{T}:s:<sid>     session hash (see service/sessions.py for its fields)
    P:{T}:ds:<sid>    the session's access tokens are denied
    P:{T}:u:<uid>     zset of the user's sids scored by absolute deadline
    P:{T}:du:<uid>    the user's revocation mark "<at>[ <kept sid>]"
    P:{T}:dj:<jti>    this access token (of a user of the partition) is denied
    P:{T}:exp         the partition's expiry index: zset of "sid:uid" by deadline
    P:{T}:events      stream of the partition's revocation events; a pub/sub channel of
                      the same name wakes subscribers up
    P:{T}:epoch, P:{T}:gen, P:{T}:fence   the partition's position and last fence
    P:partitions      the partition count
    P:retention       seconds the event streams must keep, advertised by a deliverer
    P:<name>:u:<digest>, P:<name>:ip:<ip>, P:<name>:<digest>   limiter counters
    P:oidc:state|code|ticket|link:<sha256>   social-login flow records
    P:oidc:starts:<digest>   social-login flow starts per IP
    P:oidc:bcl:sid|sub:<digest>   back-channel logout: hash tokend sid → uid of the
                      sessions from one provider session / provider account
    P:oidc:bcl:jti|ended:<digest>   seen logout-token jtis; provider sessions just ended
    P:dpop:jti:<digest>      a DPoP proof (key thumbprint, jti) seen, for the proof window
    P:workers:heartbeat      hash: host:pid → last beat

The subscriber library builds the names it reads (the layout, and per partition the
stream, epoch and gen) with the same functions (tokend_client/partitions.py).

Every script receives the keys it touches through ``KEYS``; ``Partition.head`` is the
part every script of service/lua/ starts its KEYS with (see common.lua).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tokend_client.partitions import PartitionKeys, partition_of, partition_tags

DEFAULT_PARTITIONS = 16


def _digest(text: str, size: int = 64) -> str:
    # Hashed: user input (usernames, IPs, flow secrets) never becomes a raw key name.
    return hashlib.sha256(text.encode()).hexdigest()[:size]


@dataclass(frozen=True)
class Partition(PartitionKeys):
    """The keys of one partition: its users' sessions and its event log."""

    def session(self, sid: str) -> str:
        return self.key(f"s:{sid}")

    def deny_session(self, sid: str) -> str:
        return self.key(f"ds:{sid}")

    def user_index(self, uid: str) -> str:
        return self.key(f"u:{uid}")

    def user_mark(self, uid: str) -> str:
        return self.key(f"du:{uid}")

    def deny_token(self, jti: str) -> str:
        return self.key(f"dj:{jti}")

    @property
    def expiry(self) -> str:
        return self.key("exp")

    @property
    def head(self) -> list[str]:
        """The first KEYS of every tokend script: epoch, gen, events stream, fence."""
        return [self.epoch, self.gen, self.events, self.fence]

    # signed webhooks (workers/webhooks.py): per endpoint, in the partition's slot
    def webhook_position(self, endpoint: str) -> str:
        """Hash: ``id`` (last stream entry delivered or given up), ``failed`` (failed
        attempts), ``error`` (the last), ``lost``/``lost_at`` (events trimmed unsent)."""
        return self.key(f"wh:{endpoint}:pos")

    def webhook_lease(self, endpoint: str) -> str:
        """The one deliverer of this (endpoint, partition): its token, with a TTL."""
        return self.key(f"wh:{endpoint}:lease")

    def webhook_dead(self, endpoint: str) -> str:
        """Stream of dead letters: the entries that ran out of attempts."""
        return self.key(f"wh:{endpoint}:dead")


@dataclass(frozen=True)
class Keyspace:
    """The key and channel names under one prefix."""

    prefix: str
    partitions: int = DEFAULT_PARTITIONS
    _parts: tuple[Partition, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tags = partition_tags(self.partitions)
        parts = tuple(Partition(self.prefix, i, tag) for i, tag in enumerate(tags))
        object.__setattr__(self, "_parts", parts)

    def of(self, uid: str) -> Partition:
        """The partition user ``uid`` lives in."""
        return self._parts[partition_of(uid, self.partitions)]

    def partition(self, index: int) -> Partition:
        return self._parts[index]

    @property
    def all(self) -> tuple[Partition, ...]:
        return self._parts

    @property
    def layout(self) -> str:
        return f"{self.prefix}:partitions"

    @property
    def retention(self) -> str:
        """The stream retention a deliverer needs (service/retention.py)."""
        return f"{self.prefix}:retention"

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

    # back-channel logout (service/backchannel.py); one provider's names, hashed
    def oidc_bcl_sid(self, provider: str, sid: str) -> str:
        return f"{self.prefix}:oidc:bcl:sid:{_digest(provider + chr(0) + sid)}"

    def oidc_bcl_sub(self, provider: str, sub: str) -> str:
        return f"{self.prefix}:oidc:bcl:sub:{_digest(provider + chr(0) + sub)}"

    def oidc_bcl_jti(self, provider: str, jti: str) -> str:
        return f"{self.prefix}:oidc:bcl:jti:{_digest(provider + chr(0) + jti)}"

    def oidc_bcl_ended(self, provider: str, sid: str) -> str:
        return f"{self.prefix}:oidc:bcl:ended:{_digest(provider + chr(0) + sid)}"

    # DPoP proofs seen (service/dpop.py): one key per (key thumbprint, jti), hashed
    def dpop_jti(self, jkt: str, jti: str) -> str:
        return f"{self.prefix}:dpop:jti:{_digest(jkt + chr(0) + jti)}"

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
