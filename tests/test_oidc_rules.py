"""Social login rules that need no provider: return_to allow-list, settings, usernames,
unknown providers and malformed callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.errors import ConfigError
from service.identities import username_base, username_candidates
from service.oidc import discovery_url
from service.oidc_rules import return_to_allowed, with_query
from service.settings import Settings

PREFIXES = ("https://app.example.com/done", "https://app.example.com/spa/", "http://localhost:3000")


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com/done",
        "https://app.example.com/done/",
        "https://app.example.com/done?x=1#frag",
        "https://app.example.com/done/deeper/page",
        "https://APP.example.com/done",
        "https://app.example.com:443/done",
        "https://app.example.com/spa/",
        "https://app.example.com/spa/route",
        "http://localhost:3000",
        "http://localhost:3000/anything",
    ],
)
def test_allowed_return_to(url: str) -> None:
    assert return_to_allowed(url, PREFIXES)


@pytest.mark.parametrize(
    "url",
    [
        "https://app.example.com.evil.com/done",
        "https://app.example.com.evil.com",
        "https://evil.com/https://app.example.com/done",
        "https://app.example.com@evil.com/done",
        "https://user:pw@app.example.com/done",
        "http://app.example.com/done",  # scheme downgrade
        "https://app.example.com:8443/done",
        "https://app.example.com/donex",
        "https://app.example.com/",
        "https://app.example.com/spa",
        "https://app.example.com/done/../admin",
        "https://app.example.com/done/%2e%2e/admin",
        "https://app.example.com/done\\@evil.com",
        "//evil.com/done",
        "/done",
        "javascript:alert(1)//https://app.example.com/done",
        "https://app.example.com/done\n",
        "https://app.example.com/done" + "a" * 3000,
        "http://localhost:30001/",
        "https://[::1/done",
    ],
)
def test_refused_return_to(url: str) -> None:
    assert not return_to_allowed(url, PREFIXES)


def test_nothing_allowed_without_prefixes() -> None:
    assert not return_to_allowed("https://app.example.com/done", ())


def test_with_query_keeps_the_rest() -> None:
    assert with_query("https://a.example/x?y=1#f", login_code="c") == (
        "https://a.example/x?y=1&login_code=c#f"
    )
    # A login_code smuggled into return_to is replaced, never doubled.
    assert with_query("https://a.example/x?login_code=evil", login_code="c") == (
        "https://a.example/x?login_code=c"
    )


def test_discovery_url() -> None:
    assert discovery_url("https://idp.example.com") == (
        "https://idp.example.com/.well-known/openid-configuration"
    )
    assert discovery_url("https://tenant.auth0.example/") == (
        "https://tenant.auth0.example/.well-known/openid-configuration"
    )


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("Alice", "alice"),
        ("alice@example.com", "alice"),
        ("Zoë Müller", "zoe-muller"),
        ("李", "user"),
        ("al", "user-al"),
        (None, "user"),
        ("..--..", "user"),
        ("x" * 100, "x" * 40),
    ],
)
def test_username_base(hint: str | None, expected: str) -> None:
    assert username_base(hint) == expected


def test_username_candidates_are_distinct() -> None:
    names = list(username_candidates("bob"))
    assert names[0] == "bob"
    assert len(set(names)) == len(names)
    assert all(n.startswith(("bob-", "user-")) for n in names[1:])


def _providers(raw: Any) -> Settings:
    value = raw if isinstance(raw, str) else json.dumps(raw)
    return Settings.from_env({"TOKEND_OIDC_PROVIDERS": value})


def test_provider_settings() -> None:
    s = _providers(
        {
            "auth0": {
                "issuer": "https://tenant.auth0.example/",
                "client_id": "id",
                "client_secret": "sec",
                "scopes": "openid  email",
            }
        }
    )
    provider = s.oidc_providers["auth0"]
    assert provider.issuer == "https://tenant.auth0.example/"  # kept exactly: iss is exact
    assert provider.scopes == "openid email"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("not json", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ({"g": "x"}, "provider 'g': expected an object"),
        ({"g": {"issuer": "https://x"}}, "missing client_id, client_secret"),
        (
            {"g": {"issuer": "https://x", "client_id": "i", "client_secret": "s", "scope": "x"}},
            "unknown key 'scope'",
        ),
        ({"g": {"issuer": "ftp://x", "client_id": "i", "client_secret": "s"}}, "issuer"),
        ({"g": {"issuer": "https://x?a=1", "client_id": "i", "client_secret": "s"}}, "query"),
        ({"g": {"issuer": "https://x", "client_id": 5, "client_secret": "s"}}, "must be a string"),
        (
            {
                "g": {
                    "issuer": "https://x",
                    "client_id": "i",
                    "client_secret": "s",
                    "scopes": "email",
                }
            },
            "scopes must include openid",
        ),
        ({"a/b": {"issuer": "https://x", "client_id": "i", "client_secret": "s"}}, "provider name"),
    ],
)
def test_bad_provider_settings_stop_start_up_in_one_line(raw: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _providers(raw)
    message = str(info.value)
    assert message.startswith("TOKEND_OIDC_PROVIDERS: ")
    assert words in message
    assert "\n" not in message


def _with_provider(**extra: str) -> dict[str, str]:
    return {
        "TOKEND_OIDC_PROVIDERS": json.dumps(
            {"test": {"issuer": "http://127.0.0.1:9", "client_id": "i", "client_secret": "s"}}
        ),
        "TOKEND_OIDC_RETURN_TO": "https://app.example.com/done",
        **extra,
    }


async def test_unknown_provider_is_404(make_client: Any) -> None:
    client = await make_client(**_with_provider())
    for path in (
        "/auth/oidc/nope/login",
        "/auth/oidc/nope/callback?state=x&code=y",
    ):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 404, path
        assert (await resp.json())["error"] == "not_found"
    resp = await client.post("/auth/oidc/nope/link", headers={"Authorization": "Bearer x.y.z"})
    assert resp.status in (401, 404)


@pytest.mark.parametrize(
    "return_to",
    [
        "https://app.example.com.evil.com/done",
        "https://evil.com/",
        "https://app.example.com@evil.com/done",
        "//evil.com",
        "javascript:alert(1)",
    ],
)
async def test_open_redirects_are_refused(make_client: Any, return_to: str) -> None:
    client = await make_client(**_with_provider())
    resp = await client.get(
        "/auth/oidc/test/login", params={"return_to": return_to}, allow_redirects=False
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert "return_to" in body["error_description"]
    assert "Location" not in resp.headers


async def test_malformed_callbacks_are_json_errors(make_client: Any) -> None:
    client = await make_client(**_with_provider())
    for query in ("", "?code=x", "?state=", "?state=unknown&code=x", "?state=a&state=b"):
        resp = await client.get(f"/auth/oidc/test/callback{query}", allow_redirects=False)
        assert resp.status == 400, query
        body = await resp.json()
        assert body["error"] == "invalid_request"
        assert "Location" not in resp.headers


async def test_exchange_needs_a_code(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/auth/oidc/exchange", json={})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_grant"
    resp = await client.post("/auth/oidc/exchange", data="login_code=x")
    assert resp.status == 415


async def test_head_never_starts_or_consumes_a_login(make_client: Any) -> None:
    client = await make_client(**_with_provider())
    for path in (
        "/auth/oidc/test/login",
        "/auth/oidc/test/callback?state=x&code=y",
        "/auth/oidc/test/link/start?ticket=x",
    ):
        resp = await client.head(path, allow_redirects=False)
        assert resp.status == 405, path


def test_flow_start_limit_setting() -> None:
    assert Settings.from_env({}).oidc_starts_per_ip == 60
    assert Settings.from_env({"TOKEND_OIDC_STARTS_PER_IP": "5"}).oidc_starts_per_ip == 5
    with pytest.raises(ConfigError, match="TOKEND_OIDC_STARTS_PER_IP"):
        Settings.from_env({"TOKEND_OIDC_STARTS_PER_IP": "0"})


async def test_unknown_link_tickets_and_codes_are_refused(make_client: Any) -> None:
    client = await make_client(**_with_provider())
    resp = await client.get("/auth/oidc/test/link/start?ticket=nope", allow_redirects=False)
    assert resp.status == 400
    assert "ticket" in (await resp.json())["error_description"]
    resp = await client.post("/auth/oidc/link/confirm", json={"link_code": "x"})
    assert resp.status == 401  # Bearer first: an anonymous caller learns nothing
