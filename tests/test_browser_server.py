"""The server half of the browser work (docs/browser.md): cookie mode and its CSRF rule,
CORS, logout-others, tokend's own /login as a return_to, /static/* and the settings."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from service.errors import ConfigError
from service.http import static
from service.http.appkeys import OIDC, SETTINGS
from service.settings import Settings
from tests.support import PASSWORD, bearer, register, unverified
from tests.support.redisdata import stream_events

COOKIE = "__Host-tokend-refresh"
APP = "https://app.example.com"
EVIL = "https://evil.example.net"
CSRF = {"Origin": APP, "X-Tokend-CSRF": "1"}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@pytest.fixture
async def cookie_client(make_client: Any) -> Any:
    return await make_client(TOKEND_REFRESH_COOKIE="true", TOKEND_ALLOWED_ORIGINS=APP)


def set_cookie(resp: Any) -> Any:
    """The one Set-Cookie of the refresh cookie in ``resp`` (a Morsel)."""
    values = [v for v in resp.headers.getall("Set-Cookie", []) if v.startswith(COOKIE + "=")]
    assert len(values) == 1, values
    jar: SimpleCookie = SimpleCookie()
    jar.load(values[0])
    return jar[COOKIE]


def cookie_header(token: str) -> dict[str, str]:
    # The test client's jar (rightly) keeps a Secure cookie off plain http: send it by hand.
    return {"Cookie": f"{COOKIE}={token}"}


async def cookie_login(client: Any, username: str = "alice") -> tuple[dict[str, Any], str]:
    resp = await client.post(
        "/auth/login", json={"username": username, "password": PASSWORD}, headers={"Origin": APP}
    )
    assert resp.status == 200, await resp.text()
    return await resp.json(), set_cookie(resp).value


# -- cookie mode --------------------------------------------------------------------------


async def test_login_sets_the_cookie_with_its_attributes_and_no_refresh_token_elsewhere(
    cookie_client: Any,
) -> None:
    await register(cookie_client, "alice")
    resp = await cookie_client.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers={"Origin": APP}
    )
    assert resp.status == 200
    body = await resp.json()
    raw = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith(COOKIE))
    attributes = {a.strip().split("=")[0].lower() for a in raw.split(";")[1:]}
    assert attributes == {"httponly", "secure", "samesite", "path", "max-age"}
    morsel = set_cookie(resp)
    assert morsel["httponly"] and morsel["secure"]
    assert morsel["samesite"] == "Strict" and morsel["path"] == "/"
    token = morsel.value
    assert unverified(token)[0]["typ"] == "rt+jwt"
    assert int(morsel["max-age"]) == body["refresh_expires_in"] > 0
    assert "refresh_token" not in body and "X-Refresh-Token" not in resp.headers
    assert token not in await resp.text()
    assert {"access_token", "token_type", "expires_in"} <= body.keys()
    assert resp.headers["Authorization"] == f"Bearer {body['access_token']}"


async def test_bearer_mode_keeps_the_refresh_token_in_body_and_header(client: Any) -> None:
    await register(client, "alice")
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers={"Origin": EVIL}
    )
    assert resp.status == 200  # no Origin rule without cookie mode
    body = await resp.json()
    assert body["refresh_token"] == resp.headers["X-Refresh-Token"]
    assert not resp.headers.getall("Set-Cookie", [])


async def test_refresh_from_the_cookie_rotates_and_sets_the_new_cookie(
    cookie_client: Any,
) -> None:
    await register(cookie_client, "alice")
    first, token = await cookie_login(cookie_client)
    resp = await cookie_client.post("/auth/refresh", headers={**CSRF, **cookie_header(token)})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    rotated = set_cookie(resp).value
    assert rotated != token and "refresh_token" not in body
    assert unverified(rotated)[1]["sid"] == unverified(first["access_token"])[1]["sid"]
    # the new cookie is the live one: it refreshes again
    again = await cookie_client.post("/auth/refresh", headers={**CSRF, **cookie_header(rotated)})
    assert again.status == 200, await again.text()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tokend-CSRF": "1"},  # no Origin
        {"Origin": EVIL, "X-Tokend-CSRF": "1"},
        {"Origin": APP},  # no X-Tokend-CSRF
        {"Origin": APP, "X-Tokend-CSRF": ""},
        {"Origin": "null", "X-Tokend-CSRF": "1"},
    ],
)
async def test_a_cookie_refresh_without_the_csrf_proofs_is_403_and_rotates_nothing(
    make_client: Any, redis_client: Any, headers: dict[str, str]
) -> None:
    # No reuse grace: had the refused request rotated the token, using it again would be a
    # replay that ends the session.
    cookie_client = await make_client(
        TOKEND_REFRESH_COOKIE="true", TOKEND_ALLOWED_ORIGINS=APP, TOKEND_REFRESH_REUSE_GRACE="0"
    )
    await register(cookie_client, "alice")
    _, token = await cookie_login(cookie_client)
    resp = await cookie_client.post("/auth/refresh", headers={**headers, **cookie_header(token)})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"
    assert not resp.headers.getall("Set-Cookie", [])
    # not rotated: the token is still the current one, so the session refreshes with it
    ok = await cookie_client.post("/auth/refresh", headers={**CSRF, **cookie_header(token)})
    assert ok.status == 200, await ok.text()
    events = await stream_events(redis_client, cookie_client.app[SETTINGS].redis_prefix)
    assert not [e for e in events if e["type"] == "session.revoked"]


async def test_a_cookie_setting_request_from_a_foreign_origin_is_403(cookie_client: Any) -> None:
    await register(cookie_client, "alice")
    resp = await cookie_client.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers={"Origin": EVIL}
    )
    assert resp.status == 403
    assert not resp.headers.getall("Set-Cookie", [])
    resp = await cookie_client.post(
        "/auth/oidc/exchange",
        json={"login_code": "x", "code_verifier": "y"},
        headers={"Origin": EVIL},
    )
    assert resp.status == 403
    # a login without Origin (not a cross-origin browser request) still works
    resp = await cookie_client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 200


async def test_logout_by_the_cookie_ends_its_session_and_clears_the_cookie(
    cookie_client: Any, redis_client: Any
) -> None:
    await register(cookie_client, "alice")
    body, token = await cookie_login(cookie_client)
    refused = await cookie_client.post(
        "/auth/logout", headers={"Origin": APP, **cookie_header(token)}
    )
    assert refused.status == 403  # no X-Tokend-CSRF
    assert (await cookie_client.get("/auth/me", headers=bearer(body["access_token"]))).status == 200
    resp = await cookie_client.post("/auth/logout", headers={**CSRF, **cookie_header(token)})
    assert resp.status == 204
    cleared = set_cookie(resp)
    assert cleared.value == "" and cleared["max-age"] == "0"
    assert cleared["secure"] and cleared["httponly"] and cleared["path"] == "/"
    assert (await cookie_client.get("/auth/me", headers=bearer(body["access_token"]))).status == 401
    again = await cookie_client.post("/auth/refresh", headers={**CSRF, **cookie_header(token)})
    assert again.status == 401
    events = await stream_events(redis_client, cookie_client.app[SETTINGS].redis_prefix)
    sid = unverified(body["access_token"])[1]["sid"]
    assert [
        (e["type"], e["sid"], e["reason"]) for e in events if e["type"] == "session.revoked"
    ] == [("session.revoked", sid, "logout")]


async def test_logout_with_a_bearer_token_clears_the_cookie_too(cookie_client: Any) -> None:
    await register(cookie_client, "alice")
    body, _ = await cookie_login(cookie_client)
    resp = await cookie_client.post("/auth/logout", headers=bearer(body["access_token"]))
    assert resp.status == 204
    assert set_cookie(resp)["max-age"] == "0"
    assert (await cookie_client.get("/auth/me", headers=bearer(body["access_token"]))).status == 401


async def test_logout_without_credentials_is_still_401(cookie_client: Any) -> None:
    resp = await cookie_client.post("/auth/logout", headers=CSRF)
    assert resp.status == 401


# -- CORS ---------------------------------------------------------------------------------


async def test_a_preflight_from_an_allowed_origin_is_answered(cookie_client: Any) -> None:
    resp = await cookie_client.options(
        "/auth/refresh",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-tokend-csrf",
        },
    )
    assert resp.status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == APP
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Allow-Methods"] == "GET, POST, DELETE"
    assert h["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Tokend-CSRF, DPoP"
    assert h["Access-Control-Max-Age"] == "600"
    assert h["Vary"] == "Origin"


async def test_a_preflight_from_another_origin_is_403_without_cors_headers(
    cookie_client: Any,
) -> None:
    resp = await cookie_client.options(
        "/auth/refresh", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden"
    assert not [k for k in resp.headers if k.lower().startswith("access-control-")]


async def test_answers_to_an_allowed_origin_carry_the_cors_headers(cookie_client: Any) -> None:
    resp = await cookie_client.get("/auth/me", headers={"Origin": APP})  # an error answer
    assert resp.status == 401
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == APP
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Access-Control-Expose-Headers"] == "WWW-Authenticate, Retry-After, DPoP-Nonce"
    assert "Origin" in h["Vary"]
    other = await cookie_client.get("/healthz", headers={"Origin": EVIL})
    assert other.status == 200
    assert not [k for k in other.headers if k.lower().startswith("access-control-")]


async def test_every_answer_varies_on_origin(cookie_client: Any) -> None:
    """A shared cache must not hand /static/tokend-client.js as fetched without an Origin
    (no CORS headers) to an allowed origin's page, nor the other way round."""
    for headers in ({}, {"Origin": EVIL}, {"Origin": APP}):
        resp = await cookie_client.get("/static/tokend-client.js", headers=headers)
        assert resp.status == 200
        assert "Origin" in [v.strip() for v in resp.headers["Vary"].split(",")]


async def test_the_issuer_origin_is_always_allowed(make_client: Any) -> None:
    client = await make_client(TOKEND_ISSUER="https://auth.example.com/base")
    resp = await client.get("/healthz", headers={"Origin": "https://auth.example.com"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://auth.example.com"


# -- logout-others ------------------------------------------------------------------------


async def test_logout_others_ends_every_other_session_and_keeps_this_one(
    client: Any, redis_client: Any
) -> None:
    await register(client, "alice")
    await register(client, "bob")
    sessions = [
        await (
            await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
        ).json()
        for _ in range(3)
    ]
    bob = await (
        await client.post("/auth/login", json={"username": "bob", "password": PASSWORD})
    ).json()
    current, *others = sessions
    resp = await client.post("/auth/logout-others", headers=bearer(current["access_token"]))
    assert resp.status == 204
    assert (await client.get("/auth/me", headers=bearer(current["access_token"]))).status == 200
    assert (
        await client.post("/auth/refresh", headers=bearer(current["refresh_token"]))
    ).status == 200
    for other in others:
        assert (await client.get("/auth/me", headers=bearer(other["access_token"]))).status == 401
        gone = await client.post("/auth/refresh", headers=bearer(other["refresh_token"]))
        assert gone.status == 401
    assert (await client.get("/auth/me", headers=bearer(bob["access_token"]))).status == 200
    events = await stream_events(redis_client, client.app[SETTINGS].redis_prefix)
    ended = {(e["sid"], e["reason"]) for e in events if e["type"] == "session.revoked"}
    assert ended == {(unverified(o["access_token"])[1]["sid"], "logout_others") for o in others}
    assert not [e for e in events if e["type"] == "user.revoked"]
    metrics = await (await client.get("/metrics")).text()
    assert 'tokend_revocations_total{reason="logout_others"} 2.0' in metrics


async def test_logout_others_needs_a_bearer_token(client: Any) -> None:
    assert (await client.post("/auth/logout-others")).status == 401


# -- tokend's own /login as a return_to ---------------------------------------------------


async def test_tokends_own_login_page_is_an_allowed_return_to(make_client: Any) -> None:
    client = await make_client(TOKEND_ISSUER="https://auth.example.com")
    flow = client.app[OIDC]
    assert (
        flow.check_return_to("https://auth.example.com/login") == "https://auth.example.com/login"
    )
    assert flow.check_return_to("https://auth.example.com/login?lang=ko")
    with pytest.raises(Exception, match="return_to"):
        flow.check_return_to("https://auth.example.com/account")
    with pytest.raises(Exception, match="return_to"):
        flow.check_return_to("https://evil.example.net/login")


# -- static files -------------------------------------------------------------------------


@pytest.fixture
def static_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A static directory of the test's own (service/static/ belongs to the JS and pages
    work), with a file beside it that must never be served."""
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "hello.js").write_text("export const hello = 1;\n")
    (tmp_path / "static" / "site.css").write_text("body { margin: 0 }\n")
    (tmp_path / "static" / ".hidden.js").write_text("secret")
    (tmp_path / "static" / "folder.js").mkdir()
    (tmp_path / "secret.js").write_text("secret")
    monkeypatch.setattr(static, "STATIC_DIR", tmp_path / "static")
    return tmp_path / "static"


async def test_static_files_are_served_with_the_page_headers(client: Any, static_dir: Path) -> None:
    resp = await client.get("/static/hello.js")
    assert resp.status == 200
    assert await resp.text() == "export const hello = 1;\n"
    assert resp.content_type == "text/javascript"
    assert resp.headers["Cache-Control"] == "no-cache"
    for name, value in PAGE_HEADERS.items():
        assert resp.headers[name] == value
    css = await client.get("/static/site.css")
    assert css.status == 200 and css.content_type == "text/css"


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/.hidden.js",
        "/static/folder.js",
        "/static/..%2Fsecret.js",
        "/static/%2E%2E%2Fsecret.js",
        "/static/../secret.js",
        "/static/hello.js%00",
        "/static/",
    ],
)
async def test_anything_but_a_static_file_is_404_json(
    client: Any, static_dir: Path, path: str
) -> None:
    resp = await client.get(path)
    assert resp.status == 404, path
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == "not_found"
    assert "secret" not in await resp.text()


def test_the_package_ships_the_static_directory() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"static/*"' in pyproject
    assert Path(static.__file__).resolve().parent.parent / "static" == static.STATIC_DIR


# -- settings -----------------------------------------------------------------------------


def test_the_browser_settings_are_read_and_normalised() -> None:
    s = Settings.from_env(
        {
            "TOKEND_REFRESH_COOKIE": "true",
            "TOKEND_ALLOWED_ORIGINS": "HTTPS://App.Example.com:443, http://localhost:3000,,",
            "TOKEND_ISSUER": "https://auth.example.com/tokend",
        }
    )
    assert s.refresh_cookie is True
    assert s.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert s.browser_origins == {
        "https://app.example.com",
        "http://localhost:3000",
        "https://auth.example.com",
    }
    default = Settings.from_env({})
    assert default.refresh_cookie is False and default.allowed_origins == ()
    assert default.browser_origins == {"http://127.0.0.1:8080"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKEND_REFRESH_COOKIE", "maybe"),
        ("TOKEND_ALLOWED_ORIGINS", "https://app.example.com/path"),
        ("TOKEND_ALLOWED_ORIGINS", "*"),
        ("TOKEND_ALLOWED_ORIGINS", "app.example.com"),
        ("TOKEND_ALLOWED_ORIGINS", "ftp://app.example.com"),
        ("TOKEND_ALLOWED_ORIGINS", "https://app.example.com?x=1"),
        ("TOKEND_ALLOWED_ORIGINS", "https://user@app.example.com"),
        ("TOKEND_ALLOWED_ORIGINS", "https://app.example.com:99999"),
        ("TOKEND_ALLOWED_ORIGINS", "https://ok.example.com, https://*.example.com"),
    ],
)
def test_bad_browser_settings_stop_start_up_with_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
