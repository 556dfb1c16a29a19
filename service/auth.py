"""The authentication domain, assembled: each use case with its narrow dependencies.

The use cases live in their own modules and know nothing of HTTP:

- ``login``: ``Registration``, ``Login`` (password login, social-login sessions)
- ``refresh``: ``Refresh`` (rotation, grace, reuse detection, scope narrowing)
- ``callers``: ``Callers`` (access tokens to principals, refresh-token holders)
- ``session_control``: ``SessionControl`` (logout, logout-all, the session list, RFC 7009)
- ``accounts``: ``Accounts`` (password change, disable), ``disable_user``, ``delete_user``
- ``oauth``: ``OAuthServer`` (the token, revocation and introspection endpoints)

Handlers call one method of one of them; nothing below reaches back through this class.
"""

from __future__ import annotations

from .accounts import Accounts, delete_user, disable_user
from .callers import Callers, Principal
from .clock import Clock
from .issuing import ClientInfo, Issuer, TokenPair
from .login import Login, Registration
from .metrics import Metrics
from .oauth import OAuthServer
from .passwords import PasswordHasher
from .ratelimit import AuthLimits
from .refresh import Refresh
from .session_control import SessionControl
from .sessions import SessionStore
from .tokens import TokenService
from .users import User, UserStore

__all__ = [
    "Authenticator",
    "ClientInfo",
    "Principal",
    "TokenPair",
    "delete_user",
    "disable_user",
]


class Authenticator:
    """Builds every authentication use case of tokend from the stores they share.

    The stores stay reachable (``users``, ``sessions``, ``tokens``, ``hasher``) for the
    command line and tests that set up state directly; the API goes through the use cases.
    """

    def __init__(
        self,
        *,
        users: UserStore,
        hasher: PasswordHasher,
        limits: AuthLimits,
        sessions: SessionStore,
        tokens: TokenService,
        clock: Clock,
        metrics: Metrics,
        registration_open: bool = True,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.sessions = sessions
        self.tokens = tokens
        self.clock = clock
        self.metrics = metrics
        issuer = Issuer(sessions=sessions, tokens=tokens, clock=clock, metrics=metrics)
        self.issuer = issuer
        self.registration = Registration(
            users=users,
            hasher=hasher,
            limits=limits,
            clock=clock,
            registration_open=registration_open,
        )
        self.logins = Login(
            users=users,
            hasher=hasher,
            limits=limits,
            sessions=sessions,
            issuer=issuer,
            metrics=metrics,
        )
        self.refreshes = Refresh(
            sessions=sessions, tokens=tokens, issuer=issuer, clock=clock, metrics=metrics
        )
        self.callers = Callers(tokens=tokens, sessions=sessions, users=users, clock=clock)
        self.session_control = SessionControl(sessions=sessions, clock=clock, metrics=metrics)
        self.accounts = Accounts(
            users=users,
            hasher=hasher,
            limits=limits,
            sessions=sessions,
            clock=clock,
            metrics=metrics,
        )
        self.oauth = OAuthServer(
            logins=self.logins,
            refreshes=self.refreshes,
            callers=self.callers,
            session_control=self.session_control,
            tokens=tokens,
            clock=clock,
        )

    async def start_session(
        self, user: User, client: ClientInfo, scope: str = "", *, checked_at: float | None = None
    ) -> TokenPair:
        """A session for an already authenticated user (tools and tests set up with it)."""
        return await self.issuer.start_session(user, client, scope, checked_at=checked_at)

    async def disable_user(self, username: str) -> int:
        """Disable a user and revoke every session of theirs (admin revoke); how many."""
        return await self.accounts.disable(username)
