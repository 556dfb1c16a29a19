"""The framework-independent core every integration stands on: the Guard's answers, the
two ways into the verifier, the settings, and the BackgroundListener of threaded and
forking servers."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import REDIS_URL
from tests.support import bearer, register_and_login, unverified
from tests.test_subscriber_verifier import JwksProxy
from tokend_client import (
    Answer,
    BackgroundListener,
    Guard,
    JWKSUnavailable,
    RedisTarget,
    RevocationListener,
    Subscriber,
    SubscriberSettings,
    TokenExpired,
    TokenVerifier,
    has_scope,
)
from tokend_client._errors import InvalidToken

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "http://127.0.0.1:8080"


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    return await make_client()


@pytest.fixture
async def proxy(tokend: Any, aiohttp_server: Any) -> JwksProxy:
    p = JwksProxy(str(tokend.make_url("/.well-known/jwks.json")))
    app = web.Application()
    app.router.add_get("/jwks.json", p.jwks)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(p.url)

    async def huge(request: web.Request) -> web.Response:
        return web.json_response({"keys": [], "pad": "x" * (300 * 1024)})

    app.router.add_get("/redirect.json", redirect)
    app.router.add_get("/huge.json", huge)
    server = await aiohttp_server(app)
    p.url = str(server.make_url("/jwks.json"))
    return p


def verifier_for(url: str, **options: Any) -> TokenVerifier:
    return TokenVerifier(url, issuer=ISSUER, audience="tokend", **options)


# the Guard


def guard() -> Guard:
    return Guard(verifier_for("http://127.0.0.1:1/jwks.json"), realm="api")


@pytest.mark.parametrize(
    ("authorization", "query", "description"),
    [
        (["Basic abc"], False, "Authorization must use the Bearer or DPoP scheme"),
        (["Bearer"], False, "Bearer scheme without a token"),
        (["Bearer a b"], False, "Authorization must be 'Bearer <one token>'"),
        (["Bearer a", "Bearer b"], False, "more than one Authorization header"),
        # what gunicorn and Werkzeug make of two headers
        (["Bearer a,Bearer b"], False, "more than one Authorization header"),
        (["Bearer a, Basic b"], False, "more than one Authorization header"),
        (["Bearer a,b"], False, "Authorization must be 'Bearer <one token>'"),
        ([], True, "tokens in the URL are not accepted; use the Authorization header"),
    ],
)
def test_a_malformed_authorization_is_a_400_with_the_challenge(
    authorization: list[str], query: bool, description: str
) -> None:
    answer = guard().check_sync(authorization, query)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.body) == (
        400,
        {"error": "invalid_request", "error_description": description},
    )
    assert answer.header_dict() == {
        "WWW-Authenticate": f'Bearer realm="api", error="invalid_request", '
        f'error_description="{description}"',
        "Cache-Control": "no-store",
    }
    assert json.loads(answer.json()) == answer.body


def test_no_credentials_is_none_and_required_is_the_bare_challenge() -> None:
    g = guard()
    assert g.check_sync([]) is None
    required = g.required()
    assert (required.status, required.error) == (401, "unauthorized")
    assert (
        required.header_dict()["WWW-Authenticate"]
        == 'Bearer realm="api", DPoP algs="ES256 EdDSA RS256 PS256"'
    )


def test_scopes_and_the_403() -> None:
    claims = {"scope": "read write"}
    assert has_scope(claims, "read") and has_scope(claims, ["read", "write"])
    assert not has_scope(claims, "admin") and not has_scope({}, "read")
    assert not has_scope({"scope": ["read"]}, "read")  # the claim is a space-separated string
    answer = guard().forbidden("admin")
    assert (answer.status, answer.error) == (403, "insufficient_scope")
    assert answer.header_dict()["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="token lacks scope", scope="admin"'
    )


async def test_a_revoked_or_blind_deny_source_is_refused(tokend: Any, proxy: JwksProxy) -> None:
    tokens = await register_and_login(tokend, "alice")

    class Deny:
        ready = False
        revoked = False

        margin = 0.0

        def is_revoked(self, claims: dict[str, Any]) -> bool:
            return self.revoked

        def outlive(self, seconds: float) -> None:
            self.margin = seconds

        async def settle(self) -> None:
            pass

    deny = Deny()
    g = Guard(verifier_for(proxy.url, exp_leeway=4), deny)
    assert deny.margin == 4  # deny entries outlive the verifier's exp leeway
    header = [bearer(tokens["access_token"])["Authorization"]]
    blind = await g.check(header)
    assert isinstance(blind, Answer) and blind.status == 503
    assert blind.header_dict()["Retry-After"] == "1"
    deny.ready = True
    claims = await g.check(header)
    assert (
        isinstance(claims, dict) and claims["sid"] == unverified(tokens["access_token"])[1]["sid"]
    )
    deny.revoked = True
    revoked = await g.check(header)
    assert isinstance(revoked, Answer) and (revoked.status, revoked.error) == (401, "invalid_token")
    assert revoked.description == "token revoked"


# the verifier's two ways in


async def test_sync_and_async_verification_agree(tokend: Any, proxy: JwksProxy) -> None:
    tokens = await register_and_login(tokend, "alice")
    access = tokens["access_token"]
    _, claims = unverified(access)
    cases = {
        "valid": access,
        "refresh token": tokens["refresh_token"],
        "bad signature": access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB"),
        "garbage": "not.a.token",
    }
    for name, token in cases.items():
        outcomes = []
        for way in ("async", "sync"):
            verifier = verifier_for(proxy.url)
            try:
                if way == "async":
                    result: Any = await verifier.verify(token)
                else:
                    result = await asyncio.to_thread(verifier.verify_sync, token)
            except InvalidToken as exc:
                result = (type(exc).__name__, exc.description)
            outcomes.append(result)
        assert outcomes[0] == outcomes[1], name
    assert outcomes  # the last case ran
    # expiry is the same rule both ways: no leeway on exp by default
    from service.clock import FrozenClock

    for way in ("async", "sync"):
        verifier = verifier_for(proxy.url, clock=FrozenClock(claims["exp"]))
        with pytest.raises(TokenExpired):
            if way == "async":
                await verifier.verify(access)
            else:
                await asyncio.to_thread(verifier.verify_sync, access)


async def test_threads_share_one_jwks_fetch(tokend: Any, proxy: JwksProxy) -> None:
    tokens = await register_and_login(tokend, "alice")
    proxy.delay = 0.3  # every thread arrives while the first fetch is under way
    verifier = verifier_for(proxy.url, min_refetch_interval=0)
    barrier = threading.Barrier(16)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(verifier.verify_sync(tokens["access_token"])["sid"])

    threads = [threading.Thread(target=call) for _ in range(16)]
    await asyncio.to_thread(lambda: [t.start() for t in threads] and [t.join() for t in threads])
    assert len(results) == 16 and len(set(results)) == 1
    assert proxy.hits == 1
    # and only one verification did the signature check; the rest came from the cache
    assert verifier.cache_misses + verifier.cache_hits == 16


async def test_the_jwks_fetch_follows_no_redirect_and_reads_a_bounded_body(
    tokend: Any, proxy: JwksProxy
) -> None:
    tokens = await register_and_login(tokend, "alice")
    for path in ("/redirect.json", "/huge.json"):
        verifier = verifier_for(proxy.url.replace("/jwks.json", path))
        with pytest.raises(JWKSUnavailable):
            await verifier.verify(tokens["access_token"])
        assert verifier.kids == frozenset() and verifier.fetch_errors == 1
    assert proxy.hits == 0  # the redirect's target was never fetched


# the settings


def test_settings_read_the_tokend_names() -> None:
    settings = SubscriberSettings.from_env(
        {
            "TOKEND_ISSUER": "https://id.example/",
            "TOKEND_AUDIENCE": "api",
            "TOKEND_REDIS_MODE": "cluster",
            "TOKEND_REDIS_URL": "redis://10.0.0.1:7000",
            "TOKEND_REDIS_PREFIX": "t1",
            "TOKEND_EXP_LEEWAY": "3",
            "TOKEND_VERIFY_CACHE_SIZE": "0",
        }
    )
    assert settings.jwks_url == "https://id.example/.well-known/jwks.json"
    assert settings.redis == RedisTarget(mode="cluster", url="redis://10.0.0.1:7000")
    verifier = settings.verifier()
    assert (verifier.issuer, verifier.audience, verifier.exp_leeway) == (
        "https://id.example/",
        "api",
        3,
    )
    assert verifier.leeway == 30 and verifier.cache_size == 0
    # the deny entries outlive the exp leeway: a revoked token is never let back in by it
    listener = settings.listener()
    assert listener.prefix == "t1" and listener.deny_list.margin == 3
    with pytest.raises(ValueError, match="TOKEND_JWKS_CACHE_TTL"):
        SubscriberSettings.from_env({"TOKEND_JWKS_CACHE_TTL": "soon"})
    with pytest.raises(ValueError, match="TOKEND_EXP_LEEWAY: at most 5 seconds"):
        SubscriberSettings.from_env({"TOKEND_EXP_LEEWAY": "30"})


# the BackgroundListener


async def test_a_background_listener_starts_on_first_use_and_follows_revocations(
    tokend: Any, redis_prefix: str
) -> None:
    tokens = await register_and_login(tokend, "alice")
    claims = unverified(tokens["access_token"])[1]
    background = BackgroundListener(
        lambda: RevocationListener(RedisTarget(url=REDIS_URL), prefix=redis_prefix)
    )
    assert not any(t.name.startswith("tokend-listener") for t in threading.enumerate())
    try:
        assert await asyncio.to_thread(lambda: background.ready)  # first use: waits for it
        assert not background.is_revoked(claims)
        resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
        assert resp.status == 204
        deadline = time.monotonic() + 2
        while not background.is_revoked(claims):
            assert time.monotonic() < deadline, "the logout never reached the thread"
            await asyncio.sleep(0.005)
    finally:
        await asyncio.to_thread(background.stop)
    assert not any(t.name.startswith("tokend-listener") for t in threading.enumerate())


_FORKING = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from tokend_client import BackgroundListener, RevocationListener, RedisTarget
    url, prefix, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    made = []
    def factory():
        made.append(os.getpid())
        return RevocationListener(RedisTarget(url=url), prefix=prefix)
    background = BackgroundListener(factory)   # as a gunicorn --preload master builds it
    def threads():
        return [t.name for t in threading.enumerate() if t.name.startswith("tokend-listener")]
    parent_threads = threads()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        # started by the fork hook; the worker's first request waits for the replay
        report = {"ready": background.ready, "revoked": background.is_revoked(claims),
                  "threads": threads(), "pid": os.getpid()}
        background.stop()
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 65536))
    os.waitpid(pid, 0)
    print(json.dumps({"parent_threads": parent_threads, "after": threads(), "child": child}))
    """
)


async def test_a_forked_worker_replays_on_its_own_and_the_parent_runs_nothing(
    tokend: Any, redis_prefix: str
) -> None:
    tokens = await register_and_login(tokend, "alice")
    claims = unverified(tokens["access_token"])[1]
    resp = await tokend.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert resp.status == 204  # revoked before the worker exists: it must replay it
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FORKING,
        REDIS_URL,
        redis_prefix,
        json.dumps(claims),
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["parent_threads"] == [] and report["after"] == []
    child = report["child"]
    assert child["ready"] and child["revoked"]
    assert child["threads"] == [f"tokend-listener:{redis_prefix}"]


async def test_the_first_use_on_an_event_loop_never_blocks_it() -> None:
    background = BackgroundListener(
        lambda: RevocationListener(RedisTarget(url="redis://127.0.0.1:1/0")), first_wait=3
    )
    try:
        started = time.monotonic()
        assert not background.ready  # nothing to replay from: not ready, and at once
        assert time.monotonic() - started < 0.5
        # a thread without a loop waits for the replay (here: for all of first_wait)
        background.first_wait = 0.3
        other = BackgroundListener(
            lambda: RevocationListener(RedisTarget(url="redis://127.0.0.1:1/0")),
            first_wait=0.3,
        )
        started = time.monotonic()
        assert not await asyncio.to_thread(lambda: other.ready)
        assert time.monotonic() - started >= 0.3
        await asyncio.to_thread(other.stop)
    finally:
        await asyncio.to_thread(background.stop)


async def test_a_subscriber_without_redis_only_verifies(tokend: Any, proxy: JwksProxy) -> None:
    tokens = await register_and_login(tokend, "alice")
    subscriber = Subscriber(SubscriberSettings(jwks_url=proxy.url, redis=None), threaded=False)
    assert subscriber.listener is None and subscriber.ready
    assert subscriber.health() == (200, {"status": "ok", "last_event": None})
    claims = await subscriber.guard.check([bearer(tokens["access_token"])["Authorization"]])
    assert isinstance(claims, dict)
    await subscriber.close()
