"""An OpenID provider of the test's own: discovery, JWKS, an authorization endpoint that
approves every login at once, and a token endpoint whose answer a test may set.

The unit tests of the relying party (tests/test_oidc_idtoken.py) sign ID tokens with
``add_key``/``sign``/``claims`` and set ``token_answer``; the schemathesis run
(tests/test_openapi.py) uses ``FakeProvider.approving``: every login is approved for a new
subject and the code is exchanged for a fresh ID token. ``login_claims`` go into the ID
tokens of the next logins (a fixed ``sub``, a ``sid``); ``logout_token`` signs an OpenID
Connect Back-Channel Logout token (tests/test_backchannel_rp.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def new_key(alg: str) -> Any:
    """A private key for ``alg`` (RS*/PS*: RSA 2048, ES256: P-256, else Ed25519)."""
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(key: Any, kid: str, alg: str | None) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {**jwk, "kid": kid, "use": "sig"}
    if alg:
        jwk["alg"] = alg
    return jwk


class FakeProvider:
    """Discovery, JWKS, authorization and token endpoints; ``issuer`` is set by the test
    once the app is served. ``token_answer`` None: the token endpoint exchanges a code
    from ``/authorize`` for an ID token signed with the first key."""

    def __init__(
        self, client_id: str = "tokend", *, now: float | None = None, nonce: str = ""
    ) -> None:
        self.client_id = client_id
        self.now = now  # the ``iat`` of ``claims()``; None: the wall clock
        self.nonce = nonce
        self.keys: dict[str, tuple[Any, str]] = {}
        self.published: list[dict[str, Any]] = []
        self.hits = {"discovery": 0, "jwks": 0, "token": 0, "authorize": 0}
        self.discovery_extra: dict[str, Any] = {}
        self.discovery_status = 200
        self.token_answer: tuple[int, Any] | None = None
        self.token_requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.token_delay = 0.0
        self.codes: dict[str, dict[str, Any]] = {}
        self.issuer = ""
        self.login_claims: dict[str, Any] = {}
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        self.app = app

    @classmethod
    def approving(cls, client_id: str) -> FakeProvider:
        """A provider that approves every login (a new subject each time), EdDSA key k1."""
        provider = cls(client_id)
        provider.add_key("EdDSA", "k1")
        provider.discovery_extra = {
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "authorization_response_iss_parameter_supported": True,
        }
        return provider

    def add_key(self, alg: str, kid: str, *, publish: bool = True, jwk_alg: str | None = "") -> Any:
        key = new_key(alg)
        self.keys[kid] = (key, alg)
        if publish:
            self.published.append(public_jwk(key, kid, alg if jwk_alg == "" else jwk_alg))
        return key

    def sign(self, claims: dict[str, Any], kid: str | None, *, alg: str | None = None) -> str:
        key, key_alg = self.keys[kid or next(iter(self.keys))]
        headers = {"kid": kid} if kid else {}
        return jwt.encode(claims, key, algorithm=alg or key_alg, headers=headers)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """ID token claims for this provider and client; an override of None drops one."""
        now = int(time.time() if self.now is None else self.now)
        claims = {
            "iss": self.issuer,
            "sub": "248289761001",
            "aud": self.client_id,
            "exp": now + 300,
            "iat": now,
            "nonce": self.nonce,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def logout_claims(self, **overrides: Any) -> dict[str, Any]:
        """Back-Channel Logout token claims (section 2.4) for this provider and client; an
        override of None drops one."""
        now = int(time.time() if self.now is None else self.now)
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def logout_token(
        self,
        *,
        kid: str | None = None,
        alg: str | None = None,
        typ: str | None = "logout+jwt",
        **claims: Any,
    ) -> str:
        """A logout token signed with key ``kid`` (default: the first), ``typ`` header."""
        key, key_alg = self.keys[kid or next(iter(self.keys))]
        # PyJWT writes typ "JWT" unless told otherwise; None leaves typ out.
        headers: dict[str, Any] = {"kid": kid or next(iter(self.keys)), "typ": typ}
        return jwt.encode(
            self.logout_claims(**claims), key, algorithm=alg or key_alg, headers=headers
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        if self.discovery_status != 200:
            return web.Response(status=self.discovery_status, text="down")
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            **self.discovery_extra,
        }
        return web.json_response(doc)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        return web.json_response({"keys": self.published})

    async def _authorize(self, request: web.Request) -> web.Response:
        """Every login is approved, each for a new account (a new subject)."""
        self.hits["authorize"] += 1
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": request.query["nonce"],
            "sub": uuid.uuid4().hex,
            **self.login_claims,
        }
        query = urlencode({"code": code, "state": request.query["state"], "iss": self.issuer})
        raise web.HTTPFound(f"{request.query['redirect_uri']}?{query}")

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        form = await request.post()
        self.token_requests.append((dict(form), dict(request.headers)))  # type: ignore[arg-type]
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if self.token_answer is not None:
            status, body = self.token_answer
            if isinstance(body, str):
                return web.Response(status=status, text=body)
            return web.json_response(body, status=status)
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        claims = self.claims(email=f"{grant['sub'][:8]}@example.org", **grant)
        claims["iat"] = now = int(time.time())
        claims["exp"] = now + 300
        return web.json_response(
            {
                "access_token": "opaque",
                "token_type": "Bearer",
                "id_token": self.sign(claims, next(iter(self.keys))),
            }
        )
