"""DPoP (RFC 9449) at tokend: bound tokens from every token endpoint, the DPoP scheme at
protected resources, and each refusal of the issue's list (docs/dpop.md).

tokend runs as https://auth.example.com (TOKEND_ISSUER, behind a proxy): proofs name that
URL, not the test server's own address."""

from __future__ import annotations

import base64
import json
import time
from http.cookies import SimpleCookie
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from service.clock import FrozenClock
from service.dpop import NONCE_WINDOW, PROOF_MAX_AGE
from service.http.appkeys import AUTH, OIDC
from service.oidc_rules import s256
from tests.support import PASSWORD, bearer, register, unverified
from tokend_client.dpop import DPoPKey

ISSUER = "https://auth.example.com"
CLIENTS = json.dumps(
    {"web": {"secret": "s3cret"}, "cli": {}, "strict": {"dpop_bound_access_tokens": True}}
)
FORM = {"username": "alice", "password": PASSWORD}


def url(path: str) -> str:
    return ISSUER + path


async def tokend(make_client: Any, clock: FrozenClock | None = None, **env: str) -> Any:
    client = await make_client(
        clock=clock or FrozenClock(), TOKEND_ISSUER=ISSUER, TOKEND_OAUTH_CLIENTS=CLIENTS, **env
    )
    await register(client, "alice")
    return client


def now_of(client: Any) -> float:
    return float(client.app[AUTH].clock())


def proof(client: Any, key: DPoPKey, method: str, path: str, **kwargs: Any) -> dict[str, str]:
    """The DPoP header of a fresh proof at tokend's clock."""
    kwargs.setdefault("now", now_of(client))
    return {"DPoP": key.proof(method, url(path), **kwargs)}


async def login(client: Any, key: DPoPKey | None = None, **kwargs: Any) -> Any:
    headers = proof(client, key, "POST", "/auth/login", **kwargs) if key else {}
    return await client.post("/auth/login", json=FORM, headers=headers)


async def bound_login(client: Any, key: DPoPKey) -> dict[str, Any]:
    resp = await login(client, key)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def dpop_auth(
    client: Any, key: DPoPKey, token: str, method: str = "GET", path: str = "/auth/me", **kw: Any
) -> dict[str, str]:
    return {
        "Authorization": f"DPoP {token}",
        **proof(client, key, method, path, access_token=token, **kw),
    }


async def refused(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["error"] == code, body
    return body


def crafted(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def claims_for(client: Any, method: str, path: str) -> dict[str, Any]:
    return {
        "jti": base64.urlsafe_b64encode(time.time_ns().to_bytes(8, "big")).decode(),
        "htm": method,
        "htu": url(path),
        "iat": int(now_of(client)),
    }


# -- bound tokens -----------------------------------------------------------------------


async def test_a_login_with_a_proof_binds_access_and_refresh_token(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    resp = await login(client, key)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "DPoP"
    assert resp.headers["Authorization"] == f"DPoP {body['access_token']}"
    assert unverified(body["access_token"])[1]["cnf"] == {"jkt": key.jkt}
    assert unverified(body["refresh_token"])[1]["cnf"] == {"jkt": key.jkt}


async def test_a_login_without_a_proof_stays_bearer(make_client: Any) -> None:
    client = await tokend(make_client)
    body = await (await login(client)).json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in unverified(body["access_token"])[1]
    assert "cnf" not in unverified(body["refresh_token"])[1]


async def test_me_with_the_dpop_scheme_and_a_proof(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate("EdDSA")
    tokens = await bound_login(client, key)
    resp = await client.get("/auth/me", headers=dpop_auth(client, key, tokens["access_token"]))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["username"] == "alice"


async def test_refresh_with_the_key_keeps_the_binding(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    resp = await client.post(
        "/auth/refresh",
        headers={**bearer(tokens["refresh_token"]), **proof(client, key, "POST", "/auth/refresh")},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "DPoP"
    assert unverified(body["access_token"])[1]["cnf"]["jkt"] == key.jkt
    assert unverified(body["refresh_token"])[1]["cnf"]["jkt"] == key.jkt


async def test_a_grace_replay_hands_out_the_same_bound_refresh_token(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    answers = []
    for _ in range(2):  # the second within TOKEND_REFRESH_REUSE_GRACE, with a new proof
        resp = await client.post(
            "/auth/refresh",
            headers={
                **bearer(tokens["refresh_token"]),
                **proof(client, key, "POST", "/auth/refresh"),
            },
        )
        assert resp.status == 200, await resp.text()
        answers.append((await resp.json())["refresh_token"])
    assert answers[0] == answers[1]


# -- refusals at a protected resource ---------------------------------------------------


async def test_a_bound_token_as_bearer_is_invalid_token(make_client: Any) -> None:
    client = await tokend(make_client)
    tokens = await bound_login(client, DPoPKey.generate())
    resp = await client.get("/auth/me", headers=bearer(tokens["access_token"]))
    body = await refused(resp, 401, "invalid_token")
    assert "DPoP" in body["error_description"]
    challenges = resp.headers.getall("WWW-Authenticate")
    assert challenges[0].startswith('Bearer realm="tokend", error="invalid_token"')
    assert challenges[1] == 'DPoP algs="ES256 EdDSA RS256 PS256"'


async def test_a_bound_token_without_a_proof_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    tokens = await bound_login(client, DPoPKey.generate())
    resp = await client.get("/auth/me", headers={"Authorization": f"DPoP {tokens['access_token']}"})
    await refused(resp, 401, "invalid_dpop_proof")
    challenges = resp.headers.getall("WWW-Authenticate")
    assert challenges[0] == 'Bearer realm="tokend"'
    assert challenges[1].startswith(
        'DPoP algs="ES256 EdDSA RS256 PS256", error="invalid_dpop_proof"'
    )


async def test_a_proof_by_another_key_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    tokens = await bound_login(client, DPoPKey.generate())
    thief = DPoPKey.generate()
    resp = await client.get("/auth/me", headers=dpop_auth(client, thief, tokens["access_token"]))
    body = await refused(resp, 401, "invalid_token")
    assert "another key" in body["error_description"]
    assert (
        'DPoP algs="ES256 EdDSA RS256 PS256", error="invalid_token"'
        in resp.headers.getall("WWW-Authenticate")[1]
    )


async def test_an_unbound_token_with_the_dpop_scheme_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    tokens = await (await login(client)).json()
    key = DPoPKey.generate()
    resp = await client.get("/auth/me", headers=dpop_auth(client, key, tokens["access_token"]))
    await refused(resp, 401, "invalid_token")


async def test_a_replayed_proof_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    headers = dpop_auth(client, key, tokens["access_token"])
    assert (await client.get("/auth/me", headers=headers)).status == 200
    body = await refused(await client.get("/auth/me", headers=headers), 401, "invalid_dpop_proof")
    assert "used before" in body["error_description"]


async def test_a_replayed_proof_at_the_token_endpoint_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    headers = proof(client, key, "POST", "/auth/login")
    assert (await client.post("/auth/login", json=FORM, headers=headers)).status == 200
    again = await client.post("/auth/login", json=FORM, headers=headers)
    await refused(again, 400, "invalid_dpop_proof")


async def test_a_proof_for_another_method_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    headers = dpop_auth(client, key, tokens["access_token"], method="POST")
    await refused(await client.get("/auth/me", headers=headers), 401, "invalid_dpop_proof")


async def test_a_proof_for_another_url_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    token = tokens["access_token"]
    # the address the test server listens on is not tokend's public URL (TOKEND_ISSUER)
    own = str(client.make_url("/auth/me"))
    headers = {
        "Authorization": f"DPoP {token}",
        "DPoP": key.proof("GET", own, access_token=token, now=now_of(client)),
    }
    await refused(await client.get("/auth/me", headers=headers), 401, "invalid_dpop_proof")
    other_path = dpop_auth(client, key, token, path="/auth/sessions")
    await refused(await client.get("/auth/me", headers=other_path), 401, "invalid_dpop_proof")


async def test_a_proof_without_the_access_token_hash_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    headers = {
        "Authorization": f"DPoP {tokens['access_token']}",
        **proof(client, key, "GET", "/auth/me"),
    }
    await refused(await client.get("/auth/me", headers=headers), 401, "invalid_dpop_proof")


async def test_two_dpop_headers_are_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    first = proof(client, key, "POST", "/auth/login")["DPoP"]
    second = proof(client, key, "POST", "/auth/login")["DPoP"]
    resp = await client.post("/auth/login", json=FORM, headers=[("DPoP", first), ("DPoP", second)])
    await refused(resp, 400, "invalid_dpop_proof")


# -- refusals of crafted proofs (token endpoint) ----------------------------------------


async def test_an_old_proof_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    old = now_of(client) - PROOF_MAX_AGE - 1
    await refused(await login(client, DPoPKey.generate(), now=old), 400, "invalid_dpop_proof")


async def test_a_proof_from_the_future_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    ahead = now_of(client) + 60
    await refused(await login(client, DPoPKey.generate(), now=ahead), 400, "invalid_dpop_proof")


async def test_a_proof_with_a_private_key_in_its_jwk_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)
    assert "d" in jwk
    token = crafted(
        {"typ": "dpop+jwt", "jwk": jwk}, claims_for(client, "POST", "/auth/login"), private, "ES256"
    )
    resp = await client.post("/auth/login", json=FORM, headers={"DPoP": token})
    await refused(resp, 400, "invalid_dpop_proof")


async def test_an_alg_none_proof_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    b64 = lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()  # noqa: E731
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk}
    token = f"{b64(header)}.{b64(claims_for(client, 'POST', '/auth/login'))}."
    resp = await client.post("/auth/login", json=FORM, headers={"DPoP": token})
    await refused(resp, 400, "invalid_dpop_proof")


async def test_an_hs256_proof_is_refused(make_client: Any) -> None:
    client = await tokend(make_client)
    secret = b"a shared secret of thirty-two bytes!"
    jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    token = crafted(
        {"typ": "dpop+jwt", "jwk": jwk}, claims_for(client, "POST", "/auth/login"), secret, "HS256"
    )
    resp = await client.post("/auth/login", json=FORM, headers={"DPoP": token})
    await refused(resp, 400, "invalid_dpop_proof")


async def test_a_lone_surrogate_in_a_proof_is_refused_not_a_500(make_client: Any) -> None:
    client = await tokend(make_client)
    private = ec.generate_private_key(ec.SECP256R1())
    key = DPoPKey(private)
    header = {"typ": "dpop+jwt", "jwk": key.public_jwk}
    jti = {**claims_for(client, "POST", "/auth/login"), "jti": "\ud800"}  # the Redis key
    resp = await client.post(
        "/auth/login", json=FORM, headers={"DPoP": crafted(header, jti, private, "ES256")}
    )
    await refused(resp, 400, "invalid_dpop_proof")
    token = (await bound_login(client, key))["access_token"]
    ath = {**claims_for(client, "GET", "/auth/me"), "ath": "\udfff"}  # compared as UTF-8
    headers = {"Authorization": f"DPoP {token}", "DPoP": crafted(header, ath, private, "ES256")}
    await refused(await client.get("/auth/me", headers=headers), 401, "invalid_dpop_proof")


# -- nonces (TOKEND_DPOP_NONCE) ---------------------------------------------------------


async def test_a_proof_without_the_nonce_gets_one(make_client: Any) -> None:
    client = await tokend(make_client, TOKEND_DPOP_NONCE="true")
    key = DPoPKey.generate()
    resp = await login(client, key)
    await refused(resp, 400, "use_dpop_nonce")
    nonce = resp.headers["DPoP-Nonce"]
    again = await login(client, key, nonce=nonce)
    assert again.status == 200, await again.text()
    assert again.headers["DPoP-Nonce"]  # every answer to a DPoP request carries one


async def test_a_dpop_scheme_request_without_a_proof_gets_a_nonce(make_client: Any) -> None:
    client = await tokend(make_client, TOKEND_DPOP_NONCE="true")
    resp = await client.get("/auth/me", headers={"Authorization": "DPoP eyJhbGc.eyJzdWI.c2ln"})
    await refused(resp, 401, "invalid_dpop_proof")
    assert resp.headers["DPoP-Nonce"]
    plain = await client.get("/auth/me", headers=bearer("eyJhbGc.eyJzdWI.c2ln"))
    assert "DPoP-Nonce" not in plain.headers  # a bearer request is no DPoP request


async def test_a_stale_nonce_is_refused(make_client: Any) -> None:
    clock = FrozenClock()
    client = await tokend(make_client, clock, TOKEND_DPOP_NONCE="true")
    key = DPoPKey.generate()
    nonce = (await login(client, key)).headers["DPoP-Nonce"]
    clock.advance(NONCE_WINDOW)  # the previous window's nonce is still accepted
    assert (await login(client, key, nonce=nonce)).status == 200
    clock.advance(NONCE_WINDOW)
    resp = await login(client, key, nonce=nonce)
    await refused(resp, 400, "use_dpop_nonce")
    assert resp.headers["DPoP-Nonce"] != nonce


async def test_a_resource_asks_for_the_nonce_with_401(make_client: Any) -> None:
    client = await tokend(make_client, TOKEND_DPOP_NONCE="true")
    key = DPoPKey.generate()
    nonce = (await login(client, key)).headers["DPoP-Nonce"]
    tokens = await (await login(client, key, nonce=nonce)).json()
    token = tokens["access_token"]
    resp = await client.get("/auth/me", headers=dpop_auth(client, key, token))
    await refused(resp, 401, "use_dpop_nonce")
    assert (
        'DPoP algs="ES256 EdDSA RS256 PS256", error="use_dpop_nonce"'
        in resp.headers.getall("WWW-Authenticate")[1]
    )
    fresh = resp.headers["DPoP-Nonce"]
    ok = await client.get("/auth/me", headers=dpop_auth(client, key, token, nonce=fresh))
    assert ok.status == 200, await ok.text()


# -- stolen refresh tokens --------------------------------------------------------------


async def test_a_stolen_refresh_token_of_a_public_client_is_useless_without_the_key(
    make_client: Any,
) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    resp = await client.post(
        "/oauth/token",
        data={"grant_type": "password", "client_id": "cli", **FORM},
        headers=proof(client, key, "POST", "/oauth/token"),
    )
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    stolen = tokens["refresh_token"]
    assert unverified(stolen)[1]["cnf"] == {"jkt": key.jkt}
    form = {"grant_type": "refresh_token", "client_id": "cli", "refresh_token": stolen}
    await refused(await client.post("/oauth/token", data=form), 400, "invalid_dpop_proof")
    thief = proof(client, DPoPKey.generate(), "POST", "/oauth/token")
    await refused(
        await client.post("/oauth/token", data=form, headers=thief), 400, "invalid_dpop_proof"
    )
    # nothing rotated, no reuse counted: the owner refreshes with the same token and key
    own = await client.post(
        "/oauth/token", data=form, headers=proof(client, key, "POST", "/oauth/token")
    )
    assert own.status == 200, await own.text()
    assert (await own.json())["token_type"] == "DPoP"


async def test_a_stolen_auth_refresh_token_is_useless_without_the_key(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    stolen = bearer(tokens["refresh_token"])
    await refused(await client.post("/auth/refresh", headers=stolen), 400, "invalid_dpop_proof")
    ok = await client.post(
        "/auth/refresh", headers={**stolen, **proof(client, key, "POST", "/auth/refresh")}
    )
    assert ok.status == 200, await ok.text()


async def test_a_confidential_clients_refresh_token_stays_unbound(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    basic = {"Authorization": "Basic " + base64.b64encode(b"web:s3cret").decode()}
    resp = await client.post(
        "/oauth/token",
        data={"grant_type": "password", **FORM},
        headers={**basic, **proof(client, key, "POST", "/oauth/token")},
    )
    tokens = await resp.json()
    assert tokens["token_type"] == "DPoP"
    assert unverified(tokens["access_token"])[1]["cnf"] == {"jkt": key.jkt}
    assert "cnf" not in unverified(tokens["refresh_token"])[1]
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    again = await client.post("/oauth/token", data=form, headers=basic)
    assert again.status == 200, await again.text()
    assert (await again.json())["token_type"] == "Bearer"


# -- policy -------------------------------------------------------------------------------


async def test_dpop_required_refuses_auth_token_requests_without_a_proof(make_client: Any) -> None:
    client = await tokend(make_client, TOKEND_DPOP="required")
    await refused(await login(client), 400, "invalid_dpop_proof")
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    resp = await client.post("/auth/refresh", headers=bearer(tokens["refresh_token"]))
    await refused(resp, 400, "invalid_dpop_proof")


async def test_dpop_off_ignores_the_header_and_binds_nothing(make_client: Any) -> None:
    client = await tokend(make_client, TOKEND_DPOP="off")
    key = DPoPKey.generate()
    body = await bound_login(client, key)
    assert body["token_type"] == "Bearer"
    assert "cnf" not in unverified(body["access_token"])[1]
    # even a refused proof is not looked at
    junk = await client.post("/auth/login", json=FORM, headers={"DPoP": "not.a.proof"})
    assert junk.status == 200, await junk.text()


async def test_a_client_with_dpop_bound_access_tokens_must_send_a_proof(make_client: Any) -> None:
    client = await tokend(make_client)
    data = {"grant_type": "password", "client_id": "strict", **FORM}
    await refused(await client.post("/oauth/token", data=data), 400, "invalid_dpop_proof")
    key = DPoPKey.generate()
    resp = await client.post(
        "/oauth/token", data=data, headers=proof(client, key, "POST", "/oauth/token")
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["token_type"] == "DPoP"
    other = await client.post("/oauth/token", data={**data, "client_id": "cli"})
    assert (await other.json())["token_type"] == "Bearer"  # the flag is per client


# -- introspection, sessions, metadata, social-login exchange, cookie mode -------------


async def test_introspection_returns_cnf(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    basic = {"Authorization": "Basic " + base64.b64encode(b"web:s3cret").decode()}
    resp = await client.post(
        "/oauth/introspect", data={"token": tokens["access_token"]}, headers=basic
    )
    body = await resp.json()
    assert body["active"] is True and body["token_type"] == "DPoP"
    assert body["cnf"] == {"jkt": key.jkt}
    resp = await client.post(
        "/oauth/introspect", data={"token": tokens["refresh_token"]}, headers=basic
    )
    assert (await resp.json())["cnf"] == {"jkt": key.jkt}


async def test_the_sessions_list_shows_which_sessions_are_bound(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    bound = await bound_login(client, key)
    plain = await (await login(client)).json()
    resp = await client.get("/auth/sessions", headers=bearer(plain["access_token"]))
    sessions = {s["id"]: s["bound"] for s in (await resp.json())["sessions"]}
    assert sessions == {
        unverified(bound["access_token"])[1]["sid"]: True,
        unverified(plain["access_token"])[1]["sid"]: False,
    }


async def test_a_bound_session_can_be_revoked(make_client: Any) -> None:
    client = await tokend(make_client)
    key = DPoPKey.generate()
    tokens = await bound_login(client, key)
    logout = await client.post(
        "/auth/logout",
        headers=dpop_auth(client, key, tokens["access_token"], "POST", "/auth/logout"),
    )
    assert logout.status == 204, await logout.text()
    resp = await client.get("/auth/me", headers=dpop_auth(client, key, tokens["access_token"]))
    await refused(resp, 401, "invalid_token")


async def test_the_metadata_lists_the_proof_algorithms(make_client: Any) -> None:
    client = await tokend(make_client)
    body = await (await client.get("/.well-known/oauth-authorization-server")).json()
    assert body["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA", "RS256", "PS256"]


async def test_the_social_login_exchange_binds_its_tokens(make_client: Any) -> None:
    client = await tokend(make_client)
    auth = client.app[AUTH]
    user = await auth.users.by_username("alice")
    verifier = "v" * 43
    code = await client.app[OIDC].issue_login_code(
        user,
        auth_client_info(),
        checked_at=await auth.sessions.server_time(),
        code_challenge=s256(verifier),
    )
    key = DPoPKey.generate()
    body = {"login_code": code, "code_verifier": verifier}
    bad = proof(client, key, "POST", "/auth/login")  # names another URL
    await refused(
        await client.post("/auth/oidc/exchange", json=body, headers=bad), 400, "invalid_dpop_proof"
    )
    # the refused proof did not burn the code
    resp = await client.post(
        "/auth/oidc/exchange", json=body, headers=proof(client, key, "POST", "/auth/oidc/exchange")
    )
    assert resp.status == 200, await resp.text()
    assert unverified((await resp.json())["access_token"])[1]["cnf"] == {"jkt": key.jkt}


async def test_dpop_required_binds_a_social_login_answered_at_the_callback(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a return_to the callback answers the token pair itself: under
    # TOKEND_DPOP=required it needs a proof too (the provider's half is stubbed here).
    from service.identities import ExternalAccount
    from service.oidc_flow import PendingLogin

    client = await tokend(make_client, TOKEND_DPOP="required")
    flow = client.app[OIDC]

    async def resume(*_: Any) -> PendingLogin:
        return PendingLogin("test", "nonce", "verifier", return_to=None, link_user=None)

    async def finish(*_: Any) -> tuple[ExternalAccount, None]:
        return ExternalAccount("test", "https://idp.example", "alice-at-idp"), None

    monkeypatch.setattr(flow, "resume", resume)
    monkeypatch.setattr(flow, "finish", finish)
    path = "/auth/oidc/test/callback"
    await refused(await client.get(f"{path}?state=s&code=c"), 400, "invalid_dpop_proof")
    key = DPoPKey.generate()
    resp = await client.get(f"{path}?state=s&code=c", headers=proof(client, key, "GET", path))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "DPoP"
    assert unverified(body["refresh_token"])[1]["cnf"] == {"jkt": key.jkt}


def auth_client_info() -> Any:
    from service.auth import ClientInfo

    return ClientInfo(ip="127.0.0.1", user_agent="test")


async def test_cookie_mode_refreshes_a_bound_session_with_its_key(make_client: Any) -> None:
    app_origin = "https://app.example.com"
    client = await tokend(
        make_client, TOKEND_REFRESH_COOKIE="true", TOKEND_ALLOWED_ORIGINS=app_origin
    )
    key = DPoPKey.generate()
    resp = await client.post(
        "/auth/login",
        json=FORM,
        headers={"Origin": app_origin, **proof(client, key, "POST", "/auth/login")},
    )
    assert resp.status == 200, await resp.text()
    assert "refresh_token" not in await resp.json()
    jar: SimpleCookie = SimpleCookie()
    jar.load(resp.headers["Set-Cookie"])
    cookie = {"Cookie": f"__Host-tokend-refresh={jar['__Host-tokend-refresh'].value}"}
    csrf = {"Origin": app_origin, "X-Tokend-CSRF": "1", **cookie}
    await refused(await client.post("/auth/refresh", headers=csrf), 400, "invalid_dpop_proof")
    ok = await client.post(
        "/auth/refresh", headers={**csrf, **proof(client, key, "POST", "/auth/refresh")}
    )
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["token_type"] == "DPoP"
