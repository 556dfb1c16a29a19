"""Social login: the authorization code flow's state, the local user, and one-time login codes.

``begin`` stores state, nonce, PKCE verifier and return_to in Redis (single use, short
TTL), bound to the browser's cookie, and gives the provider URL; ``resume`` consumes that
record at the callback; ``finish`` checks the response and the ID token; the local user is
found by (issuer, subject) only, or created without a password. Tokens never travel in a
URL: with a return_to the browser carries a one-time ``login_code`` that only the
application holding the PKCE-style ``code_verifier`` can redeem for the token body.

Linking is bound to the user's session at both ends: the Bearer-authenticated start gives
a one-time link ticket, which a top-level navigation of the user's browser turns into the
binding cookie and the provider redirect; the callback links nothing by itself but hands
out a one-time ``link_code`` that only the same session (uid and sid) can confirm.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from redis.asyncio import Redis

from .auth import Authenticator, ClientInfo, Principal, TokenPair
from .backchannel import BackchannelLogout, ProviderSession, provider_session
from .errors import (
    InvalidGrant,
    NotFound,
    SocialLoginDenied,
    SocialLoginFailed,
    SocialLoginRefused,
    TokendError,
)
from .identities import ExternalAccount, Identity, IdentityStore
from .keyspace import Keyspace
from .oidc import ProviderClient
from .oidc_rules import VERIFIER, binding_hash, return_to_allowed, s256
from .ratelimit import CountLimit
from .redisconn import redis_errors
from .users import User

STATE_TTL = 600
LOGIN_CODE_TTL = 60
LINK_TICKET_TTL = 60
LINK_CODE_TTL = 300
# Every field of a state record is bounded (return_to by MAX_RETURN_TO, the provider name
# by the settings, the rest are fixed-size); this is the cap on the whole record.
MAX_STATE_RECORD = 4096

# RFC 6749 section 4.1.2.1 codes passed on from the provider; anything else reads access_denied.
PROVIDER_ERRORS = frozenset(
    {
        "access_denied",
        "invalid_request",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_response_type",
        "server_error",
        "temporarily_unavailable",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
    }
)


@dataclass(frozen=True)
class PendingLogin:
    """What ``begin`` stored for the callback."""

    provider: str
    nonce: str
    verifier: str
    return_to: str | None
    link_user: str | None
    link_sid: str | None = None
    code_challenge: str | None = None


@dataclass(frozen=True)
class Completed:
    """What a finished callback hands out: exactly one of a link code (for ``provider``),
    a login code (for the return_to) or the token pair."""

    link_code: str | None = None
    provider: str = ""
    login_code: str | None = None
    pair: TokenPair | None = None


class SocialLogin:
    """The OpenID Connect login flow for every configured provider."""

    def __init__(
        self,
        *,
        providers: Mapping[str, ProviderClient],
        redis: Redis,
        prefix: str,
        identities: IdentityStore,
        auth: Authenticator,
        base_url: str,
        return_to: tuple[str, ...],
        starts_per_ip: int = 60,
        starts_window: int = 900,
        backchannel: BackchannelLogout,
    ) -> None:
        self.providers = providers
        self.backchannel = backchannel
        self.redis = redis
        self.prefix = prefix
        self.identities = identities
        self.auth = auth
        self.base_url = base_url.rstrip("/")
        self.return_to = return_to
        self.starts = CountLimit(
            redis,
            prefix=prefix,
            name="oidc:starts",
            limit=starts_per_ip,
            window=starts_window,
            description="too many social-login starts from this address",
        )

    def provider(self, name: str) -> ProviderClient:
        """The client of a configured provider; 404 otherwise."""
        client = self.providers.get(name)
        if client is None:
            raise NotFound(f"no OpenID provider named {name[:64]!r}")
        return client

    def redirect_uri(self, name: str) -> str:
        """tokend's callback for ``name``, built from TOKEND_ISSUER (the public base URL)."""
        return f"{self.base_url}/auth/oidc/{quote(name, safe='')}/callback"

    def check_return_to(self, url: object) -> str | None:
        """A return_to that passed the allow-list (TOKEND_OIDC_RETURN_TO and tokend's own
        ``/login``, which ``setup_oidc`` adds), None when absent; 400 otherwise."""
        if url is None or url == "":
            return None
        if not isinstance(url, str) or not return_to_allowed(url, self.return_to):
            raise SocialLoginFailed("return_to is not an allowed URL (TOKEND_OIDC_RETURN_TO)")
        return url

    def link_start_uri(self, name: str, ticket: str) -> str:
        """tokend's URL that turns a link ticket into a browser-bound link flow."""
        return f"{self.base_url}/auth/oidc/{quote(name, safe='')}/link/start?" + urlencode(
            {"ticket": ticket}
        )

    async def begin(
        self,
        name: str,
        *,
        return_to: str | None,
        browser: str,
        link_user: str | None = None,
        link_sid: str | None = None,
        code_challenge: str | None = None,
    ) -> str:
        """Store the flow's secrets, bound to ``browser``; the provider's authorization URL."""
        client = self.provider(name)
        if not browser:
            raise SocialLoginFailed("a login flow needs its browser-binding cookie")
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        url = await client.authorization_url(
            redirect_uri=self.redirect_uri(name), state=state, nonce=nonce, verifier=verifier
        )
        record = {
            "provider": name,
            "nonce": nonce,
            "verifier": verifier,
            "return_to": return_to,
            "link_user": link_user,
            "link_sid": link_sid,
            "code_challenge": code_challenge,
            "browser": binding_hash(browser),
        }
        raw = json.dumps(record)
        if len(raw) > MAX_STATE_RECORD:
            raise SocialLoginFailed("the login request is too large")
        with redis_errors():
            await self.redis.set(self._state_key(state), raw, ex=STATE_TTL)
        return url

    async def resume(self, name: str, state: object, browser: str | None) -> PendingLogin:
        """Consume the state of a callback (single use); 400 when unknown, used or foreign."""
        self.provider(name)
        if not isinstance(state, str) or not state or len(state) > 128:
            raise SocialLoginFailed("missing or malformed state")
        with redis_errors():
            raw = await self.redis.getdel(self._state_key(state))
        if raw is None:
            raise SocialLoginFailed("unknown, expired or already used state")
        record = json.loads(raw)
        if record["provider"] != name:
            raise SocialLoginFailed("the state belongs to another provider's login")
        bound = record.get("browser")
        if record.get("link_user") and not bound:
            # A link flow is never valid without the browser that started it.
            raise SocialLoginFailed("this link was not started by a browser")
        if bound and not (browser and hmac.compare_digest(bound, binding_hash(browser))):
            raise SocialLoginFailed("this login was started in another browser")
        return PendingLogin(
            provider=name,
            nonce=record["nonce"],
            verifier=record["verifier"],
            return_to=record.get("return_to"),
            link_user=record.get("link_user"),
            link_sid=record.get("link_sid"),
            code_challenge=record.get("code_challenge"),
        )

    async def finish(
        self, pending: PendingLogin, params: Mapping[str, str]
    ) -> tuple[ExternalAccount, ProviderSession]:
        """Check the authorization response, exchange the code, verify the ID token: the
        account, and the provider session (for back-channel logout)."""
        client = self.provider(pending.provider)
        client.check_iss_parameter(await client.discovery(), params.get("iss"))
        if "error" in params:
            error = params["error"]
            reason = error if error in PROVIDER_ERRORS else "access_denied"
            detail = "".join(c for c in params.get("error_description", "") if c.isprintable())
            raise SocialLoginRefused(
                f"the provider refused the login: {reason}"
                + (f" ({detail[:200]})" if detail else ""),
                reason,
            )
        code = params.get("code")
        if not code:
            raise SocialLoginFailed("the authorization response has no code")
        id_token = await client.exchange(
            code=code, verifier=pending.verifier, redirect_uri=self.redirect_uri(pending.provider)
        )
        claims = await client.verify_id_token(id_token, pending.nonce)
        return client.account(claims), provider_session(pending.provider, claims)

    async def complete(
        self, pending: PendingLogin, params: Mapping[str, str], client: ClientInfo
    ) -> Completed:
        """The callback's use case, after ``resume``: check the response and the ID
        token, then hand out a link code (a link flow links nothing here), a login code
        (with a return_to) or the token pair. A failure is counted once and raised."""
        try:
            account, origin = await self.finish(pending, params)
            if pending.link_user is not None:
                code = await self.issue_link_code(pending, account)
                return Completed(link_code=code, provider=account.provider)
            user, checked_at = await self.local_user(account)
            if pending.return_to:
                code = await self.issue_login_code(
                    user,
                    client,
                    checked_at=checked_at,
                    code_challenge=pending.code_challenge,
                    origin=origin,
                )
                return Completed(login_code=code)
            pair = await self.start_session(user, client, checked_at=checked_at, origin=origin)
            return Completed(pair=pair)
        except TokendError:
            self.auth.logins.social_failed()
            raise

    async def local_user(self, account: ExternalAccount) -> tuple[User, float]:
        """The user linked to the account, or a new one (never matched by email), and when
        it was checked: Redis's clock, read before the user row, for ``start_session``'s
        ``checked_at`` (a session is never born after a revocation that came later)."""
        checked_at = await self.auth.sessions.server_time()
        user = await self.identities.find_or_create_user(account, self.auth.clock())
        if user.disabled:
            raise SocialLoginDenied("this account is disabled")
        return user, checked_at

    async def link(self, user_id: str, account: ExternalAccount) -> Identity:
        """Link the account to the user who started (and confirmed) the link flow."""
        user = await self.auth.users.by_id(user_id)
        if user is None or user.disabled:
            raise SocialLoginDenied("the account to link to is gone or disabled")
        return await self.identities.link(user_id, account, self.auth.clock())

    async def start_session(
        self,
        user: User,
        client: ClientInfo,
        *,
        checked_at: float | None,
        origin: ProviderSession | None = None,
    ) -> TokenPair:
        """tokend's own session for a user who logged in at a provider, recorded under the
        provider session it came from (``origin``) for back-channel logout."""
        pair = await self.auth.logins.social(user, client, checked_at=checked_at)
        if origin is not None:
            await self.backchannel.record(origin, user.id, pair.sid)
        return pair

    async def issue_login_code(
        self,
        user: User,
        client: ClientInfo,
        *,
        checked_at: float,
        code_challenge: str | None,
        origin: ProviderSession | None = None,
    ) -> str:
        """A one-time code for the application to redeem (LOGIN_CODE_TTL seconds), bound
        to the code_challenge the application gave when the login began."""
        if code_challenge is None:
            # Only a state record from before code_challenge was required lacks it.
            raise SocialLoginFailed("this login began without a code_challenge")
        code = secrets.token_urlsafe(32)
        record = {
            "user": user.id,
            "ip": client.ip,
            "user_agent": client.user_agent,
            "checked_at": checked_at,
            "code_challenge": code_challenge,
            "origin": None if origin is None else [origin.provider, origin.subject, origin.sid],
        }
        with redis_errors():
            await self.redis.set(self._code_key(code), json.dumps(record), ex=LOGIN_CODE_TTL)
        return code

    async def redeem_login_code(
        self, code: object, verifier: object, *, jkt: str = ""
    ) -> TokenPair:
        """The token pair of a login code; once only (400 invalid_grant afterwards).

        The code is consumed before ``verifier`` is checked: a wrong or missing
        code_verifier burns it. The session starts here, not at the callback, so no tokens
        wait in Redis and an abandoned code leaves no session behind. It records the
        browser of the callback; ``jkt``: the DPoP key the redeeming request proved.
        """
        if not isinstance(code, str) or not code or len(code) > 128:
            raise InvalidGrant("login_code is required")
        with redis_errors():
            raw = await self.redis.getdel(self._code_key(code))
        if raw is None:
            raise InvalidGrant("unknown, expired or already used login_code")
        record = json.loads(raw)
        challenge = record.get("code_challenge")
        if not (
            isinstance(verifier, str)
            and VERIFIER.fullmatch(verifier)
            and isinstance(challenge, str)
            and hmac.compare_digest(s256(verifier), challenge)
        ):
            raise InvalidGrant("code_verifier does not match the login's code_challenge")
        user = await self.auth.users.by_id(record["user"])
        if user is None or user.disabled:
            raise InvalidGrant("the account of this login_code is no longer active")
        client = ClientInfo(ip=record["ip"], user_agent=record["user_agent"], jkt=jkt)
        origin = record.get("origin")
        return await self.start_session(
            user,
            client,
            checked_at=record.get("checked_at"),
            origin=None if origin is None else ProviderSession(*origin),
        )

    async def issue_link_ticket(
        self, name: str, principal: Principal, return_to: str | None
    ) -> str:
        """A one-time ticket (LINK_TICKET_TTL s) for ``link_start_uri``: the caller's uid
        and sid, waiting for the caller's browser to pick them up."""
        self.provider(name)
        ticket = secrets.token_urlsafe(32)
        record = {
            "provider": name,
            "user": principal.user.id,
            "sid": principal.sid,
            "return_to": return_to,
        }
        with redis_errors():
            await self.redis.set(self._ticket_key(ticket), json.dumps(record), ex=LINK_TICKET_TTL)
        return ticket

    async def begin_link(self, name: str, ticket: object, browser: str) -> str:
        """Consume a link ticket; the link flow, bound to ``browser``: the provider URL."""
        self.provider(name)
        if not isinstance(ticket, str) or not ticket or len(ticket) > 128:
            raise SocialLoginFailed("missing or malformed link ticket")
        with redis_errors():
            raw = await self.redis.getdel(self._ticket_key(ticket))
        if raw is None:
            raise SocialLoginFailed("unknown, expired or already used link ticket")
        record = json.loads(raw)
        if record["provider"] != name:
            raise SocialLoginFailed("the link ticket belongs to another provider")
        if await self.auth.sessions.get(record["user"], record["sid"]) is None:
            raise SocialLoginFailed("the session that asked for this link has ended")
        return await self.begin(
            name,
            return_to=record.get("return_to"),
            browser=browser,
            link_user=record["user"],
            link_sid=record["sid"],
        )

    async def issue_link_code(self, pending: PendingLogin, account: ExternalAccount) -> str:
        """The callback of a link flow links nothing: a one-time code (LINK_CODE_TTL s) that
        only the session which started the link can confirm."""
        assert pending.link_user is not None
        code = secrets.token_urlsafe(32)
        record = {
            "user": pending.link_user,
            "sid": pending.link_sid,
            "account": {
                "provider": account.provider,
                "issuer": account.issuer,
                "subject": account.subject,
                "email": account.email,
            },
        }
        with redis_errors():
            await self.redis.set(self._link_key(code), json.dumps(record), ex=LINK_CODE_TTL)
        return code

    async def confirm_link(self, code: object, principal: Principal) -> Identity:
        """Link the account of a link_code to the caller; once only, and only for the very
        session (uid and sid) that started the link. Any other caller burns the code."""
        if not isinstance(code, str) or not code or len(code) > 128:
            raise InvalidGrant("link_code is required")
        with redis_errors():
            raw = await self.redis.getdel(self._link_key(code))
        if raw is None:
            raise InvalidGrant("unknown, expired or already used link_code")
        record = json.loads(raw)
        same_user = hmac.compare_digest(str(record["user"]), principal.user.id)
        same_session = hmac.compare_digest(str(record["sid"]), principal.sid)
        if not (same_user and same_session):
            raise InvalidGrant("this link_code belongs to another session")
        account = ExternalAccount(**record["account"])
        self.provider(account.provider)
        return await self.link(principal.user.id, account)

    def _state_key(self, state: str) -> str:
        return Keyspace(self.prefix).oidc_state(state)

    def _code_key(self, code: str) -> str:
        return Keyspace(self.prefix).oidc_code(code)

    def _ticket_key(self, ticket: str) -> str:
        return Keyspace(self.prefix).oidc_ticket(ticket)

    def _link_key(self, code: str) -> str:
        return Keyspace(self.prefix).oidc_link(code)
