"""A user's own account and its administration: password change, disable, delete.
Each ends sessions in O(1) with the user's revocation mark (one ``user.revoked``)."""

from __future__ import annotations

from .callers import Principal
from .clock import Clock
from .errors import InvalidCredentials, NotFound, ValidationFailed
from .metrics import Metrics
from .passwords import PasswordHasher, check_password_rules
from .ratelimit import AuthLimits
from .sessions import SessionStore
from .users import UserStore, normalize_username


class Accounts:
    """Password change by the user, disable by an administrator."""

    def __init__(
        self,
        *,
        users: UserStore,
        hasher: PasswordHasher,
        limits: AuthLimits,
        sessions: SessionStore,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.limiter = limits.passwords
        self.sessions = sessions
        self.clock = clock
        self.metrics = metrics

    async def change_password(
        self, principal: Principal, current: object, new: object, ip: str = ""
    ) -> int:
        """Change the caller's password and end every other session of theirs.

        Wrong current passwords count per user and per IP like failed logins (a stolen
        access token must not guess the password at full speed): 429 past the limits.
        """
        if not isinstance(current, str):
            raise ValidationFailed("current_password must be a string")
        secret = check_password_rules(new, principal.user.username)
        uid = principal.user.id
        await self.limiter.check(uid, ip)
        if not await self.hasher.verify(principal.user.password_hash, current):
            await self.limiter.failed(uid, ip)
            raise InvalidCredentials("current password is wrong")
        await self.limiter.succeeded(uid, ip)
        now = self.clock()
        await self.users.set_password(uid, await self.hasher.hash(secret), now)
        ended = await self.sessions.revoke_user(
            uid=uid, now=now, reason="password_changed", keep_sid=principal.sid
        )
        self.metrics.revoked("password_changed", "user.revoked")
        return ended

    async def disable(self, username: str) -> int:
        """Disable a user and revoke every session of theirs (admin revoke); how many."""
        ended = await disable_user(self.users, self.sessions, username, self.clock())
        self.metrics.revoked("admin_revoke", "user.revoked")
        return ended


async def disable_user(users: UserStore, sessions: SessionStore, username: str, now: float) -> int:
    """Disable a user and revoke all their sessions (user.revoked, reason admin_revoke)."""
    user = await users.by_username(normalize_username(username))
    if user is None:
        raise NotFound("no such user")
    await users.set_disabled(user.id, True)
    return await sessions.revoke_user(uid=user.id, now=now, reason="admin_revoke")


async def delete_user(users: UserStore, sessions: SessionStore, username: str, now: float) -> int:
    """Delete a user after revoking all their sessions (user.revoked, reason user_deleted).

    Refresh never reads SQL, so removing the row alone would let the user's sessions go
    on minting access tokens that every subscriber accepts: the sessions end first, and
    the user is disabled before that so no login slips in between.
    """
    user = await users.by_username(normalize_username(username))
    if user is None:
        raise NotFound("no such user")
    await users.set_disabled(user.id, True)
    revoked = await sessions.revoke_user(uid=user.id, now=now, reason="user_deleted")
    await users.delete(user.id)
    return revoked
