"""OpenID Connect Back-Channel Logout 1.0, tokend as the OpenID provider (docs/webhooks.md).

Every OAuth client of TOKEND_OAUTH_CLIENTS with a ``backchannel_logout_uri`` is one more
endpoint of the durable delivery engine (workers/webhooks.py), with the id
``bcl-<client id>``: its own position, lease, retries and dead letters per partition,
listed by ``tokend webhooks status``. It takes

- ``session.revoked`` of the client's sessions (the event's ``cid``, written by the Lua
  scripts from the session hash): a logout token with the session's ``sid`` and ``sub``;
- ``user.revoked`` (every session of a user, O(1) by a revocation mark, so the sessions
  are not listed): a logout token with ``sub`` only, which section 2.4 allows ("log out
  every session of this user at this OP"), to every back-channel client.

Each attempt POSTs ``logout_token=<JWT>`` form-encoded, the JWT signed afresh (new
``jti``, ``iat``, ``exp`` = ``iat`` + LIFETIME) with tokend's current signing key, the one
that signs access tokens, so the client verifies it from tokend's JWKS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from service.errors import TokendError
from service.keys import KeyRing, SqlKeyStore
from service.settings import OAuthClient, Settings
from service.webhook_settings import backchannel_endpoint_id

from .webhooks_store import Attempt, Target, WebhookTarget, post

log = logging.getLogger("tokend.backchannel")

EVENT = "http://schemas.openid.net/event/backchannel-logout"
TYP = "logout+jwt"
# Seconds a logout token is valid: it is signed per attempt, so it only has to survive
# the request and the receiver's clock skew.
LIFETIME = 120
# How often the signer reloads the keys from SQL (a rotated key is published in the
# JWKS TOKEND_KEY_PUBLISH_DELAY before it signs, so a ring this stale still signs with a
# published key).
RELOAD_EVERY = 30.0


class LogoutSigner:
    """Signs logout tokens with the current signing key, from the same SQL key store and
    KeyRing the API signs access tokens with (the private keys unsealed by SqlKeyStore)."""

    def __init__(self, store: SqlKeyStore, settings: Settings) -> None:
        self.store = store
        self.issuer = settings.issuer
        self.ring = KeyRing(access_ttl=settings.access_ttl, leeway=settings.leeway)
        self._loaded_at: float | None = None

    async def sign(self, claims: dict[str, Any], now: float) -> str:
        if self._loaded_at is None or now - self._loaded_at > RELOAD_EVERY:
            self.ring.replace(await self.store.load())
            self._loaded_at = now
        try:
            key = self.ring.signing_key(now)
        except LookupError:
            self._loaded_at = None  # the API has not created the first key yet: reload
            raise
        return jwt.encode(
            {"iss": self.issuer, **claims},
            key.private,
            algorithm=key.alg,
            headers={"typ": TYP, "kid": key.kid},
        )


def logout_claims(client: OAuthClient, event: dict[str, Any], now: float) -> dict[str, Any]:
    """The claims of the logout token for ``event`` (without ``iss``): section 2.4, no
    ``nonce``; ``sid`` when a single session ended."""
    iat = int(now)
    claims: dict[str, Any] = {
        "aud": client.client_id,
        "iat": iat,
        "exp": iat + LIFETIME,
        "jti": uuid.uuid4().hex,
        "sub": event["sub"],
        "events": {EVENT: {}},
    }
    if event.get("type") == "session.revoked":
        claims["sid"] = event["sid"]  # one session: the client ends that one only
    return claims


@dataclass(frozen=True)
class BackchannelTarget:
    """A client's ``backchannel_logout_uri`` as a delivery endpoint (see the module)."""

    client: OAuthClient
    signer: LogoutSigner | None  # None: listing only (`tokend webhooks status`)

    @property
    def id(self) -> str:
        return backchannel_endpoint_id(self.client.client_id)

    @property
    def url(self) -> str:
        assert self.client.backchannel_logout_uri is not None
        return self.client.backchannel_logout_uri

    def wants(self, event: dict[str, Any]) -> bool:
        if not isinstance(event.get("sub"), str):
            return False
        kind = event.get("type")
        if kind == "user.revoked":
            return True
        return (
            kind == "session.revoked"
            and event.get("cid") == self.client.client_id
            and isinstance(event.get("sid"), str)
        )

    async def send(
        self, http: aiohttp.ClientSession, msg_id: str, body: str, seconds: float
    ) -> Attempt:
        if self.signer is None:
            return Attempt(False, "no signing keys (listing only)")
        now = time.time()
        try:
            claims = logout_claims(self.client, json.loads(body), now)
            token = await self.signer.sign(claims, now)
        except LookupError:
            return Attempt(False, "no signing key yet")
        except (TokendError, OSError) as exc:
            return Attempt(False, f"cannot load the signing keys: {exc}"[:300])
        except (ValueError, KeyError, TypeError) as exc:
            return Attempt(False, f"malformed event: {exc}"[:300])
        form = urlencode({"logout_token": token}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await post(http, self.url, form, headers, seconds)


def backchannel_clients(settings: Settings) -> list[OAuthClient]:
    return [c for c in settings.oauth_clients.values() if c.backchannel_logout_uri]


def delivery_targets(settings: Settings, signer: LogoutSigner | None) -> list[Target]:
    """Every delivery endpoint: TOKEND_WEBHOOKS, then the back-channel logout URIs."""
    targets: list[Target] = [WebhookTarget(e) for e in settings.webhooks]
    targets.extend(BackchannelTarget(c, signer) for c in backchannel_clients(settings))
    return targets


@contextlib.asynccontextmanager
async def open_targets(settings: Settings) -> AsyncIterator[list[Target]]:
    """The delivery endpoints for a command (`tokend webhooks retry`): with back-channel
    clients, a signer over the SQL key store, closed afterwards."""
    if not backchannel_clients(settings):
        yield delivery_targets(settings, None)
        return
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from service.crypto import Sealer
    from service.db import make_engine
    from service.kek import resolve_kek

    engine = make_engine(settings.database_url)
    try:
        store = SqlKeyStore(async_sessionmaker(engine), Sealer(resolve_kek(settings)))
        yield delivery_targets(settings, LogoutSigner(store, settings))
    finally:
        await engine.dispose()
