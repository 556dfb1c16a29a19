"""Password hashing with argon2id, always off the event loop."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .errors import ValidationFailed

T = TypeVar("T")

MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def check_password_rules(password: object, username: str | None = None) -> str:
    """Return the password if it meets the rules, else raise ValidationFailed."""
    if password is None:
        raise ValidationFailed("password is required")
    if not isinstance(password, str):
        raise ValidationFailed("password must be a string")
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationFailed(f"password must be at most {MAX_PASSWORD} characters")
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise ValidationFailed("password must not contain control characters")
    if username is not None and password.casefold() == username.casefold():
        raise ValidationFailed("password must differ from the username")
    return password


class PasswordHasher:
    """argon2id hashing and verification run in an executor; constant-time for unknown users."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        executor: Executor | None = None,
    ) -> None:
        self._argon2 = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._executor = executor
        self._dummy_hash: str | None = None

    @property
    def parameters(self) -> str:
        p = self._argon2
        return f"argon2id t={p.time_cost} m={p.memory_cost}KiB p={p.parallelism}"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def hash(self, password: str) -> str:
        """Hash a password off the loop."""
        result: str = await self._run(self._argon2.hash, password)
        return result

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Verify off the loop; with no hash, verify against a dummy so timing matches."""
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash("tokend-dummy-password")
            await self._run(self._safe_verify, self._dummy_hash, password)
            return False
        ok: bool = await self._run(self._safe_verify, password_hash, password)
        return ok

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)

    def _safe_verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def warm_up(self) -> None:
        """Compute the dummy hash up front so the first unknown-user login costs the same."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("tokend-dummy-password")
