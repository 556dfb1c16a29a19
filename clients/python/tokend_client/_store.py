"""Where a TokenSession keeps its token pair: a small async protocol and two stores.

``MemoryTokenStore`` (the default) lives as long as the process. ``FileTokenStore``
keeps pairs in one JSON file, several under different keys (the CLI keys them by
tokend URL); every write replaces the whole file atomically (a temporary file in the
same directory, created ``0600``, then ``os.replace``), so a reader never sees half a
file and the tokens are never readable by other users, not even for a moment.
File I/O runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["FileTokenStore", "MemoryTokenStore", "TokenStore", "Tokens"]

log = logging.getLogger("tokend_client.store")

FILE_VERSION = 1


@dataclass(frozen=True)
class Tokens:
    """One session's token pair and when each half expires (client clock, epoch seconds)."""

    access_token: str
    refresh_token: str
    access_expires_at: float
    #: ``None`` when tokend did not say (``refresh_expires_in`` missing).
    refresh_expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Tokens:
        """Tokens from ``to_dict()`` output; ValueError when it does not fit."""
        if not isinstance(data, dict):
            raise ValueError("token record is not an object")
        access, refresh = data.get("access_token"), data.get("refresh_token")
        access_exp, refresh_exp = data.get("access_expires_at"), data.get("refresh_expires_at")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise ValueError("token record without tokens")
        if isinstance(access_exp, bool) or not isinstance(access_exp, int | float):
            raise ValueError("token record without access_expires_at")
        if refresh_exp is not None and (
            isinstance(refresh_exp, bool) or not isinstance(refresh_exp, int | float)
        ):
            raise ValueError("token record with a bad refresh_expires_at")
        return cls(access, refresh, float(access_exp), None if refresh_exp is None else refresh_exp)


@runtime_checkable
class TokenStore(Protocol):
    """Keeps one token pair. Implementations must be safe to call from one event loop
    concurrently; ``load`` returns ``None`` when nothing is stored."""

    async def load(self) -> Tokens | None:
        """The stored pair, if any."""
        ...

    async def save(self, tokens: Tokens) -> None:
        """Replace the stored pair."""
        ...

    async def clear(self) -> None:
        """Forget the stored pair (no error when there is none)."""
        ...


class MemoryTokenStore:
    """Keeps the pair in memory: gone when the process ends."""

    def __init__(self, tokens: Tokens | None = None) -> None:
        self._tokens = tokens

    async def load(self) -> Tokens | None:
        """The stored pair, if any."""
        return self._tokens

    async def save(self, tokens: Tokens) -> None:
        """Replace the stored pair."""
        self._tokens = tokens

    async def clear(self) -> None:
        """Forget the stored pair."""
        self._tokens = None


class FileTokenStore:
    """Keeps pairs in a private JSON file (mode ``0600``), one per ``key``.

    The file is ``{"version": 1, "tokens": {key: {...}}}``. A missing parent directory
    is created with mode ``0700``. An unreadable or malformed file counts as empty (and
    is logged), so a damaged file means "log in again", never a crash. Writes from one
    process are serialized; two processes writing different keys at the same instant
    can lose one of the writes (the loser has to log in again).
    """

    def __init__(self, path: str | os.PathLike[str], key: str = "default") -> None:
        self.path = Path(path)
        self.key = key
        self._lock = asyncio.Lock()

    @property
    def dpop_key_path(self) -> Path:
        """The PEM file of the DPoP key that goes with this store's tokens (mode 0600)."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:16]
        return self.path.with_name(f"{self.path.stem}.{digest}.dpop.pem")

    async def load(self) -> Tokens | None:
        """The pair stored under this store's key, if any."""
        record = (await asyncio.to_thread(self._read_all)).get(self.key)
        if record is None:
            return None
        try:
            return Tokens.from_dict(record)
        except ValueError as exc:
            log.warning("ignoring the tokens for %r in %s: %s", self.key, self.path, exc)
            return None

    async def save(self, tokens: Tokens) -> None:
        """Store the pair under this store's key, keeping the other keys."""
        async with self._lock:
            await asyncio.to_thread(self._update, tokens)

    async def clear(self) -> None:
        """Remove this key; the file goes when no key is left."""
        async with self._lock:
            await asyncio.to_thread(self._update, None)

    # blocking helpers, run in a thread

    def _read_all(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                raw = f.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read token file %s: %s", self.path, exc)
            return {}
        if stat.S_IMODE(mode) & 0o077:
            log.warning("token file %s is readable by others; it is rewritten 0600", self.path)
        try:
            document = json.loads(raw)
        except ValueError:
            log.warning("token file %s is not JSON; treating it as empty", self.path)
            return {}
        tokens = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(tokens, dict):
            log.warning("token file %s has no token table; treating it as empty", self.path)
            return {}
        return tokens

    def _update(self, tokens: Tokens | None) -> None:
        table = self._read_all()
        if tokens is None:
            if self.key not in table:
                return
            del table[self.key]
        else:
            table[self.key] = tokens.to_dict()
        if not table:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        self._write({"version": FILE_VERSION, "tokens": table})

    def _write(self, document: dict[str, Any]) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        tmp = directory / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        # 0600 from the first byte; fchmod too, since a umask could leave the owner less.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
