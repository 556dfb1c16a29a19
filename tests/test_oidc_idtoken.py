"""The relying party's checks, unit by unit: ID tokens signed here and served with discovery
and JWKS by a tiny aiohttp server of the test's own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from service import oidc
from service.clock import FrozenClock
from service.devredis import free_port
from service.errors import ProviderUnavailable, SocialLoginFailed
from service.http.errors import code_of, status_of
from service.oidc import ProviderClient, pkce_challenge
from service.settings import OIDCProvider
from tests.support.oidc import FakeProvider

CLIENT_ID = "tokend"
NONCE = "n-0S6_WzA2Mj"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


CLOCK_START = 1_800_000_000.0


Setup = tuple[FakeProvider, ProviderClient, FrozenClock]


@pytest.fixture
async def fake(aiohttp_server: Any) -> AsyncIterator[Callable[..., Awaitable[Setup]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def make() -> Setup:
        provider = FakeProvider(CLIENT_ID, now=CLOCK_START, nonce=NONCE)
        provider.token_answer = (200, {})
        server = await aiohttp_server(provider.app)
        provider.issuer = str(server.make_url("")).rstrip("/")
        http = aiohttp.ClientSession()
        sessions.append(http)
        ticker = FrozenClock(1000.0)  # the monotonic clock the test moves
        client = ProviderClient(
            OIDCProvider("fake", provider.issuer, CLIENT_ID, "secret"),
            http,
            clock=FrozenClock(CLOCK_START),
            leeway=30,
            monotonic=ticker,
        )
        return provider, client, ticker

    yield make
    for http in sessions:
        await http.close()


async def _refused(client: ProviderClient, token: str, words: str) -> None:
    with pytest.raises(SocialLoginFailed) as info:
        await client.verify_id_token(token, NONCE)
    assert (status_of(type(info.value)), code_of(type(info.value))) == (400, "invalid_grant")
    assert words in info.value.description


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "PS256"])
async def test_valid_id_token(fake: Any, alg: str) -> None:
    provider, client, _ = await fake()
    provider.add_key(alg, "k1")
    claims = await client.verify_id_token(provider.sign(provider.claims(), "k1"), NONCE)
    assert claims["sub"] == "248289761001"
    account = client.account({**claims, "email": "a@example.com"})
    assert (account.issuer, account.subject, account.email) == (
        provider.issuer,
        "248289761001",
        "a@example.com",
    )


async def test_claim_checks(fake: Any) -> None:
    provider, client, _ = await fake()
    provider.add_key("ES256", "k1")

    def token(**overrides: Any) -> str:
        return provider.sign(provider.claims(**overrides), "k1")

    await _refused(client, token(iss=provider.issuer + "/"), "iss")
    await _refused(client, token(iss="https://evil.example.com"), "iss")
    await _refused(client, token(aud="someone-else"), "aud")
    await _refused(client, token(aud=["someone-else", "another"]), "aud")
    await _refused(client, token(exp=int(CLOCK_START) - 31), "expired")
    await _refused(client, token(exp=str(int(CLOCK_START) + 300)), "exp is not a number")
    await _refused(client, token(iat=int(CLOCK_START) + 120), "not valid yet")
    await _refused(client, token(nbf=int(CLOCK_START) + 120), "not valid yet")
    await _refused(client, token(nonce="another"), "nonce")
    await _refused(client, token(nonce=None), "nonce")
    await _refused(client, token(sub=None), "invalid")
    await _refused(client, token(sub="x" * 256), "sub")
    # azp: required with several audiences, and must be tokend when present.
    await _refused(client, token(aud=[CLIENT_ID, "other"]), "azp")
    await _refused(client, token(aud=[CLIENT_ID, "other"], azp="other"), "azp")
    await _refused(client, token(azp="other"), "azp")
    ok = await client.verify_id_token(token(aud=[CLIENT_ID, "other"], azp=CLIENT_ID), NONCE)
    assert ok["azp"] == CLIENT_ID
    # Within the leeway is fine.
    assert await client.verify_id_token(token(exp=int(CLOCK_START) - 29), NONCE)


async def test_alg_none_and_hmac_with_the_jwk_are_refused(fake: Any) -> None:
    provider, client, _ = await fake()
    key = provider.add_key("RS256", "k1")
    claims = provider.claims()
    body = _b64(json.dumps(claims).encode())

    none = f"{_b64(json.dumps({'alg': 'none', 'kid': 'k1'}).encode())}.{body}."
    await _refused(client, none, "'none' is not accepted")

    # HS256 "signed" with the public key as the secret, both as JWK JSON and as PEM.
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (json.dumps(provider.published[0]).encode(), pem):
        head = _b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        await _refused(client, f"{head}.{body}.{_b64(mac)}", "'HS256' is not accepted")

    await _refused(client, "not.a.jwt", "not a valid JWS")
    tampered = provider.sign(claims, "k1")
    head, _, sig = tampered.split(".")
    other = _b64(json.dumps({**claims, "sub": "admin"}).encode())
    await _refused(client, f"{head}.{other}.{sig}", "InvalidSignatureError")


async def test_a_deeply_nested_id_token_is_refused_not_a_500(fake: Any) -> None:
    """A hostile or broken provider: json.loads of 1,400 nested arrays raises
    RecursionError; PyJWT (2.15) turns it into DecodeError, in the header and in a signed
    payload, so the callback answers 400, not 500."""
    provider, client, _ = await fake()
    key = provider.add_key("ES256", "k1")
    nested = ("[" * 1400 + "]" * 1400).encode()
    await _refused(client, f"{_b64(nested)}.{_b64(b'{}')}.c2ln", "not a valid JWS")
    signed = jwt.api_jws.encode(nested, key, algorithm="ES256", headers={"kid": "k1"})
    await _refused(client, signed, "DecodeError")


async def test_key_must_fit_the_algorithm(fake: Any) -> None:
    provider, client, _ = await fake()
    provider.add_key("RS256", "rsa")
    provider.add_key("ES256", "ec")
    # An ES256 header pointing at the RSA key, an RS256 header at the EC key.
    es_key = provider.keys["ec"][0]
    wrong = jwt.encode(provider.claims(), es_key, algorithm="ES256", headers={"kid": "rsa"})
    await _refused(client, wrong, "no provider key matches")
    # The JWK says RS256; a PS256 token under the same kid is refused.
    ps = jwt.encode(
        provider.claims(), provider.keys["rsa"][0], algorithm="PS256", headers={"kid": "rsa"}
    )
    await _refused(client, ps, "no provider key matches")
    # No kid: accepted only when one published key fits the algorithm.
    assert await client.verify_id_token(provider.sign(provider.claims(), None), NONCE)
    provider, client, _ = await fake()
    provider.add_key("RS256", "rsa1")
    provider.add_key("RS256", "rsa2")
    await _refused(client, provider.sign(provider.claims(), None), "no provider key matches")


async def test_announced_algorithms_are_enforced(fake: Any) -> None:
    provider, client, _ = await fake()
    provider.add_key("ES256", "k1")
    provider.discovery_extra["id_token_signing_alg_values_supported"] = ["RS256"]
    await _refused(client, provider.sign(provider.claims(), "k1"), "not one the provider")


async def test_single_key_without_kid(fake: Any) -> None:
    provider, client, _ = await fake()
    provider.add_key("EdDSA", "only", jwk_alg=None)
    token = jwt.encode(provider.claims(), provider.keys["only"][0], algorithm="EdDSA")
    assert (await client.verify_id_token(token, NONCE))["sub"]


async def test_unknown_kid_refetches_the_jwks_at_a_limited_rate(fake: Any) -> None:
    provider, client, ticker = await fake()
    provider.add_key("RS256", "old")
    assert await client.verify_id_token(provider.sign(provider.claims(), "old"), NONCE)
    assert provider.hits["jwks"] == 1

    # The provider rotates: the new kid is found by one refetch.
    ticker.now += oidc.JWKS_MIN_REFETCH + 1
    provider.add_key("RS256", "new")
    assert await client.verify_id_token(provider.sign(provider.claims(), "new"), NONCE)
    assert provider.hits["jwks"] == 2

    # A burst of unknown kids right after costs no more fetches.
    provider.add_key("RS256", "ghost", publish=False)
    for _ in range(5):
        await _refused(client, provider.sign(provider.claims(), "ghost"), "no provider key")
    assert provider.hits["jwks"] == 2
    # Known kids stay served from the cache until the TTL.
    ticker.now += oidc.JWKS_TTL - 5
    assert await client.verify_id_token(provider.sign(provider.claims(), "old"), NONCE)
    assert provider.hits["jwks"] == 2
    ticker.now += 10
    assert await client.verify_id_token(provider.sign(provider.claims(), "old"), NONCE)
    assert provider.hits["jwks"] == 3


async def test_discovery_is_cached_and_checked(fake: Any) -> None:
    provider, client, ticker = await fake()
    first = await client.discovery()
    assert first.token_auth_methods == ("client_secret_basic",)  # the spec's default
    assert not first.iss_parameter_supported
    await client.discovery()
    assert provider.hits["discovery"] == 1
    # Past the TTL a failing provider keeps serving the cached copy.
    ticker.now += oidc.DISCOVERY_TTL + 1
    provider.discovery_status = 503
    assert await client.discovery() == first
    assert provider.hits["discovery"] == 2


async def test_discovery_must_name_the_configured_issuer(fake: Any) -> None:
    provider, client, _ = await fake()
    provider.discovery_extra["issuer"] = provider.issuer + "/"  # not exactly the same
    with pytest.raises(ProviderUnavailable) as info:
        await client.discovery()
    assert status_of(type(info.value)) == 502
    assert code_of(type(info.value)) == "temporarily_unavailable"
    assert "issuer" in info.value.description


async def test_unreachable_provider() -> None:
    async with aiohttp.ClientSession() as http:
        issuer = f"http://127.0.0.1:{free_port()}"
        client = ProviderClient(
            OIDCProvider("gone", issuer, CLIENT_ID, "s"), http, clock=FrozenClock()
        )
        with pytest.raises(ProviderUnavailable) as info:
            await client.discovery()
    assert status_of(type(info.value)) == 502
    assert "'gone' unavailable" in info.value.description


async def test_authorization_url(fake: Any) -> None:
    provider, client, _ = await fake()
    url = await client.authorization_url(
        redirect_uri="https://tokend.example.com/auth/oidc/fake/callback",
        state="st",
        nonce="nn",
        verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    )
    query = dict(pair.split("=", 1) for pair in url.split("?", 1)[1].split("&"))
    assert url.startswith(f"{provider.issuer}/authorize?")
    assert query["response_type"] == "code"
    assert query["scope"] == "openid%20profile%20email"
    assert query["code_challenge_method"] == "S256"
    # RFC 7636 appendix B's example.
    assert query["code_challenge"] == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == query["code_challenge"]
    assert (query["state"], query["nonce"], query["client_id"]) == ("st", "nn", CLIENT_ID)


async def test_iss_parameter(fake: Any) -> None:
    provider, client, _ = await fake()
    doc = await client.discovery()
    client.check_iss_parameter(doc, None)  # not announced: optional
    client.check_iss_parameter(doc, provider.issuer)
    with pytest.raises(SocialLoginFailed, match="another issuer"):
        client.check_iss_parameter(doc, "https://attacker.example.com")
    provider.discovery_extra["authorization_response_iss_parameter_supported"] = True
    provider2, client2, _ = await fake()
    provider2.discovery_extra["authorization_response_iss_parameter_supported"] = True
    doc2 = await client2.discovery()
    with pytest.raises(SocialLoginFailed, match="lacks the iss"):
        client2.check_iss_parameter(doc2, None)


@pytest.mark.parametrize(
    ("methods", "expect_basic"),
    [(None, True), (["client_secret_post"], False), (["client_secret_basic", "x"], True)],
)
async def test_exchange_client_authentication(
    fake: Any, methods: list[str] | None, expect_basic: bool
) -> None:
    provider, client, _ = await fake()
    if methods is not None:
        provider.discovery_extra["token_endpoint_auth_methods_supported"] = methods
    provider.token_answer = (200, {"id_token": "a.b.c", "access_token": "x"})
    assert await client.exchange(code="c0de", verifier="v" * 43, redirect_uri="https://t/cb") == (
        "a.b.c"
    )
    form, headers = provider.token_requests[-1]
    assert form["grant_type"] == "authorization_code"
    assert (form["code"], form["code_verifier"], form["redirect_uri"]) == (
        "c0de",
        "v" * 43,
        "https://t/cb",
    )
    if expect_basic:
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"tokend:secret").decode()
        assert "client_secret" not in form
    else:
        assert "Authorization" not in headers
        assert (form["client_id"], form["client_secret"]) == (CLIENT_ID, "secret")


async def test_exchange_failures(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, client, _ = await fake()

    async def exchange() -> str:
        return await client.exchange(code="c", verifier="v" * 43, redirect_uri="https://t/cb")

    provider.token_answer = (400, {"error": "invalid_grant", "error_description": "used"})
    with pytest.raises(SocialLoginFailed) as refused:
        await exchange()
    assert (status_of(type(refused.value)), code_of(type(refused.value))) == (400, "invalid_grant")
    assert "invalid_grant" in refused.value.description
    for answer in [
        (401, {"error": "invalid_client"}),
        (500, {"error": "server_error"}),
        (502, "<html>bad gateway</html>"),
        (200, "not json"),
        (200, {"access_token": "no id token"}),
        (200, ["a", "list"]),
    ]:
        provider.token_answer = answer
        with pytest.raises(ProviderUnavailable) as down:
            await exchange()
        assert status_of(type(down.value)) == 502, answer
    provider.token_answer = (200, {"id_token": "x.y.z"})
    provider.token_delay = 1.0
    monkeypatch.setattr(oidc, "HTTP_TIMEOUT", aiohttp.ClientTimeout(total=0.2))
    with pytest.raises(ProviderUnavailable, match="timed out"):
        await exchange()


async def test_a_failing_provider_is_not_asked_again_at_once(fake: Any) -> None:
    provider, client, ticker = await fake()
    provider.discovery_status = 503
    for _ in range(3):
        with pytest.raises(ProviderUnavailable, match="answered 503"):
            await client.discovery()
    assert provider.hits["discovery"] == 1  # the others failed fast
    ticker.now += oidc.FAILURE_BACKOFF + 1
    provider.discovery_status = 200
    assert await client.discovery()
    assert provider.hits["discovery"] == 2
