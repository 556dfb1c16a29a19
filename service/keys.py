"""Signing keys: generation, sealed storage in SQL, and the in-memory key ring.

Lifecycle of a key (times on the row): created → published in the JWKS at once →
signs access tokens from ``activates_at`` → stops signing at ``retires_at`` (when its
successor activates) → stays in the JWKS until its last access token has expired →
deleted by the rotation worker an hour later. Refresh tokens are not signed with these
keys (see tokens.py), so rotation never touches them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from .crypto import Sealer
from .db import db_errors
from .errors import Conflict
from .models import SigningKeyRow

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# RFC 7638 members that go into a thumbprint, per key type.
_THUMBPRINT_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh private key for the JWS algorithm."""
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported algorithm {alg!r}")


def public_jwk(public: PublicKey, alg: str) -> dict[str, Any]:
    """The RFC 7517 JWK of a public key, with kid (RFC 7638 thumbprint), alg and use."""
    jwk: dict[str, Any]
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    kid = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class SigningKey:
    generation: int
    kid: str
    alg: str
    private: PrivateKey
    public: PublicKey
    jwk: dict[str, Any]
    activates_at: float
    retires_at: float | None
    created_at: float = 0.0


class SqlKeyStore:
    """Keys in SQL; the private half sealed with the key-encryption key."""

    def __init__(self, sessions: async_sessionmaker, sealer: Sealer) -> None:  # type: ignore[type-arg]
        self._sessions = sessions
        self._sealer = sealer

    async def load(self) -> list[SigningKey]:
        """Every stored key, oldest generation first."""
        with db_errors():
            async with self._sessions() as session:
                rows = (
                    await session.scalars(select(SigningKeyRow).order_by(SigningKeyRow.generation))
                ).all()
        return [self._key(row) for row in rows]

    def _key(self, row: SigningKeyRow) -> SigningKey:
        der = self._sealer.open(row.private_sealed, row.kid)
        private = serialization.load_der_private_key(der, password=None)
        assert isinstance(
            private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        )
        return SigningKey(
            generation=row.generation,
            kid=row.kid,
            alg=row.alg,
            private=private,
            public=private.public_key(),
            jwk=json.loads(row.public_jwk),
            activates_at=row.activates_at,
            retires_at=row.retires_at,
            created_at=row.created_at,
        )

    async def create(self, generation: int, alg: str, activates_at: float, now: float) -> bool:
        """Insert key ``generation``; False if another process created it first.

        The predecessor's ``retires_at`` is set in the same transaction.
        """
        private = generate_private_key(alg)
        jwk = public_jwk(private.public_key(), alg)
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        row = SigningKeyRow(
            generation=generation,
            kid=jwk["kid"],
            alg=alg,
            public_jwk=json.dumps(jwk),
            private_sealed=self._sealer.seal(der, jwk["kid"]),
            created_at=now,
            activates_at=activates_at,
            retires_at=None,
        )
        try:
            with db_errors():
                async with self._sessions() as session, session.begin():
                    session.add(row)
                    await session.flush()
                    await session.execute(
                        update(SigningKeyRow)
                        .where(SigningKeyRow.generation == generation - 1)
                        .values(retires_at=activates_at)
                    )
        except Conflict:
            return False
        return True

    async def latest_generation(self) -> int:
        with db_errors():
            async with self._sessions() as session:
                value = await session.scalar(select(func.max(SigningKeyRow.generation)))
        return int(value or 0)

    async def purge(self, retired_before: float) -> int:
        """Delete keys that stopped signing before ``retired_before``; return how many."""
        with db_errors():
            async with self._sessions() as session, session.begin():
                result = await session.execute(
                    delete(SigningKeyRow).where(
                        SigningKeyRow.retires_at.is_not(None),
                        SigningKeyRow.retires_at < retired_before,
                    )
                )
        return int(getattr(result, "rowcount", 0) or 0)


class KeyRing:
    """The keys this process signs and verifies with; reloaded from the store."""

    def __init__(self, keys: Iterable[SigningKey] = (), *, access_ttl: int, leeway: int) -> None:
        self._access_window = access_ttl + leeway
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, SigningKey] = {}
        self.replace(keys)

    def replace(self, keys: Iterable[SigningKey]) -> None:
        ordered = sorted(keys, key=lambda k: k.generation)
        self._keys = ordered
        self._by_kid = {k.kid: k for k in ordered}

    @property
    def keys(self) -> list[SigningKey]:
        return list(self._keys)

    def signing_key(self, now: float) -> SigningKey:
        """The newest key already active at ``now``."""
        for key in reversed(self._keys):
            if key.activates_at <= now:
                return key
        if self._keys:
            # Every key is still pending (clock skew between processes): use the oldest.
            return self._keys[0]
        raise LookupError("no signing key loaded")

    def get(self, kid: str) -> SigningKey | None:
        """The key with this kid, if this process knows it."""
        return self._by_kid.get(kid)

    def jwks(self, now: float) -> dict[str, Any]:
        """Public keys only: pending, active, and retired ones whose tokens may still live."""
        return {
            "keys": [
                dict(k.jwk)
                for k in reversed(self._keys)
                if k.retires_at is None or k.retires_at + self._access_window > now
            ]
        }


async def ensure_signing_key(store: SqlKeyStore, ring: KeyRing, alg: str, now: float) -> None:
    """Load the keys; create the first one if the store is empty (race-free across processes)."""
    keys = await store.load()
    if not keys:
        await store.create(1, alg, activates_at=now, now=now)
        keys = await store.load()
    ring.replace(keys)


async def rotate(
    store: SqlKeyStore, alg: str, now: float, publish_delay: int, after: int | None = None
) -> int | None:
    """Create the key after generation ``after`` (default: the latest), signing after
    ``publish_delay``; the new generation, or None when another process created it first.

    A worker passes the generation its decision was based on, so that two workers that
    both saw generation N due create N+1 once, never N+1 and then N+2.
    """
    generation = (await store.latest_generation() if after is None else after) + 1
    created = await store.create(generation, alg, activates_at=now + publish_delay, now=now)
    return generation if created else None
