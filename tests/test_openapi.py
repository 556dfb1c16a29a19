"""The OpenAPI document: valid, built from the router, and true of a running tokend.

The schemathesis run starts tokend in-process on a real port (its TOKEND_ISSUER is its own
URL) next to a small OpenID provider of the test's own, prepares a user, sessions, tokens,
a login code and a callback, and runs ``st run`` on the document's URL (the document
exactly as served) as a subprocess awaited on the event loop that serves tokend; the hooks
in tests/st_hooks.py add the prepared values as test cases beside the document's own
examples. Afterwards tokend's own metrics must show a success answer on every operation:
the run reached the success paths, not only the error ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.devredis import free_port
from service.http.apidoc.core import operation_of
from service.http.appkeys import SETTINGS
from service.http.openapi import UndocumentedRoute, build_document
from service.settings import Settings
from tests.support import PASSWORD, TokendTestServer, bearer
from tests.support.oidc import FakeProvider

CONFIG = Path(__file__).with_name("schemathesis.toml")
CLIENT_ID, CLIENT_SECRET = "st-app", "st-app-secret"
OIDC_CLIENT_ID = "tokend"
RETURN_TO = "https://app.example.com/done"
# The app's PKCE-style pair for the login_code (RFC 7636 S256).
VERIFIER = "st-verifier-" + "v" * 40
CHALLENGE = (
    base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).decode().rstrip("=")
)
ST_TIMEOUT = float(os.environ.get("TOKEND_TEST_ST_TIMEOUT", "240"))
# The CI run is fixed (seed 1, 20 examples an operation); set these to explore further.
ST_SEED = os.environ.get("TOKEND_TEST_ST_SEED", "1")
ST_MAX_EXAMPLES = os.environ.get("TOKEND_TEST_ST_MAX_EXAMPLES", "20")
ST_EXTRA_ARGS = shlex.split(os.environ.get("TOKEND_TEST_ST_ARGS", ""))


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }


# -- the document itself -----------------------------------------------------------------


def _document(settings: Settings) -> dict[str, Any]:
    return build_document(settings, create_app(settings).router)


def test_document_is_valid_openapi(tmp_path: Path) -> None:
    from openapi_spec_validator import validate

    settings = Settings.from_env(
        {
            "TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db",
            "TOKEND_ISSUER": "https://auth.example.com",
            "TOKEND_OIDC_PROVIDERS": json.dumps(
                {
                    "google": {
                        "issuer": "https://accounts.google.com",
                        "client_id": "x",
                        "client_secret": "y",
                    }
                }
            ),
            "TOKEND_OIDC_RETURN_TO": "https://app.example.com/done",
        }
    )
    document = _document(settings)
    validate(document)
    assert document["servers"] == [{"url": "https://auth.example.com"}]
    assert document["info"]["version"] == version("tokend")
    validate(_document(Settings.from_env({"TOKEND_DATABASE_URL": settings.database_url})))


def _served(app: web.Application) -> set[tuple[str, str]]:
    served = {
        (route.method, route.resource.canonical) for route in app.router.routes() if route.resource
    }
    # aiohttp adds HEAD beside every GET; HEAD is part of GET in HTTP and not documented.
    return {(m, p) for m, p in served if not (m == "HEAD" and ("GET", p) in served)}


def test_every_route_has_a_description_and_only_routes_are_described(tmp_path: Path) -> None:
    settings = Settings.from_env({"TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db"})
    app = create_app(settings)
    undocumented = [
        f"{route.method} {route.resource.canonical if route.resource else route}"
        for route in app.router.routes()
        if route.method != "HEAD" and operation_of(route.handler) is None
    ]
    assert undocumented == []
    assert _operations(build_document(settings, app.router)) == _served(app)


def test_a_route_without_a_description_cannot_be_served(tmp_path: Path) -> None:
    settings = Settings.from_env({"TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db"})
    app = create_app(settings)

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/auth/undocumented", undocumented)
    with pytest.raises(UndocumentedRoute, match="POST /auth/undocumented"):
        build_document(settings, app.router)


# The contract the document carried when it was still written by hand, one line an
# operation: request media type (or -) and every status. Generated, it must say the same.
CONTRACT = """
GET /healthz - 200 431
GET /readyz - 200 431 503
GET /metrics - 200 431
GET /openapi.json - 200 431
GET /.well-known/jwks.json - 200 431
GET /.well-known/oauth-authorization-server - 200 431
POST /auth/register json 201 400 403 409 413 415 429 431 503
POST /auth/login json 200 400 401 403 413 415 429 431 503
POST /auth/refresh json? 200 400 401 403 413 415 431 503
GET /auth/me - 200 400 401 431 503
POST /auth/logout - 204 400 401 403 431 503
POST /auth/logout-others - 204 400 401 431 503
POST /auth/logout-all - 204 400 401 431 503
GET /auth/sessions - 200 400 401 431 503
DELETE /auth/sessions/{sid} - 204 400 401 404 431 503
POST /auth/password json 200 400 401 413 415 429 431 503
POST /oauth/token form 200 400 401 413 415 429 431 503
POST /oauth/revoke form 200 400 401 413 415 431 503
POST /oauth/introspect form 200 400 401 413 415 431 503
GET /auth/oidc/{provider}/login - 302 400 404 429 431 502 503
GET /auth/oidc/{provider}/callback - 200 302 400 404 409 431 502 503
POST /auth/oidc/exchange json 200 400 403 413 415 431 503
POST /auth/oidc/{provider}/link json? 200 400 401 404 413 415 429 431 503
GET /auth/oidc/{provider}/link/start - 302 400 404 431 502 503
POST /auth/oidc/link/confirm json 200 400 401 409 413 415 431 503
POST /auth/oidc/{provider}/backchannel-logout form 200 400 404 413 415 431 502 503
GET /auth/identities - 200 400 401 431 503
DELETE /auth/identities/{provider} - 204 400 401 404 409 431 503
GET /static/{name} - 200 404 431
GET /login - 200 431
GET /account - 200 431
"""
MEDIA = {"application/json": "json", "application/x-www-form-urlencoded": "form"}


def test_the_generated_document_keeps_the_contract(tmp_path: Path) -> None:
    document = _document(
        Settings.from_env({"TOKEND_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db"})
    )
    found = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody")
            media = "-"
            if body is not None:
                (media,) = (MEDIA[name] for name in body["content"])
                media += "" if body["required"] else "?"
            found.add(" ".join([method.upper(), path, media, *sorted(operation["responses"])]))
    assert found == set(CONTRACT.strip().splitlines())


async def test_served_document_matches_the_settings(make_client: Any) -> None:
    client: TestClient[Any, Any] = await make_client(TOKEND_ISSUER="https://auth.example.com")
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    assert document["servers"] == [{"url": "https://auth.example.com"}]
    assert document == json.loads(
        json.dumps(build_document(client.app[SETTINGS], client.app.router))
    )


async def test_openapi_json_is_listed_among_its_own_operations(make_client: Any) -> None:
    client: TestClient[Any, Any] = await make_client()
    document = await (await client.get("/openapi.json")).json()
    assert ("GET", "/openapi.json") in _operations(document)


# -- preparing the instance ------------------------------------------------------------------


class World:
    """tokend, the provider, and a browser with a cookie jar."""

    def __init__(self, client: TestClient[Any, Any], browser: aiohttp.ClientSession) -> None:
        self.client = client
        self.browser = browser
        self.base = str(client.make_url("")).rstrip("/")

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, **kwargs)
        assert resp.status == status, f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json() if resp.content_type == "application/json" else None

    async def register(self, username: str) -> None:
        await self.ok(
            "POST", "/auth/register", 201, json={"username": username, "password": PASSWORD}
        )

    async def login(self, username: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.ok(
            "POST", "/auth/login", json={"username": username, "password": PASSWORD}
        )
        return body

    async def get(self, url: str) -> aiohttp.ClientResponse:
        resp = await self.browser.get(url, allow_redirects=False)
        await resp.read()
        return resp

    async def authorize(self, start: str) -> str:
        """Start a social login at ``start`` (tokend), approve it at the provider: the
        callback URL that the provider sends the browser back to."""
        resp = await self.get(start)
        assert resp.status == 302, resp.status
        at_provider = await self.get(resp.headers["Location"])
        assert at_provider.status == 302, at_provider.status
        return at_provider.headers["Location"]

    def browser_cookie(self) -> str:
        cookies = self.browser.cookie_jar.filter_cookies(self.client.make_url("/auth/oidc/x"))
        return cookies["tokend_oidc_browser"].value


def _json(body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "media_type": "application/json"}


def _form(body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "media_type": "application/x-www-form-urlencoded"}


async def prepare(world: World, username: str) -> dict[str, list[dict[str, Any]]]:
    """Users, sessions, tokens and OIDC artefacts of this instance: test cases that reach
    the success paths, added to the document's examples by tests/st_hooks.py."""
    # The user schemathesis authenticates as (tests/schemathesis.toml logs in as them).
    await world.register(username)
    me = await world.login(username)
    # Another user's refresh tokens: the first user's logout-all and password change must
    # not revoke them before the refresh examples run.
    other = f"other-{uuid.uuid4().hex[:8]}"
    await world.register(other)
    refresh = (await world.login(other))["refresh_token"]
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    oauth = await world.ok(
        "POST",
        "/oauth/token",
        data={"grant_type": "password", "username": other, "password": PASSWORD},
        headers={"Authorization": basic},
    )

    # Link a provider account to the first user (so that unlinking it can succeed) ...
    # (the link URL is tokend's /link/start; the callback's link_code is confirmed by the
    # same session) ...
    link = await world.ok("POST", "/auth/oidc/fake/link", headers=bearer(me["access_token"]))
    callback = await world.authorize(link["authorization_url"])
    pending_link = await world.get(callback)
    assert pending_link.status == 200, await pending_link.text()
    await world.ok(
        "POST",
        "/auth/oidc/link/confirm",
        json={"link_code": (await pending_link.json())["link_code"]},
        headers=bearer(me["access_token"]),
    )
    # ... a login code from a finished social login with return_to ...
    callback = await world.authorize(
        f"{world.base}/auth/oidc/fake/login?"
        + urlencode({"return_to": RETURN_TO, "code_challenge": CHALLENGE})
    )
    done = await world.get(callback)
    assert done.status == 302, await done.text()
    login_code = parse_qs(urlsplit(done.headers["Location"]).query)["login_code"][0]
    # ... and a callback that is still to be made, with its browser cookie.
    callback = await world.authorize(f"{world.base}/auth/oidc/fake/login")
    pending = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}

    credentials = {"username": username, "password": PASSWORD}
    fake = {"path_parameters": {"provider": "fake"}}
    return {
        "POST /auth/register": [
            _json({"username": f"new-{uuid.uuid4().hex[:8]}", "password": PASSWORD})
        ],
        "POST /auth/login": [_json(credentials)],
        "POST /auth/refresh": [_json({"refresh_token": refresh})],
        # The same password again: succeeds every time, and the user can still log in.
        "POST /auth/password": [_json({"current_password": PASSWORD, "new_password": PASSWORD})],
        "POST /oauth/token": [
            _form({"grant_type": "password", **credentials}),
            _form({"grant_type": "refresh_token", "refresh_token": oauth["refresh_token"]}),
        ],
        "POST /oauth/revoke": [
            _form({"token": me["access_token"], "token_type_hint": "access_token"})
        ],
        "POST /oauth/introspect": [_form({"token": oauth["access_token"]})],
        "POST /auth/oidc/exchange": [_json({"login_code": login_code, "code_verifier": VERIFIER})],
        "GET /auth/oidc/{provider}/callback": [
            {
                **fake,
                "query": {k: pending[k] for k in ("state", "code", "iss")},
                "cookies": {"tokend_oidc_browser": world.browser_cookie()},
            }
        ],
        "GET /auth/oidc/{provider}/login": [fake],
        "POST /auth/oidc/{provider}/link": [fake],
        "DELETE /auth/identities/{provider}": [fake],
    }


# -- the schemathesis run --------------------------------------------------------------------


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    return found


def _successes(metrics: str) -> set[tuple[str, int]]:
    """(route, status) pairs that tokend answered, from its Prometheus metrics."""
    found = set()
    for match in re.finditer(
        r'^tokend_http_request_seconds_count\{route="([^"]*)",status="(\d+)"\} ([0-9.e+]+)$',
        metrics,
        re.MULTILINE,
    ):
        if float(match.group(3)) > 0:
            found.add((match.group(1), int(match.group(2))))
    return found


@pytest.mark.slow
@pytest.mark.security
@pytest.mark.timeout(ST_TIMEOUT + 60)
async def test_schemathesis_finds_nothing(
    aiohttp_client: Any, aiohttp_server: Any, make_settings: Any, tmp_path: Path
) -> None:
    st = _st()
    provider = FakeProvider.approving(OIDC_CLIENT_ID)
    provider_server = await aiohttp_server(provider.app)
    provider.issuer = str(provider_server.make_url("")).rstrip("/")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        TOKEND_ISSUER=base,
        TOKEND_OAUTH_CLIENTS=json.dumps({CLIENT_ID: {"secret": CLIENT_SECRET}, "st-public": {}}),
        TOKEND_OIDC_PROVIDERS=json.dumps(
            {
                "fake": {
                    "issuer": provider.issuer,
                    "client_id": OIDC_CLIENT_ID,
                    "client_secret": "provider-secret",
                }
            }
        ),
        TOKEND_OIDC_RETURN_TO=RETURN_TO,
        # schemathesis logs in with made-up names and passwords by the hundred: the limits
        # (tested in test_http_errors and the security suite) would soon lock every login.
        TOKEND_LOGIN_FAILURES_PER_USER="1000000",
        TOKEND_LOGIN_FAILURES_PER_IP="1000000",
        TOKEND_OIDC_STARTS_PER_IP="1000000",
        TOKEND_LOGINS_PER_USER="1000000",
        TOKEND_REGISTRATIONS_PER_IP="1000000",
        # and its logins would end the sessions of the spec's example tokens
        TOKEND_MAX_SESSIONS_PER_USER="0",
    )
    client = await aiohttp_client(TokendTestServer(create_app(settings), port=port))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        world = World(client, browser)
        username = f"st-{uuid.uuid4().hex[:8]}"
        examples = tmp_path / "examples.json"
        cases = await prepare(world, username)
    # A valid logout token of the provider (for an account without sessions; its jti is
    # single use). No exp, and iat 25 s ahead (within TOKEND_LEEWAY): it stays valid for
    # about 355 s (iat + 300 s + leeway), longer than the run takes to reach it.
    token = provider.logout_token(sub="st-nobody", exp=None, iat=int(time.time()) + 25)
    cases["POST /auth/oidc/{provider}/backchannel-logout"] = [
        {"path_parameters": {"provider": "fake"}, **_form({"logout_token": token})}
    ]
    examples.write_text(json.dumps(cases))

    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.st_hooks",
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "TOKEND_ST_EXAMPLES": str(examples),
        "TOKEND_ST_URL": base,
        "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis"),
        "TOKEND_ST_USERNAME": username,
        "TOKEND_ST_PASSWORD": PASSWORD,
        "TOKEND_ST_CLIENT_ID": CLIENT_ID,
        "TOKEND_ST_CLIENT_SECRET": CLIENT_SECRET,
        "NO_COLOR": "1",
    }
    command = [
        st,
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        ST_MAX_EXAMPLES,
        "--seed",
        ST_SEED,
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--report-dir",
        str(tmp_path / "report"),
        *ST_EXTRA_ARGS,
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), ST_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    output = out.decode(errors="replace")
    elapsed = time.monotonic() - started
    print(output)
    print(f"schemathesis took {elapsed:.1f}s")
    assert proc.returncode == 0, output[-20000:]

    # Every operation reached its success path at least once (not only its errors).
    answered = _successes(await (await client.get("/metrics")).text())
    missing = []
    document = await (await client.get("/openapi.json")).json()
    for method, path in sorted(_operations(document)):
        if not any(route == path and 200 <= status < 400 for route, status in answered):
            missing.append(f"{method} {path}")
    assert missing == [], f"no success answer for: {missing}\n{sorted(answered)}"
