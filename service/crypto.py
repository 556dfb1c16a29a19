"""Key-encryption key handling: private signing keys are sealed with AES-GCM at rest."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigError

KEK_BYTES = 32
_NONCE = 12


def generate_kek() -> str:
    """A new key-encryption key, base64url text of 32 random bytes."""
    return base64.urlsafe_b64encode(os.urandom(KEK_BYTES)).decode()


def decode_kek(text: str) -> bytes:
    """Decode a KEK from its base64url text; ValueError when it is not 32 bytes."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("expected 32 bytes in base64url") from None
    if len(raw) != KEK_BYTES:
        raise ValueError(f"expected 32 bytes in base64url, got {len(raw)} bytes")
    return raw


def load_or_create_dev_kek(path: Path) -> tuple[str, bool]:
    """Read the development KEK file beside the SQLite database, creating it (0600) if absent.

    An existing file that group or others may read or write is refused: whoever reads it
    can decrypt every signing key in the database.
    """
    if path.exists():
        with path.open("rb") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"TOKEND_KEY_ENCRYPTION_KEY: key file {path} is accessible to group or "
                    f"others (mode {mode:04o}); run: chmod 600 {path}"
                )
            raw = fh.read()
        text = raw.decode(errors="replace").strip()
        try:
            decode_kek(text)
        except ValueError as exc:
            raise ConfigError(f"TOKEND_KEY_ENCRYPTION_KEY: key file {path}: {exc}") from None
        return text, False
    text = generate_kek()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    return text, True


class Sealer:
    """Encrypts and decrypts private key material, bound to its key id."""

    def __init__(self, kek: bytes) -> None:
        self._aead = AESGCM(kek)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode())
        except InvalidTag:
            raise ConfigError(
                "TOKEND_KEY_ENCRYPTION_KEY: cannot decrypt the stored signing keys "
                "(wrong key-encryption key?)"
            ) from None
