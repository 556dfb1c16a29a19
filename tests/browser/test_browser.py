"""tokend in a real browser: the system Chromium driven by Node scenario scripts
(tests/browser/*.mjs, playwright-core), against real tokend and example-service processes
(tests/browser/stack.py), real Redis. Select with ``-m browser``.

Each scenario prints its figures (run with -s)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from service.devredis import free_port
from tests.browser.conftest import MakeStack
from tests.browser.stack import Stack, run_scenario

# the oidc-provider process of the social-login tests, and its fixture
from tests.test_oidc import CLIENT_ID, CLIENT_SECRET, Provider
from tests.test_oidc import provider_ready as provider_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TABS, SECONDS, INTERVAL_MS, ACCESS_TTL = 5, 90, 500, 5
# the bound: close to one refresh per expiry, not one per tab
MAX_REFRESHES = SECONDS / ACCESS_TTL * 1.5 + 5


def refresh_figures(samples: dict[str, Any]) -> dict[str, float]:
    """tokend's own count of POST /auth/refresh (by status) and of its outcomes."""
    by_status = {
        dict(labels)["status"]: value
        for labels, value in samples["tokend_http_request_seconds_count"].items()
        if dict(labels)["route"] == "/auth/refresh"
    }
    outcomes = {dict(k)["result"]: v for k, v in samples["tokend_refreshes_total"].items()}
    reasons = {dict(k)["reason"]: v for k, v in samples["tokend_revocations_total"].items()}
    return {
        "requests": sum(by_status.values()),
        **{f"status_{s}": v for s, v in by_status.items()},
        **{f"outcome_{o}": v for o, v in outcomes.items() if v},
        "reuse_revocations": reasons.get("refresh_token_reuse", 0),
    }


async def route_statuses(stack: Stack) -> dict[str, dict[str, float]]:
    """tokend's answers per route and status (its request histogram's counts)."""
    out: dict[str, dict[str, float]] = {}
    for labels, value in (await stack.metrics())["tokend_http_request_seconds_count"].items():
        label = dict(labels)
        out.setdefault(label["route"], {})[label["status"]] = value
    return out


async def five_tabs(stack: Stack, user: str) -> tuple[dict[str, Any], dict[str, float]]:
    await stack.register(user)
    config = stack.config(user=user, tabs=TABS, seconds=SECONDS, interval=INTERVAL_MS)
    result = await run_scenario("tabs.mjs", config, timeout=SECONDS + 60)
    return result, refresh_figures(await stack.metrics())


@pytest.mark.timeout(SECONDS + 120)
async def test_five_tabs_share_one_refresh_per_expiry(make_stack: MakeStack) -> None:
    """Scenario a, in cookie mode and in storage mode at once (two tokends)."""
    env = {"TOKEND_ACCESS_TTL": str(ACCESS_TTL)}
    cookie, storage = await asyncio.gather(
        make_stack(cookie=True, **env), make_stack(cookie=False, **env)
    )
    runs = await asyncio.gather(five_tabs(cookie, "alice"), five_tabs(storage, "bobby"))
    for stack, (result, server) in zip((cookie, storage), runs, strict=True):
        mode = "cookie" if stack.cookie else "storage"
        tabs = result["tabs"]
        print(
            f"\n{mode} mode: {TABS} tabs x {SECONDS}s, access TTL {ACCESS_TTL}s: calls per tab "
            f"{[t['calls'] for t in tabs]}, failures {sum(len(t['failures']) for t in tabs)}; "
            f"refreshes sent by the browser {result['refreshes']['sent']} "
            f"({result['refreshesBeforeLoop']} before the calls began), at tokend "
            f"{json.dumps(server)} (bound {MAX_REFRESHES:.0f}); visibility "
            f"{sorted({t['visibility'] for t in tabs})}; {result['_seconds']}s"
        )
        for n, tab in enumerate(tabs):
            assert tab["failures"] == [], (mode, n, tab["failures"][:5], stack.logs())
            # every 500 ms for 90 s is 180 calls; even a timer-throttled tab calls once a second
            assert tab["calls"] >= SECONDS, (mode, n, tab["calls"])
            assert tab["ok"] == tab["calls"]
            assert tab["loggedIn"] is True and tab["loginRequired"] == 0, (mode, n, tab)
        assert server["reuse_revocations"] == 0, server
        assert not any(k.startswith("outcome_reuse") for k in server), server
        assert server["requests"] == server.get("status_200"), server
        assert server["requests"] == result["refreshes"]["sent"], (server, result["refreshes"])
        # at least one per expiry (else the calls had failed), not one per tab
        assert SECONDS / ACCESS_TTL - 2 <= server["requests"] <= MAX_REFRESHES, server


async def test_an_aborted_refresh_is_retried_without_logout(make_stack: MakeStack) -> None:
    """Scenario b: the first refresh dies on the network; the client tries again."""
    stack = await make_stack(cookie=True, TOKEND_ACCESS_TTL=str(ACCESS_TTL))
    await stack.register("alice")
    result = await run_scenario("abort.mjs", stack.config(user="alice", ttl=ACCESS_TTL), timeout=60)
    server = refresh_figures(await stack.metrics())
    print(
        f"\naborted refresh: {result['aborted']} aborted, browser {result['refreshes']}, "
        f"tokend {json.dumps(server)}; then {result['after']['status']}, {result['again']}"
    )
    assert result["aborted"] == 1
    assert result["refreshes"]["failed"] == 1
    assert result["after"]["status"] == 200 and result["again"] == 200, result["after"]
    assert result["after"]["body"]["sub"]
    assert result["after"]["loggedIn"] is True and result["after"]["loginRequired"] == 0
    # the aborted one never reached tokend; the retry did and rotated
    assert server["requests"] == server["status_200"] == server["outcome_rotated"] >= 1
    assert result["refreshes"]["statuses"] == {"200": server["requests"]}


async def test_the_refresh_cookie_is_out_of_reach_of_pages_and_other_origins(
    make_stack: MakeStack,
) -> None:
    """Scenario d: HttpOnly (no page reads it), no refresh token in any answer, and
    neither another site (localhost) nor another origin of the same site (127.0.0.1 on
    another port) can refresh or log out with it: the browser keeps tokend's answer from
    them (CORS) and tokend refused them (403; the session was not rotated nor ended)."""
    stack = await make_stack(
        cookie=True, foreign=("localhost", "127.0.0.1"), TOKEND_ACCESS_TTL=str(ACCESS_TTL)
    )
    await stack.register("alice")
    result = await run_scenario(
        "isolation.mjs", stack.config(user="alice", ttl=ACCESS_TTL), timeout=60
    )
    token, rotated = result["refreshToken"], result["rotatedToken"]
    print(
        f"\nrefresh cookie {result['cookie']}; foreign attempts at tokend: "
        + json.dumps([r for r in result["toTokend"] if r["from"] in stack.foreign])
        + f"; tokend {json.dumps(refresh_figures(await stack.metrics()))}"
    )
    assert result["cookie"] == {"httpOnly": True, "secure": True, "sameSite": "Strict", "path": "/"}
    assert len(token) > 20 and rotated and rotated != token
    for value in result["seenByPage"]:
        assert token not in value and rotated not in value, value
        assert "tokend-refresh" not in value
    # no refresh token in what tokend answered (login, refresh: the cookie only)
    answered = {b["url"].rpartition("/")[2] for b in result["bodies"]}
    assert {"login", "refresh"} <= answered, answered
    for body in result["bodies"]:
        assert "x-refresh-token" not in body["headers"], body
        assert token not in body["text"] and rotated not in body["text"], body
        assert "refresh_token" not in body["text"], body
    # every credentialed fetch from a foreign page failed in the page
    for attempt in result["attempts"]:
        assert len(attempt["fetched"]) == 4
        assert all(not f["readable"] for f in attempt["fetched"]), attempt
        for value in attempt["seenByPage"]:
            assert token not in value
    # what reached tokend from them was refused: tokend's own count per route and status
    # (the browser hides the requests it refused to show the page). The simple POSTs were
    # sent (the same-site one with the cookie: 403 by the CSRF rule; the other site's
    # without it, SameSite=Strict); the preflighted ones never were; the form POSTs too.
    statuses = await route_statuses(stack)
    print(f"tokend's answers per route: {statuses}")
    assert statuses["/auth/refresh"].pop("200") == 1  # the tab's own refresh, below
    assert statuses["/auth/refresh"].pop("403") == 1
    assert set(statuses["/auth/refresh"]) <= {"400", "401"}, statuses
    assert sum(statuses["/auth/refresh"].values()) == 1, statuses
    assert statuses["/auth/logout"].pop("403") == 2  # same site: fetch and form
    assert statuses["/auth/logout"] == {"401": 2}, statuses  # other site: no cookie came
    forms = [r for r in result["toTokend"] if r["from"] in stack.foreign]
    assert [(r["url"], r["cookie"], r["status"]) for r in forms] == [
        ("/auth/logout", False, 401),  # localhost: another site
        ("/auth/logout", True, 403),  # 127.0.0.1, another port: the same site
    ], forms
    assert [a["form"] for a in result["attempts"]] == [401, 403]
    # the session: not rotated by them, not ended; the tab refreshes (once) and calls
    assert result["unchangedByForeign"] is True
    assert result["refreshesBefore"] == 0
    assert result["call"] == 200 and result["loggedIn"] is True
    server = refresh_figures(await stack.metrics())
    assert server["outcome_rotated"] == result["refreshes"]["statuses"]["200"] == 1, server
    samples = await stack.metrics()
    assert not any(samples["tokend_revocations_total"].values()), samples[
        "tokend_revocations_total"
    ]


async def test_sign_out_all_other_devices_reaches_the_other_device(make_stack: MakeStack) -> None:
    """Scenario c: two devices on /account; "Sign out all other devices" on one: the
    other's next call gets 401 and its page shows the login form within two seconds."""
    stack = await make_stack(cookie=True)
    await stack.register("alice")
    result = await run_scenario("devices.mjs", stack.config(user="alice"), timeout=60)
    first = next((c for c in result["calls"] if c["url"].startswith("/auth/")), None)
    print(
        f"\nsign out others: the other device's login form after {result['propagationMs']} ms; "
        f"its calls after the click: {result['calls']}"
    )
    assert result["sessionsBefore"] == 2
    assert result["buttonText"] == "Sign out all other devices"
    assert first is not None and first["status"] == 401, result["calls"]
    assert "/login" in result["phoneUrl"], result["phoneUrl"]
    assert result["propagationMs"] <= 2000, result["propagationMs"]  # the issue's own bound
    assert result["laptopSessions"] == result["laptopCurrent"] == 1
    reasons = {
        dict(k)["reason"]: v for k, v in (await stack.metrics())["tokend_revocations_total"].items()
    }
    assert reasons.get("logout_others") == 1, reasons


async def test_social_login_in_the_browser_lands_on_the_account_page(
    make_stack: MakeStack, provider_ready: Any
) -> None:
    """Scenario e: /login, the provider's button, oidc-provider's login and consent pages,
    back to tokend, on /account logged in (the session list shows the current one)."""
    issuer_port = free_port()
    spec = {"issuer": f"http://127.0.0.1:{issuer_port}", "client_id": CLIENT_ID}
    spec["client_secret"] = CLIENT_SECRET
    stack = await make_stack(cookie=True, TOKEND_OIDC_PROVIDERS=json.dumps({"test": spec}))
    provider = Provider(
        issuer_port, "ES256", f"{stack.base}/auth/oidc/test/callback", "client_secret_basic"
    )
    await provider.start()
    try:
        config = stack.config(provider="test", issuer=provider.issuer, login="carol")
        result = await run_scenario("social.mjs", config, timeout=60)
    finally:
        await provider.stop()
    print(f"\nsocial login: {result['visited']} → {result['url']}")
    assert result["url"].startswith(f"{stack.base}/account"), result["url"]
    assert any(url.startswith(provider.issuer) for url in result["visited"])
    assert result["sessions"] == result["current"] == 1
    assert result["identities"] == ["test"]
    assert "__Host-tokend-refresh" in result["cookies"]  # (the provider's: same host)
    logins = {
        dict(k)["result"]: v for k, v in (await stack.metrics())["tokend_logins_total"].items()
    }
    assert logins.get("oidc") == 1, logins


async def test_login_and_account_pages_have_no_serious_accessibility_violation(
    make_stack: MakeStack,
) -> None:
    """Scenario f: axe-core on /login and /account in English and Korean: no violation
    of impact serious or critical (the others are printed)."""
    stack = await make_stack(cookie=True)
    await stack.register("alice")
    result = await run_scenario("axe.mjs", stack.config(user="alice"), timeout=90)
    for page in result["pages"]:
        counts = Counter(v["impact"] for v in page["violations"])
        print(
            f"\naxe {page['page']} {page['variant']} (lang={page['lang']}): "
            f"{page['passes']} rules pass, violations {dict(counts) or 0}"
            + "".join(
                f"\n  {v['impact']}: {v['id']} ({v['nodes']}): {v['help']}"
                for v in page["violations"]
            )
        )
    assert [(p["page"], p["lang"]) for p in result["pages"]] == [
        ("/login", "en"),
        ("/account", "en"),
        ("/login", "ko"),
        ("/account", "ko"),
        ("/login", "ko"),
        ("/account", "ko"),
    ]
    assert len({p["title"] for p in result["pages"] if p["page"] == "/login"}) == 2  # EN, KO
    for page in result["pages"]:
        assert page["passes"] > 10, page
        serious = [v for v in page["violations"] if v["impact"] in ("serious", "critical")]
        assert serious == [], (page["page"], page["variant"], serious)


async def test_dpop_key_stays_in_the_browser_and_a_copied_token_is_refused(
    make_stack: MakeStack,
) -> None:
    """DPoP (RFC 9449) with the JS client's ``dpop: true``, tokend requiring nonces: the
    key's private half cannot be exported from IndexedDB, the key survives a reload, and
    the access token copied out of the page is refused from another browser context."""
    stack = await make_stack(cookie=False, TOKEND_DPOP_NONCE="true")
    await stack.register("alice")
    result = await run_scenario("dpop.mjs", stack.config(user="alice"), timeout=60)
    print(
        f"\ndpop: key {result['key']}; replayed as Bearer {result['replay']['bearer']}, "
        f"as DPoP by another key {result['replay']['dpop']}; own key {result['own']}"
    )
    key = result["key"]
    assert key["type"] == "private" and key["extractable"] is False, key
    assert key["algorithm"] == {"name": "ECDSA", "namedCurve": "P-256"}, key
    assert key["pkcs8"] == key["jwk"] == "InvalidAccessError", key
    # the token is bound to the key in IndexedDB; after the reload, to the same key
    assert result["jkt"] == result["keyJkt"] == result["reloadJkt"], result
    assert result["first"] == result["afterReload"] == 200, result
    # what the client sent: a proof to every token endpoint and /auth/me; the scheme DPoP
    calls = [s for s in result["sent"] if s["path"] == "/auth/me"]
    assert calls and all(s["scheme"] == "DPoP" and s["proof"] for s in calls), result["sent"]
    logins = [s for s in result["sent"] if s["path"] == "/auth/login"]
    assert logins and all(s["proof"] for s in logins), result["sent"]
    # the nonce: the first login was refused for one (use_dpop_nonce) and repeated once
    statuses = (await route_statuses(stack))["/auth/login"]
    assert statuses == {"400": 1, "200": 2}, statuses
    # the page's own key with the hand-made proof works; the copied token elsewhere does not
    assert result["own"]["status"] == 200, result["own"]
    assert result["thiefJkt"] != result["jkt"]
    assert result["replay"]["bearer"]["status"] == 401, result["replay"]
    assert 'error="invalid_token"' in (result["replay"]["bearer"]["challenge"] or "")
    dpop = result["replay"]["dpop"]
    assert dpop["status"] == 401 and dpop["nonceRetries"] == 1, dpop  # refused for its key
    assert "use_dpop_nonce" not in dpop["challenge"], dpop
    assert 'error="invalid_token"' in dpop["challenge"], dpop
