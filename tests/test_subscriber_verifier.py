"""tokend_client.TokenVerifier against a real tokend: strict checks, JWKS cache, refetch limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp import ClientSession, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import tokend_client
from service.clock import FrozenClock
from service.devredis import free_port
from service.http.appkeys import CLOCK, KEYRING
from service.keys import public_jwk
from tests.support import register_and_login, unverified
from tokend_client import InvalidToken, JWKSUnavailable, TokenExpired, TokenVerifier

ISSUER = "http://127.0.0.1:8080"  # tokend's default TOKEND_ISSUER
AUDIENCE = "tokend"


class JwksProxy:
    """A tiny JWKS server in front of tokend's that counts fetches and can fail or add keys.

    ``/attacker.json`` serves an attacker's key set and counts hits too, for ``jku``.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits = 0
        self.attacker_hits = 0
        self.fail = False
        self.delay = 0.0
        self.extra_keys: list[dict[str, Any]] = []
        self.attacker_keys: list[dict[str, Any]] = []
        self.url = ""
        self.attacker_url = ""

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            return web.Response(status=502)
        async with ClientSession() as session, session.get(self.upstream) as resp:
            body = await resp.json()
        return web.json_response({"keys": body["keys"] + self.extra_keys})

    async def attacker(self, request: web.Request) -> web.Response:
        self.attacker_hits += 1
        return web.json_response({"keys": self.attacker_keys})


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client()


@pytest.fixture
async def proxy(tokend: Any, aiohttp_server: Any) -> JwksProxy:
    p = JwksProxy(str(tokend.make_url("/.well-known/jwks.json")))
    app = web.Application()
    app.router.add_get("/jwks.json", p.jwks)
    app.router.add_get("/attacker.json", p.attacker)
    server = await aiohttp_server(app)
    p.url = str(server.make_url("/jwks.json"))
    p.attacker_url = str(server.make_url("/attacker.json"))
    return p


VerifierFactory = Callable[..., TokenVerifier]


@pytest.fixture
async def make_verifier(proxy: JwksProxy) -> AsyncIterator[VerifierFactory]:
    made: list[TokenVerifier] = []

    def make(**kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("audience", AUDIENCE)
        url = kwargs.pop("jwks_url", proxy.url)
        verifier = TokenVerifier(url, **kwargs)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def sign_with_tokend_key(tokend: Any, claims: dict[str, Any], **headers: Any) -> str:
    """A token signed with tokend's real signing key, with any header or claims we like."""
    key = tokend.app[KEYRING].signing_key(tokend.app[CLOCK]())
    return jwt.encode(
        claims, key.private, algorithm=key.alg, headers={"typ": "at+jwt", "kid": key.kid, **headers}
    )


def attacker_key() -> tuple[ed25519.Ed25519PrivateKey, dict[str, Any]]:
    private = ed25519.Ed25519PrivateKey.generate()
    return private, public_jwk(private.public_key(), "EdDSA")


async def login_claims(
    tokend: Any, username: str = "alice"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(token body, unverified access-token claims) of a fresh login."""
    tokens = await register_and_login(tokend, username)
    return tokens, unverified(tokens["access_token"])[1]


async def rejected(verify: Awaitable[Any], match: str | None = None) -> InvalidToken:
    with pytest.raises(InvalidToken, match=match) as info:
        await verify
    return info.value


def test_public_surface_and_no_server_imports() -> None:
    assert sorted(tokend_client.__all__) == sorted(
        [
            "Answer",
            "BackgroundListener",
            "CLAIMS_KEY",
            "FileTokenStore",
            "Guard",
            "Subscriber",
            "SubscriberSettings",
            "has_scope",
            "InvalidToken",
            "JWKSUnavailable",
            "LoginFailed",
            "LoginHook",
            "LoginRequired",
            "MemoryTokenStore",
            "RedisTarget",
            "RevocationListener",
            "TokenExpired",
            "TokenRevoked",
            "TokenSession",
            "TokenStore",
            "TokenVerifier",
            "TokendClientError",
            "TokendUnavailable",
            "Tokens",
            "auth_middleware",
            "setup",
        ]
    )
    for name in tokend_client.__all__:
        assert getattr(tokend_client, name) is not None
    for name in (
        "InvalidToken",
        "JWKSUnavailable",
        "LoginRequired",
        "LoginFailed",
        "TokendUnavailable",
    ):
        assert issubclass(getattr(tokend_client, name), tokend_client.TokendClientError)
    assert issubclass(tokend_client.TokenExpired, InvalidToken)
    assert issubclass(tokend_client.TokenRevoked, InvalidToken)
    code = (
        "import sys, tokend_client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('service', 'workers')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
async def test_verifies_a_real_login_token(make_client, aiohttp_server, alg) -> None:
    tokend = await make_client(TOKEND_SIGNING_ALG=alg)
    tokens, expected = await login_claims(tokend)
    async with TokenVerifier(
        tokend.make_url("/.well-known/jwks.json"), issuer=ISSUER, audience=AUDIENCE
    ) as verifier:
        claims = await verifier.verify(tokens["access_token"])
    assert claims == expected
    assert {"sub", "sid", "jti", "iat", "exp"} <= claims.keys()


async def test_expiry_gets_no_leeway_by_default_and_issue_time_gets_leeway(
    tokend, make_verifier
) -> None:
    # tokend's clock rule: an expired token is expired, whatever the leeway on iat/nbf
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["exp"] - 0.5)
    verifier = make_verifier(clock=clock, leeway=30)
    assert verifier.exp_leeway == 0
    assert (await verifier.verify(tokens["access_token"]))["sid"] == claims["sid"]
    clock.now = claims["exp"]
    error = await rejected(verifier.verify(tokens["access_token"]), "expired")
    assert isinstance(error, TokenExpired)
    # an explicit exp leeway of a few seconds holds, and no more than MAX_EXP_LEEWAY is taken
    lenient = make_verifier(clock=FrozenClock(claims["exp"] + 4), exp_leeway=5)
    await lenient.verify(tokens["access_token"])
    lenient_late = make_verifier(clock=FrozenClock(claims["exp"] + 5), exp_leeway=5)
    with pytest.raises(TokenExpired):
        await lenient_late.verify(tokens["access_token"])
    with pytest.raises(ValueError, match="exp_leeway"):
        make_verifier(exp_leeway=6)
    # a clock behind the issuer's: iat up to leeway in the future passes, beyond it not
    clock.now = claims["iat"] - 29
    await verifier.verify(tokens["access_token"])
    clock.now = claims["iat"] - 31
    await rejected(verifier.verify(tokens["access_token"]), "future")


async def test_not_before_in_the_future_is_rejected(tokend, make_verifier) -> None:
    _, claims = await login_claims(tokend)
    verifier = make_verifier(clock=FrozenClock(claims["iat"]), leeway=30)
    await verifier.verify(sign_with_tokend_key(tokend, {**claims, "nbf": claims["iat"] + 29}))
    token = sign_with_tokend_key(tokend, {**claims, "nbf": claims["iat"] + 31})
    await rejected(verifier.verify(token), "not yet valid")


async def test_wrong_issuer_or_audience_is_rejected(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    await rejected(make_verifier(issuer=ISSUER + "/").verify(tokens["access_token"]), "issuer")
    await rejected(make_verifier(audience="other").verify(tokens["access_token"]), "audience")
    verifier = make_verifier()
    for changed in ({"iss": "https://evil.example"}, {"aud": "other"}, {"aud": ["other"]}):
        token = sign_with_tokend_key(tokend, {**claims, **changed})
        await rejected(verifier.verify(token), "wrong")


async def test_refresh_token_is_not_an_access_token(tokend, make_verifier) -> None:
    tokens, _ = await login_claims(tokend)
    assert unverified(tokens["refresh_token"])[0]["typ"] == "rt+jwt"
    await rejected(make_verifier().verify(tokens["refresh_token"]), "not an access token")


async def test_bad_claims_with_a_valid_signature_are_rejected(tokend, make_verifier) -> None:
    _, claims = await login_claims(tokend)
    verifier = make_verifier()
    # PyJWT itself would accept a string exp
    await rejected(
        verifier.verify(sign_with_tokend_key(tokend, {**claims, "exp": str(claims["exp"])})),
        "number",
    )
    for name in ("sid", "jti", "sub", "exp", "iat"):
        token = sign_with_tokend_key(tokend, {k: v for k, v in claims.items() if k != name})
        await rejected(verifier.verify(token), "missing claim")
    await rejected(verifier.verify(sign_with_tokend_key(tokend, {**claims, "sid": ""})), "sid")
    await rejected(
        verifier.verify(sign_with_tokend_key(tokend, claims, typ="JWT")), "not an access token"
    )


async def test_tampered_claims_fail_the_signature(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    head, _, sig = tokens["access_token"].split(".")
    forged_payload = b64(json.dumps({**claims, "sub": "someone-else"}).encode())
    await rejected(make_verifier().verify(f"{head}.{forged_payload}.{sig}"), "bad signature")


async def test_alg_none_is_rejected(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    header = unverified(tokens["access_token"])[0]
    for alg in ("none", "None", "NONE"):
        token = raw_token({**header, "alg": alg}, claims, lambda _: b"")
        await rejected(make_verifier().verify(token))


async def test_hs256_signed_with_the_public_key_is_rejected(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    header = unverified(tokens["access_token"])[0]
    ring_key = tokend.app[KEYRING].get(header["kid"])
    pem = ring_key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = ring_key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk_json = json.dumps(ring_key.jwk).encode()
    verifier = make_verifier()
    for secret in (pem, raw, jwk_json, ring_key.jwk["x"].encode()):
        token = raw_token(
            {**header, "alg": "HS256"},
            claims,
            lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
        )
        await rejected(verifier.verify(token), "algorithm not allowed")


async def test_unknown_kid_costs_one_rate_limited_refetch(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, min_refetch_interval=30, cache_ttl=300)
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 1
    private, jwk = attacker_key()
    forged = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    # right after a fetch the unknown kid is rejected without another one
    await rejected(verifier.verify(forged), "unknown signing key")
    assert proxy.hits == 1
    clock.now += 30
    await rejected(verifier.verify(forged), "unknown signing key")
    assert proxy.hits == 2  # exactly one refetch ...
    for _ in range(20):
        await rejected(verifier.verify(forged), "unknown signing key")
    clock.now += 29
    await rejected(verifier.verify(forged), "unknown signing key")
    assert proxy.hits == 2  # ... and no more within the interval
    # concurrent callers share one refetch
    clock.now += 1
    results = await asyncio.gather(
        *(verifier.verify(forged) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, InvalidToken) for r in results)
    assert proxy.hits == 3
    # the valid token kept working throughout from the cache
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 3


async def test_a_key_published_later_is_found_by_the_refetch(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, min_refetch_interval=30)
    await verifier.verify(tokens["access_token"])
    private, jwk = attacker_key()  # stands in for tokend's next key
    proxy.extra_keys = [jwk]
    token = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    clock.now += 30
    assert (await verifier.verify(token))["sid"] == claims["sid"]
    assert proxy.hits == 2
    assert jwk["kid"] in verifier.kids


async def test_concurrent_callers_with_a_new_kid_all_wait_for_one_refetch(
    tokend, proxy, make_verifier
) -> None:
    """The fetch the first caller starts serves everyone: none fails on the rate limit."""
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, min_refetch_interval=30)
    await verifier.verify(tokens["access_token"])
    private, jwk = attacker_key()  # stands in for tokend's next key
    proxy.extra_keys = [jwk]
    token = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    clock.now += 30
    proxy.delay = 0.2
    first = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0.05)  # the refetch is under way when the others arrive
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert {r["sid"] for r in [await first, *results]} == {claims["sid"]}
    assert proxy.hits == 2


async def test_jku_and_jwk_headers_are_never_followed(tokend, proxy, make_verifier) -> None:
    _, claims = await login_claims(tokend)
    verifier = make_verifier(min_refetch_interval=0)
    private, jwk = attacker_key()
    proxy.attacker_keys = [jwk]
    attacker_headers: list[dict[str, Any]] = [
        {"jku": proxy.attacker_url},
        {"x5u": proxy.attacker_url},
        {"jwk": jwk},
        {"jku": proxy.attacker_url, "jwk": jwk},
    ]
    for extra in attacker_headers:
        token = jwt.encode(
            claims,
            private,
            algorithm="EdDSA",
            headers={"typ": "at+jwt", "kid": jwk["kid"], **extra},
        )
        await rejected(verifier.verify(token), "external key material")
        # the same header on a token that tokend's own key signed is refused as well
        await rejected(
            verifier.verify(sign_with_tokend_key(tokend, claims, **extra)),
            "external key material",
        )
    assert proxy.attacker_hits == 0
    # without the forbidden header the attacker's kid is simply unknown
    token = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    await rejected(verifier.verify(token), "unknown signing key")
    assert proxy.attacker_hits == 0


async def test_jwks_is_cached_for_its_ttl(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, cache_ttl=300, min_refetch_interval=30)
    await asyncio.gather(*(verifier.verify(tokens["access_token"]) for _ in range(20)))
    for _ in range(20):
        await verifier.verify(tokens["access_token"])
    assert proxy.hits == 1
    clock.now += 299
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 1
    clock.now += 1
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 2


async def test_stale_keys_serve_while_the_jwks_is_down(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, cache_ttl=60, min_refetch_interval=30)
    await verifier.verify(tokens["access_token"])
    proxy.fail = True
    clock.now += 60
    await verifier.verify(tokens["access_token"])  # refetch failed; cached keys still used
    assert (proxy.hits, verifier.fetch_errors) == (2, 1)
    for _ in range(10):
        await verifier.verify(tokens["access_token"])
    assert proxy.hits == 2  # failed refetches are retried once per interval, not per request
    proxy.fail = False
    clock.now += 30
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 3


async def test_no_keys_at_all_is_jwks_unavailable(tokend, proxy, make_verifier) -> None:
    tokens, _ = await login_claims(tokend)
    dead = make_verifier(jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    with pytest.raises(JWKSUnavailable) as info:
        await dead.verify(tokens["access_token"])
    assert info.value.status == 503 and info.value.retry_after >= 1
    proxy.fail = True
    with pytest.raises(JWKSUnavailable):
        await make_verifier().verify(tokens["access_token"])
    # a malformed token is refused before any fetch
    hits = proxy.hits
    await rejected(make_verifier().verify("not.a.jwt"), "malformed")
    assert proxy.hits == hits


async def test_request_refresh_refetches_within_the_rate_limit(
    tokend, proxy, make_verifier
) -> None:
    tokens, claims = await login_claims(tokend)
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, cache_ttl=300, min_refetch_interval=30)
    await verifier.verify(tokens["access_token"])
    verifier.request_refresh()  # key.rotated right after a fetch: wait for the interval
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 1
    clock.now += 30
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 2
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 2  # one refetch per request_refresh


async def test_unusable_jwks_entries_are_skipped(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    private, jwk = attacker_key()
    private_jwk = jwt.algorithms.OKPAlgorithm.to_jwk(private, as_dict=True)
    secret = {"kty": "oct", "k": b64(b"0" * 32), "kid": "hmac", "alg": "HS256"}
    proxy.extra_keys = [
        {**jwk, "alg": "HS256"},  # alg the key type cannot have
        {**private_jwk, "kid": "with-private-part", "alg": "EdDSA"},
        secret,
        {k: v for k, v in jwk.items() if k != "kid"},
        {**jwk, "kid": "enc-key", "use": "enc"},
        "not an object",
    ]
    verifier = make_verifier()
    await verifier.verify(tokens["access_token"])
    assert verifier.kids == {unverified(tokens["access_token"])[0]["kid"]}
    hs = jwt.encode(claims, b"0" * 32, algorithm="HS256", headers={"typ": "at+jwt", "kid": "hmac"})
    await rejected(verifier.verify(hs), "unknown signing key")


# the verified-token cache


async def test_a_cached_token_still_expires_at_exp(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    token = tokens["access_token"]
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, leeway=30)
    await verifier.verify(token)
    assert (verifier.cache_misses, verifier.cache_hits, verifier.cached_tokens) == (1, 0, 1)
    clock.now = claims["exp"] - 0.5
    assert (await verifier.verify(token))["sid"] == claims["sid"]
    assert verifier.cache_hits == 1  # answered from the cache, time checked all the same
    clock.now = claims["exp"]
    await rejected(verifier.verify(token), "expired")
    assert verifier.cache_hits == 1 and verifier.cached_tokens == 0  # and dropped
    # with an exp leeway a cached token is refused once the leeway is over
    strict_clock = FrozenClock(claims["exp"] + 1)
    strict = make_verifier(clock=strict_clock, exp_leeway=2)
    await strict.verify(token)
    await strict.verify(token)
    assert strict.cache_hits == 1
    strict_clock.now = claims["exp"] + 2
    with pytest.raises(TokenExpired):
        await strict.verify(token)


async def test_failures_are_never_cached_and_do_not_touch_good_entries(
    tokend, make_verifier
) -> None:
    tokens, claims = await login_claims(tokend)
    token = tokens["access_token"]
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, leeway=30)
    await verifier.verify(token)
    head, _, sig = token.split(".")
    tampered = f"{head}.{b64(json.dumps({**claims, 'sub': 'mallory'}).encode())}.{sig}"
    not_yet = sign_with_tokend_key(tokend, {**claims, "nbf": claims["iat"] + 60})
    for _ in range(3):
        await rejected(verifier.verify(tampered), "bad signature")
        await rejected(verifier.verify(not_yet), "not yet valid")
        assert (await verifier.verify(token))["sub"] == claims["sub"]
    assert verifier.cached_tokens == 1  # only the good token
    assert (verifier.cache_hits, verifier.cache_misses) == (3, 7)  # every failure re-verified
    # once valid, the formerly early token is verified in full, then cached
    clock.now = claims["iat"] + 31
    await verifier.verify(not_yet)
    await verifier.verify(not_yet)
    assert (verifier.cache_hits, verifier.cache_misses, verifier.cached_tokens) == (4, 8, 2)


async def test_callers_cannot_change_the_cached_claims(tokend, make_verifier) -> None:
    _, claims = await login_claims(tokend)
    token = sign_with_tokend_key(tokend, {**claims, "roles": ["reader"], "ctx": {"t": 1}})
    verifier = make_verifier()
    first = await verifier.verify(token)
    for _ in range(2):
        got = await verifier.verify(token)
        assert got == first == {**claims, "roles": ["reader"], "ctx": {"t": 1}}
        got["sub"] = "mallory"
        got["roles"].append("admin")
        got["ctx"]["t"] = 2
        got["extra"] = True
    first["sid"] = "changed by the first caller"
    assert await verifier.verify(token) == {**claims, "roles": ["reader"], "ctx": {"t": 1}}
    assert verifier.cache_hits == 3


async def test_tokens_of_a_key_that_left_the_jwks_are_evicted(tokend, proxy, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    private, jwk = attacker_key()  # stands in for a second key of the issuer
    proxy.extra_keys = [jwk]
    other = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, cache_ttl=300, min_refetch_interval=30)
    for _ in range(2):
        await verifier.verify(tokens["access_token"])
        await verifier.verify(other)
    assert (verifier.cache_hits, verifier.cached_tokens) == (2, 2)
    proxy.extra_keys = []
    clock.now += 300  # the next verification refetches the JWKS
    await verifier.verify(tokens["access_token"])
    assert proxy.hits == 2
    assert verifier.cached_tokens == 1  # the other key's token is gone ...
    await rejected(verifier.verify(other), "unknown signing key")  # ... and refused
    assert verifier.cache_hits == 3  # tokend's own token was still served from the cache


async def test_tokens_of_a_key_changed_under_its_kid_are_evicted(
    tokend, proxy, make_verifier
) -> None:
    tokens, claims = await login_claims(tokend)
    private, jwk = attacker_key()
    proxy.extra_keys = [jwk]
    other = jwt.encode(
        claims, private, algorithm="EdDSA", headers={"typ": "at+jwt", "kid": jwk["kid"]}
    )
    clock = FrozenClock(claims["iat"])
    verifier = make_verifier(clock=clock, min_refetch_interval=30)
    await verifier.verify(tokens["access_token"])
    await verifier.verify(other)
    _, replacement = attacker_key()
    proxy.extra_keys = [{**replacement, "kid": jwk["kid"]}]
    verifier.request_refresh()  # as on key.rotated
    clock.now += 30
    await rejected(verifier.verify(other), "bad signature")
    assert proxy.hits == 2
    assert verifier.cached_tokens == 1
    # an unchanged key keeps its tokens across refetches
    await verifier.verify(tokens["access_token"])
    assert verifier.cache_hits == 1


async def test_the_cache_holds_at_most_cache_size_tokens(tokend, make_verifier) -> None:
    _, claims = await login_claims(tokend)
    made = [sign_with_tokend_key(tokend, {**claims, "jti": f"jti-{i}"}) for i in range(5)]
    verifier = make_verifier(cache_size=3)
    assert verifier.cache_size == 3
    for token in made[:3]:
        await verifier.verify(token)
    await verifier.verify(made[0])  # now the most recently used: made[1] goes first
    for token in made[3:]:
        await verifier.verify(token)
    assert verifier.cached_tokens == 3
    assert (verifier.cache_hits, verifier.cache_misses) == (1, 5)
    for token in (made[0], made[3], made[4]):
        await verifier.verify(token)
    assert (verifier.cache_hits, verifier.cache_misses) == (4, 5)
    await verifier.verify(made[1])  # evicted: verified in full again
    assert (verifier.cache_hits, verifier.cache_misses, verifier.cached_tokens) == (4, 6, 3)


async def test_cache_size_zero_disables_the_cache(tokend, make_verifier) -> None:
    tokens, claims = await login_claims(tokend)
    verifier = make_verifier(cache_size=0)
    for _ in range(3):
        assert (await verifier.verify(tokens["access_token"]))["sid"] == claims["sid"]
    assert (verifier.cache_hits, verifier.cache_misses, verifier.cached_tokens) == (0, 3, 0)
    with pytest.raises(ValueError, match="cache_size"):
        make_verifier(cache_size=-1)


async def test_only_the_unpadded_spelling_of_a_token_is_cached(tokend, make_verifier) -> None:
    """PyJWT accepts a padded signature too; one token must not fill the cache."""
    tokens, claims = await login_claims(tokend)
    token = tokens["access_token"]
    verifier = make_verifier()
    for _ in range(2):
        assert (await verifier.verify(token + "=="))["sid"] == claims["sid"]
    assert (verifier.cache_hits, verifier.cached_tokens) == (0, 0)
    await verifier.verify(token)
    await verifier.verify(token)
    assert (verifier.cache_hits, verifier.cached_tokens) == (1, 1)
