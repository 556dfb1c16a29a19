"""The in-memory deny list a RevocationListener keeps: sessions, users and tokens, and
every token issued before a fence (``all.revoked``: tokend's Redis lost data).

Each entry lasts until its event's ``until`` (the last moment an affected access
token can still be unexpired) plus an optional margin, then is dropped: lazily when
looked up and by ``prune()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .partitions import partition_of

__all__ = ["DenyList"]


class DenyList:
    """Revoked ``sid``s and ``jti``s, and ``sub``s with the time up to which their
    sessions are revoked (and the one session kept, after a password change)."""

    def __init__(self, clock: Callable[[], float], margin: float = 0.0) -> None:
        self._clock = clock
        self.margin = margin
        self.sids: dict[str, float] = {}  # sid → until
        self.jtis: dict[str, float] = {}  # jti → until
        self.subs: dict[str, tuple[float, float, str]] = {}  # sub → (at, until, kept sid)
        #: (at, until) of the last ``all.revoked`` of each partition (None: of all):
        #: tokend fenced a Redis partition that lost data.
        self.fenced: dict[int | None, tuple[float, float]] = {}
        #: The deployment's partition count (the listener sets it from tokend's Redis).
        self.partitions = 1

    def __len__(self) -> int:
        return len(self.sids) + len(self.subs) + len(self.jtis) + len(self.fenced)

    def add(self, kind: str, event: dict[str, Any], at: float, until: float) -> None:
        """Record what an event denies; entries only ever grow (idempotent, order-free)."""
        if until + self.margin < self._clock():
            return  # nothing it denied can still be valid
        sid, sub, jti = event.get("sid"), event.get("sub"), event.get("jti")
        if kind == "session.revoked" and isinstance(sid, str):
            self.sids[sid] = max(until, self.sids.get(sid, until))
        elif kind == "token.revoked" and isinstance(jti, str):
            self.jtis[jti] = max(until, self.jtis.get(jti, until))
        elif kind == "user.revoked" and isinstance(sub, str):
            # sid, when given, is the session that survives (it changed the password).
            keep = sid if isinstance(sid, str) else ""
            old_at, old_until, old_keep = self.subs.get(sub, (at, until, keep))
            # The later revocation decides which session is kept: it denies all the
            # earlier one did but, at most, a session that was still live at its time.
            self.subs[sub] = (
                max(at, old_at),
                max(until, old_until),
                keep if at >= old_at else old_keep,
            )
        elif kind == "all.revoked":
            part = event.get("partition")
            key = part if isinstance(part, int) and not isinstance(part, bool) else None
            old_at, old_until = self.fenced.get(key, (at, until))
            self.fenced[key] = (max(at, old_at), max(until, old_until))
        # session.expired and key.rotated deny nothing.

    def is_revoked(self, claims: dict[str, Any]) -> bool:
        """Whether verified access-token claims are denied."""
        sid, jti, sub = claims.get("sid"), claims.get("jti"), claims.get("sub")
        try:  # the common case, first: nothing about this token is in any table
            if (
                not self.fenced
                and sid not in self.sids
                and jti not in self.jtis
                and sub not in self.subs
            ):
                return False
        except TypeError:  # an unhashable claim: the checks below refuse it properly
            pass
        now = self._clock()
        iat = claims.get("iat")
        if self.fenced and self._fenced(sub, iat, now):
            return True
        if isinstance(sid, str) and self._live(self.sids, sid, now):
            return True
        if isinstance(jti, str) and self._live(self.jtis, jti, now):
            return True
        if isinstance(sub, str) and sub in self.subs:
            at, until, keep = self.subs[sub]
            if until + self.margin < now:
                del self.subs[sub]
                return False
            if keep and sid == keep:
                return False
            # auth_time (when the session's credentials were checked) and `at` are both
            # on tokend's Redis clock: every token of a session authenticated up to the
            # revocation is denied, whichever API process issued it and whatever its
            # clock. A token without auth_time falls back to iat, whole seconds: one of
            # the revocation's own second counts as issued before it.
            auth_time = claims.get("auth_time")
            if isinstance(auth_time, int | float) and not isinstance(auth_time, bool):
                return auth_time <= at
            return isinstance(iat, int | float) and not isinstance(iat, bool) and iat <= at
        return False

    def _fenced(self, sub: Any, iat: Any, now: float) -> bool:
        """Whether a token was issued before a fence of every partition or of its user's."""
        keys: list[int | None] = [None]
        if isinstance(sub, str):
            keys.append(partition_of(sub, self.partitions))
        for key in keys:
            fence = self.fenced.get(key)
            if fence is None:
                continue
            at, until = fence
            if until + self.margin < now:
                del self.fenced[key]
            elif isinstance(iat, int | float) and iat <= at:
                return True
        return False

    def _live(self, table: dict[str, float], key: str, now: float) -> bool:
        until = table.get(key)
        if until is None:
            return False
        if until + self.margin < now:
            del table[key]
            return False
        return True

    def prune(self) -> int:
        """Drop every entry past its ``until``; how many were dropped."""
        cutoff = self._clock() - self.margin
        dropped = 0
        for table in (self.sids, self.jtis):
            gone = [key for key, until in table.items() if until < cutoff]
            for key in gone:
                del table[key]
            dropped += len(gone)
        gone = [key for key, (_, until, _) in self.subs.items() if until < cutoff]
        for key in gone:
            del self.subs[key]
        for part in [k for k, (_, until) in self.fenced.items() if until < cutoff]:
            del self.fenced[part]
            dropped += 1
        return dropped + len(gone)
