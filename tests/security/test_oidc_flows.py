"""Social-login flows under attack, against the real npm ``oidc-provider``.

- Linking is bound to the user's own session at both ends: a link URL completed in
  another browser, or a link_code redeemed by another user or session, links nothing, and
  the attacker's provider login never yields the victim's account.
- A login_code is bound to the application that started the login (code_challenge at
  /login, code_verifier at the exchange); a wrong or missing verifier burns it.
- Flow starts (each writes a Redis record) are limited per client IP.
- A logout-all between the callback and the exchange: the login_code starts no session.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest

from service.keyspace import Keyspace
from tests import test_oidc as e2e
from tests.support import bearer, login, register_and_login
from tests.test_oidc import (
    APP,
    CHALLENGE,
    VERIFIER,
    MakeWorld,
    World,
    _identities,
    _query,
    aiohttp_redis,
    new_browser,
)

pytestmark = [pytest.mark.security, pytest.mark.slow]

# The end-to-end fixtures of tests/test_oidc.py: tokend and a real oidc-provider.
provider_ready = e2e.provider_ready
make_world = e2e.make_world


def _sub(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def _start_link(world: World, access_token: str, **body: str) -> str:
    resp = await world.client.post(
        "/auth/oidc/test/link", headers=bearer(access_token), json=body or None
    )
    assert resp.status == 200, await resp.text()
    url: str = (await resp.json())["authorization_url"]
    return url


async def _confirm(world: World, access_token: str, link_code: str) -> aiohttp.ClientResponse:
    resp: aiohttp.ClientResponse = await world.client.post(
        "/auth/oidc/link/confirm", json={"link_code": link_code}, headers=bearer(access_token)
    )
    return resp


async def _attacker_logs_in_as_himself(world: World, victim: dict[str, Any]) -> None:
    """The attacker's own provider account logs in as someone, never as the victim."""
    step = await world.login("mallory")
    assert step.status == 200, step.text
    assert _sub(step.json()["access_token"]) != _sub(victim["access_token"])


async def test_link_url_seen_at_the_provider_links_nothing_in_another_browser(
    make_world: MakeWorld,
) -> None:
    world = await make_world()
    victim = await register_and_login(world.client, "victim-one")
    url = await _start_link(world, victim["access_token"])
    async with new_browser() as victim_browser:
        # The victim's browser goes to the provider; that URL is what leaks (provider
        # logs, history). Before the fix the API handed out the provider URL itself.
        if not url.startswith(world.provider.issuer):
            step = await world.follow(
                victim_browser, url, stop=lambda u: u.startswith(world.provider.issuer)
            )
            assert step.status == 302, step.text
            url = step.url
        async with new_browser() as attacker:
            answer = await world.login("mallory", start_url=url, browser=attacker)
    assert await _identities(world, victim["access_token"]) == []
    assert answer.status == 400, answer.text
    assert "another browser" in answer.json()["error_description"]
    await _attacker_logs_in_as_himself(world, victim)


async def test_unused_link_url_completed_by_the_attacker_links_nothing(
    make_world: MakeWorld,
) -> None:
    world = await make_world()
    victim = await register_and_login(world.client, "victim-two")
    attacker = await register_and_login(world.client, "attacker-two")
    url = await _start_link(world, victim["access_token"])
    async with new_browser() as browser:  # the attacker's browser, before the victim's
        answer = await world.login("mallory", start_url=url, browser=browser)
    assert await _identities(world, victim["access_token"]) == []
    assert answer.status == 200, answer.text
    code = answer.json()["link_code"]
    # Redeemed by another user: refused, and burned.
    refused = await _confirm(world, attacker["access_token"], code)
    assert refused.status == 400
    assert (await refused.json())["error"] == "invalid_grant"
    later = await _confirm(world, victim["access_token"], code)
    assert later.status == 400
    assert await _identities(world, victim["access_token"]) == []
    assert await _identities(world, attacker["access_token"]) == []
    await _attacker_logs_in_as_himself(world, victim)


async def test_link_code_is_bound_to_the_session_that_asked(make_world: MakeWorld) -> None:
    world = await make_world()
    first = await register_and_login(world.client, "victim-three")
    other_session = await login(world.client, "victim-three")
    url = await _start_link(world, first["access_token"])
    answer = await world.login("carol", start_url=url)
    code = answer.json()["link_code"]
    refused = await _confirm(world, other_session["access_token"], code)
    assert refused.status == 400
    assert "another session" in (await refused.json())["error_description"]
    assert await _identities(world, first["access_token"]) == []


async def test_link_start_is_single_use_and_top_level_only(make_world: MakeWorld) -> None:
    world = await make_world()
    victim = await register_and_login(world.client, "victim-four")
    url = await _start_link(world, victim["access_token"])
    assert url.startswith(world.url("/auth/oidc/test/link/start?"))
    path = url[len(world.base) :]
    framed = await world.client.get(
        path, headers={"Sec-Fetch-Dest": "iframe"}, allow_redirects=False
    )
    assert framed.status == 400
    assert "top-level" in (await framed.json())["error_description"]
    first = await world.client.get(path, allow_redirects=False)
    assert first.status == 302
    assert first.headers["Location"].startswith(world.provider.issuer)
    again = await world.client.get(path, allow_redirects=False)
    assert again.status == 400
    assert "ticket" in (await again.json())["error_description"]


async def test_legitimate_link_with_return_to(make_world: MakeWorld) -> None:
    world = await make_world()
    user = await register_and_login(world.client, "dana-local")
    url = await _start_link(world, user["access_token"], return_to=APP)
    step = await world.login("dana", start_url=url)
    assert step.status == 302
    assert step.url.startswith(APP + "?")
    query = _query(step.url)
    assert set(query) == {"link_code"}
    assert await _identities(world, user["access_token"]) == []
    linked = await _confirm(world, user["access_token"], query["link_code"])
    assert linked.status == 200, await linked.text()
    [identity] = await _identities(world, user["access_token"])
    assert identity["subject"] == "dana"
    via_provider = (await world.login("dana")).json()
    assert _sub(via_provider["access_token"]) == _sub(user["access_token"])


async def _login_code(world: World, **params: str) -> str:
    query = urlencode({"return_to": APP, **params})
    step = await world.login("erin", start_url=world.url(f"/auth/oidc/test/login?{query}"))
    assert step.status == 302, step.text
    return _query(step.url)["login_code"]


async def _exchange(world: World, **body: str) -> tuple[int, dict[str, Any]]:
    resp = await world.client.post("/auth/oidc/exchange", json=body)
    return resp.status, await resp.json()


async def test_login_code_needs_the_apps_code_verifier(make_world: MakeWorld) -> None:
    world = await make_world()
    # Without the verifier: refused and burned.
    code = await _login_code(world, code_challenge=CHALLENGE)
    status, body = await _exchange(world, login_code=code)
    assert status == 400, body
    assert body["error"] == "invalid_grant"
    status, body = await _exchange(world, login_code=code, code_verifier=VERIFIER)
    assert (status, body["error"]) == (400, "invalid_grant")
    # A wrong verifier: refused and burned.
    code = await _login_code(world, code_challenge=CHALLENGE)
    status, body = await _exchange(world, login_code=code, code_verifier="w" * 43)
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await _exchange(world, login_code=code, code_verifier=VERIFIER)
    assert (status, body["error"]) == (400, "invalid_grant")
    # The right one, first time.
    code = await _login_code(world, code_challenge=CHALLENGE, code_challenge_method="S256")
    status, body = await _exchange(world, login_code=code, code_verifier=VERIFIER)
    assert status == 200, body
    # A return_to needs a code_challenge; plain is refused.
    for params in ({}, {"code_challenge": VERIFIER, "code_challenge_method": "plain"}):
        query = urlencode({"return_to": APP, **params})
        resp = await world.client.get(f"/auth/oidc/test/login?{query}", allow_redirects=False)
        assert resp.status == 400, params
        assert "code_challenge" in (await resp.json())["error_description"]


async def _state_records(world: World) -> int:
    redis = aiohttp_redis()
    try:
        pattern = Keyspace(world.settings.redis_prefix).pattern_under("oidc", "state")
        return len([key async for key in redis.scan_iter(match=pattern, count=1000)])
    finally:
        await redis.aclose()


async def test_flow_starts_are_limited_per_ip(make_world: MakeWorld) -> None:
    world = await make_world(TOKEND_OIDC_STARTS_PER_IP="3", TOKEND_TRUST_FORWARDED_FOR="true")
    user = await register_and_login(world.client, "frank-local")
    here = {"X-Forwarded-For": "203.0.113.7"}
    before = await _state_records(world)
    for _ in range(3):
        resp = await world.client.get("/auth/oidc/test/login", headers=here, allow_redirects=False)
        assert resp.status == 302
    over = await world.client.get("/auth/oidc/test/login", headers=here, allow_redirects=False)
    assert over.status == 429
    assert (await over.json())["error"] == "slow_down"
    assert 0 < int(over.headers["Retry-After"]) <= world.settings.login_failure_window
    assert await _state_records(world) - before == 3
    # Link starts count against the same limit ...
    link = await world.client.post(
        "/auth/oidc/test/link", headers={**here, **bearer(user["access_token"])}
    )
    assert link.status == 429
    # ... and another address has its own.
    elsewhere = {"X-Forwarded-For": "203.0.113.8"}
    resp = await world.client.get("/auth/oidc/test/login", headers=elsewhere, allow_redirects=False)
    assert resp.status == 302


async def test_logout_all_between_callback_and_exchange_starts_no_session(
    make_world: MakeWorld,
) -> None:
    world = await make_world()
    first = (await world.login("gina")).json()
    step = await world.login("gina", return_to=APP)
    code = _query(step.url)["login_code"]
    ended = await world.client.post("/auth/logout-all", headers=bearer(first["access_token"]))
    assert ended.status in (200, 204), await ended.text()
    status, body = await _exchange(world, login_code=code, code_verifier=VERIFIER)
    assert status in (400, 401), body
    again = (await world.login("gina")).json()
    sessions = await world.client.get("/auth/sessions", headers=bearer(again["access_token"]))
    assert len((await sessions.json())["sessions"]) == 1
