"""A bounded LRU of verified access tokens, for TokenVerifier.

A client sends the same access token on every call until it refreshes, so a subscriber
verifies the same signature over and over; the signature check is most of its cost per
request. An entry remembers the claims of one *successfully* verified token, keyed by
the SHA-256 of the exact token string (32 bytes a key, not the token itself), and the
key object that verified it. The verifier still runs every time-dependent check on a
hit, drops entries whose key left the JWKS, and never stores a failure. It may be used
from several threads (a WSGI worker's): each operation holds a lock.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

__all__ = ["VerifiedCache", "VerifiedToken", "token_digest"]


def token_digest(token: str) -> bytes:
    """The cache key of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The claims of a verified token and the key (by kid) its signature was checked with."""

    claims: dict[str, Any]
    kid: str
    key: jwt.PyJWK
    # Only claims holding lists or objects need a deep copy; tokend's are flat.
    flat: bool
    #: ``exp``, and the later of ``iat`` and ``nbf``: what a hit compares with the clock.
    exp: float = 0.0
    not_before: float = 0.0

    def copy_claims(self) -> dict[str, Any]:
        """A copy of the claims that a caller may change without touching the cache."""
        return dict(self.claims) if self.flat else copy.deepcopy(self.claims)


class VerifiedCache:
    """At most ``size`` verified tokens, least recently used evicted first; 0 disables."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("cache_size must be >= 0")
        self.size = size
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> VerifiedToken | None:
        """The entry for ``digest``, now the most recently used; None on a miss."""
        # No lock on this path (every request's): each OrderedDict operation is atomic
        # under the GIL; an entry evicted meanwhile by another thread is simply gone.
        entry = self._entries.get(digest)
        if entry is not None:
            with contextlib.suppress(KeyError):
                self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, claims: dict[str, Any], kid: str, key: jwt.PyJWK) -> None:
        """Remember a token that passed every check (claims are copied in)."""
        if not self.size:
            return
        flat = not any(isinstance(v, dict | list) for v in claims.values())
        stored = dict(claims) if flat else copy.deepcopy(claims)
        not_before = max(claims["iat"], claims.get("nbf", claims["iat"]))
        entry = VerifiedToken(stored, kid, key, flat, claims["exp"], not_before)
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        """Forget one token (expired, or its key changed)."""
        with self._lock:
            self._entries.pop(digest, None)

    def evict_keys(self, kids: Iterable[str]) -> int:
        """Forget every token verified with one of ``kids``; how many were dropped."""
        gone = frozenset(kids)
        if not gone or not self._entries:
            return 0
        with self._lock:
            # list(): one atomic copy, while lock-free gets may reorder the entries
            stale = [d for d, entry in list(self._entries.items()) if entry.kid in gone]
            for digest in stale:
                del self._entries[digest]
            return len(stale)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
