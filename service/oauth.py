"""OAuth 2.0 for standard clients, without HTTP.

Client authentication (RFC 6749 section 2.3), the ``password`` and ``refresh_token``
grants (sections 4.3 and 6), token revocation (RFC 7009) and introspection (RFC 7662).
The routes in ``service.http.oauth_routes`` hand in the form and the ``Authorization``
header value; everything here raises tokend errors that the middleware renders.

Choices where the RFCs leave one (the README repeats them):

- A public client may identify itself by ``client_id`` in the body (``none``) or by
  Basic credentials with an empty secret; a confidential client must present its secret.
- Any syntactically valid scope is granted at the password grant (no per-client scope
  registry yet); a refresh may narrow it (the new access token carries the narrower
  scope, the session keeps the original) but never widen it.
- Revoking any verified refresh token of a session ends the whole session, its access
  tokens included (RFC 7009 section 2.1 SHOULD); a token issued to another client is
  refused with ``unauthorized_client``; tokens from ``/auth/login`` carry no client and
  any authenticated client may revoke them.
- Introspection answers for tokens of any client: a resource server typically checks
  tokens it did not obtain itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import unquote_plus

from .callers import Callers
from .clock import Clock
from .errors import (
    BadRequest,
    InvalidClient,
    InvalidCredentials,
    InvalidGrant,
    InvalidScope,
    InvalidToken,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from .issuing import ClientInfo, TokenPair
from .login import Login
from .refresh import Refresh
from .session_control import SessionControl
from .settings import OAuthClient
from .tokens import REFRESH_TYP, TokenService, bound_key

TokenKind = Literal["access_token", "refresh_token"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("access_token", "refresh_token")
INACTIVE: dict[str, Any] = {"active": False}
MAX_SCOPE_LENGTH = 1024
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def without_empty(form: Mapping[str, str]) -> dict[str, str]:
    """The parameters that have a value: RFC 6749 section 3.1 treats empty ones as omitted."""
    return {key: value for key, value in form.items() if value != ""}


def require(form: Mapping[str, str], name: str) -> str:
    """A required parameter, else 400 invalid_request naming it."""
    value = form.get(name)
    if value is None:
        raise BadRequest(f"missing parameter {name}")
    return value


# -- client authentication ------------------------------------------------------------


def authenticate_client(
    clients: Mapping[str, OAuthClient], authorization: str | None, form: Mapping[str, str]
) -> OAuthClient:
    """The registered client making the request (RFC 6749 section 2.3).

    ``authorization`` is the one ``Authorization`` header value, if any;  ``form`` the
    request's parameters with empty ones removed. Methods: ``client_secret_basic``,
    ``client_secret_post`` and ``none`` (public clients, ``client_id`` only). Two
    methods at once → BadRequest; unknown client or wrong secret → InvalidClient.
    """
    form_id = form.get("client_id")
    form_secret = form.get("client_secret")
    if authorization is not None:
        if form_secret is not None:
            raise BadRequest("client authenticated by more than one method")
        candidates = _basic_credentials(authorization)
        if form_id is not None and all(cid != form_id for cid, _ in candidates):
            raise BadRequest("client_id differs from the Basic credentials")
        for client_id, secret in candidates:
            client = clients.get(client_id)
            if client is not None and _secret_matches(client, secret):
                return client
        raise InvalidClient()
    if form_id is None:
        if form_secret is not None:
            raise BadRequest("client_secret without client_id")
        raise InvalidClient("client authentication required")
    client = clients.get(form_id)
    if client is None:
        raise InvalidClient()
    if form_secret is None:
        if client.confidential:
            raise InvalidClient("client authentication required")
        return client
    if not client.confidential or not _secret_matches(client, form_secret):
        raise InvalidClient()
    return client


def _secret_matches(client: OAuthClient, presented: str) -> bool:
    if client.secret is None:
        # A public client identifying itself through Basic with an empty secret.
        return presented == ""
    return hmac.compare_digest(presented.encode(), client.secret.encode())


def _basic_credentials(value: str) -> list[tuple[str, str]]:
    """The (client_id, secret) readings of a Basic header, raw first.

    RFC 6749 section 2.3.1 form-urlencodes both before base64; Authlib and many other
    clients do not (and Authlib encodes Latin-1). Every distinct reading is tried, each
    against the registered secret in constant time, so either spelling works.
    """
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient("unsupported client authentication scheme")
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidClient("malformed Basic credentials") from None
    texts: list[str] = []
    with contextlib.suppress(UnicodeDecodeError):
        texts.append(raw.decode("utf-8"))
    texts.append(raw.decode("latin-1"))
    readings: list[tuple[str, str]] = []
    for text in texts:
        client_id, sep, secret = text.partition(":")
        if not sep or not client_id:
            raise InvalidClient("malformed Basic credentials")
        readings.append((client_id, secret))
        with contextlib.suppress(UnicodeDecodeError):
            readings.append((_form_decode(client_id), _form_decode(secret)))
    return list(dict.fromkeys(readings))


def _form_decode(text: str) -> str:
    return unquote_plus(text, encoding="utf-8", errors="strict")


# -- scope ----------------------------------------------------------------------------


def parse_scope(raw: str | None) -> str | None:
    """A requested scope normalised (single spaces, no repeats), None when absent."""
    if raw is None:
        return None
    if len(raw) > MAX_SCOPE_LENGTH:
        raise InvalidScope("scope too long")
    tokens = [t for t in raw.split(" ") if t]
    if not tokens:
        return None
    for token in tokens:
        if not _SCOPE_TOKEN.fullmatch(token):
            raise InvalidScope("malformed scope")
    return " ".join(dict.fromkeys(tokens))


# -- the endpoints' use cases -----------------------------------------------------------


class OAuthServer:
    """The token, revocation and introspection use cases for authenticated clients."""

    def __init__(
        self,
        *,
        logins: Login,
        refreshes: Refresh,
        callers: Callers,
        session_control: SessionControl,
        tokens: TokenService,
        clock: Clock,
    ) -> None:
        self.logins = logins
        self.refreshes = refreshes
        self.callers = callers
        self.session_control = session_control
        self.tokens = tokens
        self.clock = clock

    async def token(
        self, client: OAuthClient, form: Mapping[str, str], origin: ClientInfo
    ) -> TokenPair:
        """Answer a token request (RFC 6749 section 5) for an authenticated client."""
        grant_type = require(form, "grant_type")
        if grant_type == "password":
            return await self.password_grant(client, form, origin)
        if grant_type == "refresh_token":
            return await self.refresh_grant(client, form, origin)
        raise UnsupportedGrantType(f"grant_type {grant_type[:40]!r} is not supported")

    async def password_grant(
        self, client: OAuthClient, form: Mapping[str, str], origin: ClientInfo
    ) -> TokenPair:
        """Resource owner password credentials (RFC 6749 section 4.3)."""
        username = require(form, "username")
        password = require(form, "password")
        scope = parse_scope(form.get("scope")) or ""
        try:
            # RFC 9449 section 5: a public client's refresh token is bound to its DPoP
            # key too; a confidential client's stays unbound (it authenticates itself).
            origin = replace(
                origin, client_id=client.client_id, bind_refresh=not client.confidential
            )
            return await self.logins.login(username, password, origin, scope)
        except InvalidCredentials as exc:
            raise InvalidGrant(exc.description) from None

    async def refresh_grant(
        self, client: OAuthClient, form: Mapping[str, str], origin: ClientInfo
    ) -> TokenPair:
        """Rotate a refresh token issued to this client (RFC 6749 section 6); a scope
        narrows the new access token's, never widens it."""
        token = require(form, "refresh_token")
        requested = parse_scope(form.get("scope"))
        try:
            return await self.refreshes.refresh(
                token, replace(origin, client_id=client.client_id), requested
            )
        except InvalidToken as exc:
            raise InvalidGrant(exc.description) from None

    async def revoke(self, client: OAuthClient, token: str, hint: str | None) -> TokenKind | None:
        """Revoke a token (RFC 7009); which kind was revoked, None for an invalid token."""
        found = self._identify(token, hint, self.clock())
        if found is None:
            return None
        kind, claims = found
        owner = claims.get("client_id")
        if owner is not None and owner != client.client_id:
            raise UnauthorizedClient("token was issued to another client")
        if kind == "refresh_token":
            await self.session_control.revoke_refresh_token(claims)
        else:
            await self.session_control.revoke_access_token(claims)
        return kind

    async def introspect(self, token: str, hint: str | None) -> dict[str, Any]:
        """The RFC 7662 answer: the token's claims when active, else only active=false."""
        found = self._identify(token, hint, self.clock())
        if found is None:
            return dict(INACTIVE)
        kind, claims = found
        if kind == "access_token":
            try:
                # A resource server introspects a bound token it got with its proof.
                principal = await self.callers.authenticate(token, check_binding=False)
            except InvalidToken:
                return dict(INACTIVE)
            username = principal.user.username
            token_type = "DPoP" if bound_key(claims) else "Bearer"
        else:
            holder = await self.callers.refresh_holder(claims)
            if holder is None:
                return dict(INACTIVE)
            username = holder[0].username
            token_type = "refresh_token"
            claims = {**claims, "scope": holder[1]}
        body: dict[str, Any] = {"active": True, "token_type": token_type, "username": username}
        # RFC 9449 section 6.2: a bound token's cnf (its key's thumbprint).
        names = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "sid", "cnf")
        for name in names:
            if claims.get(name):
                body[name] = claims[name]
        return body

    def _identify(
        self, token: str, hint: str | None, now: float
    ) -> tuple[TokenKind, dict[str, Any]] | None:
        """Which kind of tokend token this is, by verifying it; None when it is neither.

        The hint (or, without one, the unverified ``typ``) only orders the attempts: a
        wrong hint widens the search (RFC 7009 section 2.1) and an unknown one is ignored.
        """
        first: TokenKind
        if hint in TOKEN_KINDS:
            first = "refresh_token" if hint == "refresh_token" else "access_token"
        elif self.tokens.peek_type(token) == REFRESH_TYP:
            first = "refresh_token"
        else:
            first = "access_token"
        tokens = self.tokens
        for kind in sorted(TOKEN_KINDS, key=lambda k: k != first):
            try:
                if kind == "access_token":
                    return kind, tokens.verify_access(token, now)
                return kind, tokens.verify_refresh(token, now)
            except InvalidToken:
                continue
        return None
