"""DPoP (RFC 9449): the one implementation of proofs, for tokend and every resource server.

The server side checks a proof (``verify_proof``: every check of RFC 9449 section 4.3 but
replay, which ``ReplayCache`` answers: "seen this (jkt, jti) before?"); the client side
makes proofs (``DPoPKey``). Built on PyJWT and cryptography only; every failure of a proof
is a ``DPoPError`` whose ``code`` is the OAuth error (``invalid_dpop_proof``, or
``use_dpop_nonce`` when the server's nonce is missing or stale) and whose text says why.

    key = DPoPKey.generate()                       # ES256 (P-256), or "EdDSA"
    proof = key.proof("POST", "https://tokend.example/oauth/token", nonce=server_nonce)

    checked = verify_proof(proof, method="POST", url=public_url, now=time.time())
    if replay_cache.seen(checked.jkt, checked.jti, until=checked.iat + 305):
        ...                                        # a replay: refuse
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "INVALID_DPOP_PROOF",
    "MAX_PROOF_SIZE",
    "PROOF_TYP",
    "USE_DPOP_NONCE",
    "DPoPError",
    "DPoPKey",
    "MemoryReplayCache",
    "Proof",
    "ReplayCache",
    "access_token_hash",
    "normalize_htu",
    "thumbprint",
    "verify_proof",
]

ALGORITHMS: tuple[str, ...] = ("ES256", "EdDSA", "RS256", "PS256")
PROOF_TYP = "dpop+jwt"
INVALID_DPOP_PROOF = "invalid_dpop_proof"
USE_DPOP_NONCE = "use_dpop_nonce"
MAX_PROOF_SIZE = 8192  # characters of the compact JWT (a 4096-bit RSA proof is ~2 KiB)
MAX_JTI_LENGTH = 256
MIN_RSA_BITS = 2048
# A larger public exponent makes each signature check cost up to a private-key operation
# (a 3072-bit e: ~70x an ES256 check) for anyone who sends a proof; BoringSSL allows 33 bits.
MAX_RSA_EXPONENT_BITS = 33

# alg → (kty, crv) of the only key it may be verified with
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
}
# RFC 7638: the required members of each key type, the only ones a thumbprint hashes
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
# RFC 7518 section 6 / RFC 8037: members that carry private or symmetric key material
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DPoPError(Exception):
    """A refused DPoP proof: ``code`` is the OAuth error code, ``str(e)`` the description."""

    def __init__(self, description: str, code: str = INVALID_DPOP_PROOF) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint (``jkt``) of a public EC, OKP or RSA JWK."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise DPoPError(f"unsupported key type {kty!r} in the jwk")
    values = {name: jwk.get(name) for name in members}
    if not all(isinstance(value, str) and value for value in values.values()):
        raise DPoPError(f"the {kty} jwk needs the members {', '.join(members)} as strings")
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def bound_jkt(token: str) -> str | None:
    """The ``cnf.jkt`` of a JWT's claims, read without verifying it (a client choosing
    how to send its own token), or None for an unbound token."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError, AttributeError, RecursionError):
        return None
    cnf = claims.get("cnf") if isinstance(claims, dict) else None
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) and jkt else None


def access_token_hash(token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII bytes."""
    return _b64url(hashlib.sha256(token.encode("ascii")).digest())


def _normalize_path(path: str) -> str:
    # RFC 3986 6.2.2: upper-case percent-encodings, decode unreserved characters, remove
    # dot segments (5.2.4); 6.2.3: an empty path is "/"
    def percent(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    path = _PERCENT.sub(percent, path)
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if path.split("/")[-1] in (".", ".."):
        output.append("")  # "/a/." is "/a/", as RFC 3986 5.2.4 says
    return "/" + "/".join(output)


def normalize_htu(url: str) -> str:
    """The form in which ``htu`` is compared (RFC 9449 section 4.3, RFC 3986 6.2.2/6.2.3):
    scheme and host lower-case, the default port dropped, the path kept ("" -> "/", dot
    segments removed, percent-encodings normalized), no query, no fragment.
    Raises ValueError on anything but an absolute http(s) URL."""
    if not isinstance(url, str) or not url or _SPACE_OR_CONTROL.search(url):
        raise ValueError("not a URL (empty, or a space or control character in it)")
    parts = urlsplit(url)
    scheme = parts.scheme  # urlsplit lower-cases it
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not an http(s) URL: {url[:100]!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in the URL {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("user information in the URL")
    port = parts.port  # ValueError when not a number in 0..65535
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path or "/"
    if not path.startswith("/"):
        raise ValueError("a relative path in the URL")
    return f"{scheme}://{netloc}{_normalize_path(path)}"


@dataclass(frozen=True)
class Proof:
    """A checked proof: the key's thumbprint and the claims the caller still acts on."""

    jkt: str
    jti: str
    iat: float
    htm: str
    htu: str
    nonce: str | None
    jwk: dict[str, Any] = field(repr=False)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError(f"duplicate member {name!r}")
        result[name] = value
    return result


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, binascii.Error, RecursionError, UnicodeDecodeError) as exc:
        raise DPoPError(f"the proof's {what} is not base64url JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DPoPError(f"the proof's {what} is not a JSON object")
    if b"\\u" in raw and not _is_unicode(value):
        raise DPoPError(f"the proof's {what} holds a lone surrogate (\\ud800-\\udfff)")
    return value


def _is_unicode(value: Any) -> bool:
    """Whether every string of a parsed JSON value is valid Unicode: JSON escapes can spell
    lone surrogates, which no UTF-8 encoding (a Redis key, a hash) accepts."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def _check_header(proof: str, algorithms: Sequence[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(proof, str) or not proof:
        raise DPoPError("no DPoP proof")
    if len(proof) > MAX_PROOF_SIZE:
        raise DPoPError(f"the DPoP proof is larger than {MAX_PROOF_SIZE} characters")
    if not _COMPACT_JWS.fullmatch(proof):
        raise DPoPError("the DPoP proof is not a single compact JWS (three base64url parts)")
    header = _json_segment(proof.split(".", 1)[0], "header")
    if "crit" in header or "b64" in header:  # RFC 7515 4.1.11: no extension is understood
        raise DPoPError("the proof's header names extensions (crit, b64) not understood here")
    if "kid" in header and not isinstance(header["kid"], str):
        raise DPoPError("the proof's kid is not a string")
    if header.get("typ") != PROOF_TYP:
        raise DPoPError(f"the proof's typ is {header.get('typ')!r}, not {PROOF_TYP!r}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _KEY_TYPES or alg not in algorithms:
        allowed = " ".join(a for a in algorithms if a in _KEY_TYPES)
        raise DPoPError(f"the proof's alg {alg!r} is not one of the accepted ({allowed})")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise DPoPError("the proof's header has no jwk object")
    if jwk.get("kty") == "oct":
        raise DPoPError("the proof's jwk is a symmetric (oct) key")
    private = sorted(_PRIVATE_MEMBERS.intersection(jwk))
    if private:
        raise DPoPError(f"the proof's jwk holds private key members ({', '.join(private)})")
    kty, crv = _KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        wanted = f"{kty} {crv}" if crv else kty
        got = " ".join(str(jwk.get(m)) for m in ("kty", "crv") if m in jwk)
        raise DPoPError(f"the proof's jwk ({got}) is not a key for {alg} ({wanted})")
    return alg, jwk


# A client signs every request with one key: the parsed key (building an EC point and
# checking it is on the curve costs more than the signature check) is kept for the last
# KEY_CACHE_SIZE keys; a flood of new keys costs each what it costs uncached.
KEY_CACHE_SIZE = 1024
_keys: OrderedDict[tuple[str, str], jwt.PyJWK] = OrderedDict()
_keys_lock = threading.Lock()


def _public_key(alg: str, jwk: dict[str, Any]) -> jwt.PyJWK:
    try:
        name = (alg, json.dumps(jwk, sort_keys=True, separators=(",", ":")))
    except (TypeError, ValueError):  # pragma: no cover - the header came from JSON
        raise DPoPError("the proof's jwk is not JSON") from None
    with _keys_lock:
        key = _keys.get(name)
        if key is not None:
            _keys.move_to_end(name)
            return key
    key = _parsed_key(alg, jwk)
    with _keys_lock:
        _keys[name] = key
        while len(_keys) > KEY_CACHE_SIZE:
            _keys.popitem(last=False)
    return key


def _parsed_key(alg: str, jwk: dict[str, Any]) -> jwt.PyJWK:
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DPoPError(f"the proof's jwk is not a valid {alg} public key: {exc}") from None
    public = key.key
    if alg == "ES256":
        ok = isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    elif alg == "EdDSA":
        ok = isinstance(public, ed25519.Ed25519PublicKey)
    else:
        ok = isinstance(public, rsa.RSAPublicKey)
        if ok and public.key_size < MIN_RSA_BITS:
            raise DPoPError(f"the proof's RSA key has {public.key_size} bits, under 2048")
        if ok and public.public_numbers().e.bit_length() > MAX_RSA_EXPONENT_BITS:
            raise DPoPError("the proof's RSA public exponent is larger than 2^33")
    if not ok:
        raise DPoPError(f"the proof's jwk is not a public key for {alg}")
    return key


def _verified_claims(proof: str, alg: str, key: jwt.PyJWK) -> dict[str, Any]:
    """The claims of a proof whose signature verifies with ``key``: PyJWT's algorithm
    object checks the signature (for ES256 the JWS r||s form); the form of the three parts
    was checked already, so PyJWT's generic parser (a per-character scan of each part,
    most of the cost of jwt.decode here) is not run again."""
    signing_input, _, signature = proof.rpartition(".")
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        valid = key.Algorithm.verify(signing_input.encode("ascii"), key.key, raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise DPoPError(f"the proof's signature cannot be checked: {exc}") from None
    if not valid:
        raise DPoPError("the proof's signature does not verify with its jwk")
    return _json_segment(signing_input.partition(".")[2], "claims")


def _check_claims(claims: dict[str, Any], method: str, url: str) -> tuple[str, str, str]:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise DPoPError("the proof has no jti")
    if len(jti) > MAX_JTI_LENGTH:
        raise DPoPError(f"the proof's jti is longer than {MAX_JTI_LENGTH} characters")
    htm = claims.get("htm")
    if not isinstance(htm, str) or htm != method:
        raise DPoPError(f"the proof's htm {str(htm)[:20]!r} is not the request's {method!r}")
    htu = claims.get("htu")
    if not isinstance(htu, str):
        raise DPoPError("the proof has no htu")
    try:
        expected = normalize_htu(url)
    except ValueError as exc:
        raise DPoPError(f"the request's URL cannot be compared: {exc}") from None
    try:
        got = normalize_htu(htu)
    except ValueError as exc:
        raise DPoPError(f"the proof's htu is not a URL: {exc}") from None
    if got != expected:
        raise DPoPError(f"the proof's htu {got[:200]!r} is not the request's {expected!r}")
    return jti, htm, htu


def _check_iat(claims: dict[str, Any], now: float, max_age: float, future: float) -> float:
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise DPoPError("the proof's iat is missing or not a number")
    try:
        value = float(iat)
    except OverflowError:  # an integer beyond any float
        value = math.inf
    if math.isnan(value):
        raise DPoPError("the proof's iat is not a number")
    if value < now - max_age:
        raise DPoPError("the proof is too old (iat before the accepted window)")
    if value > now + future:
        raise DPoPError("the proof's iat is in the future")
    return value


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    access_token: str | None = None,
    nonce: Callable[[str | None], bool] | None = None,
    max_age: float = 300,
    future: float = 5,
    algorithms: Sequence[str] = ALGORITHMS,
) -> Proof:
    """Check a DPoP proof against the request (RFC 9449 section 4.3, all but replay).

    ``access_token`` given: the proof's ``ath`` must be its hash. ``nonce`` given: it is
    called with the proof's ``nonce`` (None when absent) and a false answer is
    ``DPoPError(code="use_dpop_nonce")``; that check comes last, so only an otherwise
    valid proof earns it. Every other failure is ``DPoPError(code="invalid_dpop_proof")``.
    """
    alg, jwk = _check_header(proof, algorithms)
    key = _public_key(alg, jwk)
    claims = _verified_claims(proof, alg, key)
    jti, htm, htu = _check_claims(claims, method, url)
    iat = _check_iat(claims, now, max_age, future)
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str):
            raise DPoPError("the proof has no ath for the access token")
        expected = access_token_hash(access_token)
        if not hmac.compare_digest(ath.encode("utf-8"), expected.encode("ascii")):
            raise DPoPError("the proof's ath is not the hash of the access token")
    proof_nonce = claims.get("nonce")
    if proof_nonce is not None and not isinstance(proof_nonce, str):
        raise DPoPError("the proof's nonce is not a string")
    if nonce is not None and not nonce(proof_nonce):
        description = (
            "a fresh DPoP nonce is required" if proof_nonce else "a DPoP nonce is required"
        )
        raise DPoPError(description, code=USE_DPOP_NONCE)
    return Proof(
        jkt=thumbprint(jwk), jti=jti, iat=iat, htm=htm, htu=htu, nonce=proof_nonce, jwk=jwk
    )


class ReplayCache(Protocol):
    """ "Seen before?": records (jkt, jti) until ``until`` and answers in one step."""

    def seen(self, jkt: str, jti: str, until: float) -> bool: ...


class MemoryReplayCache:
    """A per-process, thread-safe, bounded ReplayCache.

    ``seen`` is True when (jkt, jti) is recorded and not expired; otherwise it records it
    until ``until`` and answers False. When ``max_entries`` are held, expired entries are
    dropped first, then the oldest (which opens a replay window for those only: size it
    above the proofs a process accepts in one iat window)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self._skip_sweeps = 0  # inserts left before the next full sweep is worth it

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def seen(self, jkt: str, jti: str, until: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        key = (jkt, jti)
        with self._lock:
            expires = self._entries.get(key)
            if expires is not None:
                if expires > now:
                    return True
                del self._entries[key]
            if len(self._entries) >= self.max_entries:
                self._make_room(now)
            self._entries[key] = until
            return False

    def _make_room(self, now: float) -> None:
        entries = self._entries
        if self._skip_sweeps <= 0:
            expired = [key for key, expires in entries.items() if expires <= now]
            for key in expired:
                del entries[key]
            # a sweep that freed little is not repeated at once: it costs len(entries)
            self._skip_sweeps = (
                0 if len(expired) > self.max_entries // 10 else self.max_entries // 10
            )
        else:
            self._skip_sweeps -= 1
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)


_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _alg_for(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("a DPoP key is an EC P-256 or an Ed25519 private key")


def _public_jwk(key: _PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    rsa_numbers = public.public_numbers()
    return {
        "kty": "RSA",
        "e": _b64url(rsa_numbers.e.to_bytes((rsa_numbers.e.bit_length() + 7) // 8, "big")),
        "n": _b64url(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
    }


class DPoPKey:
    """The client's DPoP key pair: makes proofs, and is kept in a 0600 PEM file."""

    def __init__(self, private_key: _PrivateKey, alg: str | None = None) -> None:
        if isinstance(private_key, rsa.RSAPrivateKey):
            if alg not in ("RS256", "PS256") or private_key.key_size < MIN_RSA_BITS:
                raise ValueError("an RSA DPoP key needs alg RS256 or PS256 and 2048 bits")
            self.alg = alg
        else:
            self.alg = _alg_for(private_key)
            if alg is not None and alg != self.alg:
                raise ValueError(f"the key is for {self.alg}, not {alg}")
        self._key = private_key
        self.public_jwk: dict[str, Any] = _public_jwk(private_key)
        self.jkt = thumbprint(self.public_jwk)

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        if alg == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate())
        raise ValueError(f"DPoPKey.generate makes ES256 or EdDSA keys, not {alg!r}")

    @classmethod
    def load(cls, path: str | Path) -> DPoPKey:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an EC P-256 or Ed25519 private key")
        return cls(key)

    def save(self, path: str | Path) -> None:
        """Write the private key as PEM PKCS#8 to a file created with mode 0600, atomically."""
        path = Path(path)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        now: float | None = None,
    ) -> str:
        """A fresh proof for one request (``ath`` with an access token, the server's nonce)."""
        claims: dict[str, Any] = {
            "jti": _b64url(secrets.token_bytes(16)),
            "htm": method,
            "htu": normalize_htu(url),
            "iat": int(time.time() if now is None else now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        headers = {"typ": PROOF_TYP, "alg": self.alg, "jwk": self.public_jwk}
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=headers)
