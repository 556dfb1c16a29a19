"""DPoP at tokend (RFC 9449; docs/dpop.md): the proof checks of token requests and
protected resources, the replay cache in Redis and the server nonces.

Every check of a proof itself is ``tokend_client.dpop.verify_proof`` (the one protocol
module tokend and its resource servers share); this module adds what only a server with
shared state can do:

- replay: a proof's (key thumbprint, ``jti``) is recorded with ``SET NX PX`` for as long
  as its ``iat`` keeps it acceptable, so a second use anywhere in the deployment fails;
- nonces (``TOKEND_DPOP_NONCE``): stateless, an HMAC of the current time window under a
  key derived from the key-encryption key (every process computes the same ones); the
  current and the previous window's nonce are accepted, so a nonce lives one to two
  windows and needs no storage.

The errors are the token endpoints' (400 ``invalid_dpop_proof`` / ``use_dpop_nonce``) or,
with ``resource=True``, a protected resource's (401, with the DPoP challenge).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tokend_client.dpop import USE_DPOP_NONCE, DPoPError, Proof, verify_proof

from .clock import Clock
from .errors import InvalidDPoPProof, InvalidResourceProof, ResourceNonceRequired, UseDPoPNonce
from .keyspace import Keyspace
from .redisconn import redis_errors

#: A proof is accepted from ``iat`` on for this long (and this far ahead of our clock).
PROOF_MAX_AGE = 300
PROOF_FUTURE = 5
#: A nonce's time window: each nonce is accepted in its window and the next one.
NONCE_WINDOW = 300


def derive_nonce_key(kek: bytes) -> bytes:
    """The DPoP nonce MAC key: HKDF-SHA256 of the key-encryption key."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tokend dpop nonce v1"
    ).derive(kek)


class Nonces:
    """Stateless rotating nonces: base64url(HMAC-SHA256(key, window number))[:22]."""

    def __init__(self, key: bytes, window: int = NONCE_WINDOW) -> None:
        self._key = key
        self.window = window

    def _of(self, window: int) -> str:
        mac = hmac.new(self._key, f"dpop-nonce:{window}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")

    def current(self, now: float) -> str:
        """The nonce to hand out at ``now``."""
        return self._of(int(now // self.window))

    def accepts(self, value: str | None, now: float) -> bool:
        """Whether ``value`` is the current or the previous window's nonce."""
        if not value or len(value) > 64:
            return False
        window = int(now // self.window)
        given = value.encode("utf-8", "replace")
        return any(
            hmac.compare_digest(given, self._of(w).encode("ascii")) for w in (window, window - 1)
        )


class DPoPServer:
    """Checks the proofs tokend receives: verify_proof, the nonce, the replay cache."""

    def __init__(
        self, *, redis: Any, keys: Keyspace, clock: Clock, nonces: Nonces | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.nonces = nonces

    def nonce(self) -> str | None:
        """The nonce answers carry (the ``DPoP-Nonce`` header), None when nonces are off."""
        return None if self.nonces is None else self.nonces.current(self.clock())

    async def check(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        resource: bool = False,
    ) -> str:
        """The key thumbprint of a valid, fresh, first-seen proof for this request."""
        now = self.clock()
        nonces = self.nonces
        try:
            checked = verify_proof(
                proof,
                method=method,
                url=url,
                now=now,
                access_token=access_token,
                nonce=None if nonces is None else (lambda value: nonces.accepts(value, now)),
                max_age=PROOF_MAX_AGE,
                future=PROOF_FUTURE,
            )
        except DPoPError as exc:
            raise _refusal(str(exc), exc.code, resource) from None
        if await self._seen(checked, now):
            raise _refusal("the DPoP proof was used before (its jti is spent)", "", resource)
        return checked.jkt

    async def _seen(self, proof: Proof, now: float) -> bool:
        """Record the proof; True when it was recorded before (a replay)."""
        until = proof.iat + PROOF_MAX_AGE + 1
        ttl_ms = max(1000, int((until - now) * 1000))
        with redis_errors():
            fresh = await self.redis.set(
                self.keys.dpop_jti(proof.jkt, proof.jti), "1", nx=True, px=ttl_ms
            )
        return not fresh


def _refusal(description: str, code: str, resource: bool) -> Exception:
    nonce = code == USE_DPOP_NONCE
    if resource:
        return (ResourceNonceRequired if nonce else InvalidResourceProof)(description)
    return (UseDPoPNonce if nonce else InvalidDPoPProof)(description)
