"""One contract, four subscribers: every example service as a real process, real tokend.

examples/protected_service.py (aiohttp), fastapi_service.py (uvicorn), flask_service.py
and django_service.py (gunicorn, and as ASGI under uvicorn) serve the same GET
/protected, /healthz and /metrics from the same environment. Each test runs against each
of them (ids aiohttp, fastapi, flask, django, django-asgi), the multi-process ones with
two workers: every request goes on a
connection of its own and ``X-Worker-Pid`` says which worker answered, so "refused"
means refused by every worker process (tests/support/services.py).

Revocation delays (logout sent → a worker's first 401) are printed: run with -s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from service.http.appkeys import AUTH, CLOCK, KEYRING, KEYSTORE, SETTINGS
from service.keyspace import Keyspace
from tests.support import bearer, login, register, unverified
from tests.support.services import SERVICES, ExampleProcess, Reply, ServiceSpec
from tests.support.settings import REDIS_URL

pytestmark = pytest.mark.slow

ISSUER = "http://127.0.0.1:8080"  # tokend's default TOKEND_ISSUER
CHALLENGE = 'Bearer realm="tokend", DPoP algs="ES256 EdDSA RS256 PS256"'
# A revocation must be refused by every worker within this (seconds after the call).
PROPAGATION_BOUND = 2.0
# How long to keep asking until every worker has answered a request that needs no
# propagation (routing alone decides which worker takes a connection).
ROUTING_BOUND = 10.0


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(params=list(SERVICES))
def spec(request: pytest.FixtureRequest) -> ServiceSpec:
    return SERVICES[request.param]


@pytest.fixture
async def tokend(make_client: Any) -> Any:
    # No reuse grace: a rotated-out refresh token presented again is reuse at once.
    return await make_client(TOKEND_REFRESH_REUSE_GRACE="0")


MakeService = Callable[..., ExampleProcess]


@pytest.fixture
async def make_service(
    spec: ServiceSpec, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[MakeService]:
    """``make_service(tokend, redis_url=..., jwks_url=..., **env)``: the service (not
    started) wired to ``tokend``, the test's Redis prefix and a Redis (the shared one)."""
    made: list[ExampleProcess] = []

    def make(
        tokend: Any, *, redis_url: str = REDIS_URL, jwks_url: str | None = None, **extra: str
    ) -> ExampleProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
        env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "TOKEND_JWKS_URL": jwks_url or str(tokend.make_url("/.well-known/jwks.json")),
            "TOKEND_REDIS_MODE": "standalone",
            "TOKEND_REDIS_URL": redis_url,
            "TOKEND_REDIS_PREFIX": redis_prefix,
            "TOKEND_ISSUER": ISSUER,
            "TOKEND_AUDIENCE": "tokend",
            **spec.env(),
            **extra,
        }
        service = ExampleProcess(spec, env, tmp_path / f"{spec.name}-{len(made)}.log")
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()


@pytest.fixture
async def service(tokend: Any, make_service: MakeService) -> ExampleProcess:
    """The service against the test's tokend, started: every worker ready."""
    started = make_service(tokend)
    await started.start()
    return started


# --- helpers ------------------------------------------------------------------------------


def is_refusal(reply: Reply, description: str | None = None) -> bool:
    """RFC 6750 401 ``invalid_token`` with its challenge (and the description, if given)."""
    body = reply.body if isinstance(reply.body, dict) else {}
    return (
        reply.status == 401
        and body.get("error") == "invalid_token"
        and (description is None or body.get("error_description") == description)
        and reply.headers.get("WWW-Authenticate", "").startswith(
            'Bearer realm="tokend", error="invalid_token"'
        )
    )


def revoked(reply: Reply) -> bool:
    return is_refusal(reply, "token revoked")


def accepted(token: str) -> Callable[[Reply], bool]:
    """200 with this token's claims (sub, sid, jti, exp) and ``Cache-Control: no-store``."""
    claims = unverified(token)[1]

    def check(reply: Reply) -> bool:
        body = reply.body if isinstance(reply.body, dict) else {}
        return (
            reply.status == 200
            and all(body.get(name) == claims[name] for name in ("sub", "sid", "jti", "exp"))
            and reply.headers.get("Cache-Control") == "no-store"
        )

    return check


async def users_with_sessions(tokend: Any, prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` logins spread over users, 50 each: within the per-user session and login
    limits (one at a time: concurrent attempts count against the per-IP limit)."""
    names = [f"{prefix}{i:02d}" for i in range((n + 49) // 50)]
    for name in names:
        await register(tokend, name)
    return [await login(tokend, names[i // 50]) for i in range(n)]


def report(spec: ServiceSpec, what: str, since: float, firsts: dict[int, Reply]) -> list[float]:
    """Print and return each worker's delay (ms) from ``since`` to its first refusal."""
    delays = {pid: (reply.at - since) * 1000 for pid, reply in firsts.items()}
    shown = ", ".join(f"pid {pid}: {ms:.1f} ms" for pid, ms in sorted(delays.items()))
    print(f"\n[{spec.name}] {what} → 401 at every worker: {shown}")
    return list(delays.values())


def sign_with_tokend_key(tokend: Any, claims: dict[str, Any]) -> str:
    """A token signed with tokend's current signing key, with the claims given."""
    key = tokend.app[KEYRING].signing_key(tokend.app[CLOCK]())
    return jwt.encode(
        claims, key.private, algorithm=key.alg, headers={"typ": "at+jwt", "kid": key.kid}
    )


async def post(tokend: Any, path: str, token: str) -> tuple[int, Any]:
    resp = await tokend.post(path, headers=bearer(token))
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    return resp.status, body


async def wait_for_fences(redis_url: str, prefix: str, timeout: float = 20) -> float:
    """Wait until tokend has fenced every partition of an emptied Redis (each has its
    epoch again); the time of the latest fence."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    parts = Keyspace(prefix).all
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(RedisError):
                epochs = await client.mget([p.epoch for p in parts])
                if all(e is not None for e in epochs):
                    fences = await client.mget([p.fence for p in parts])
                    return max(float(f) for f in fences if f is not None)
            assert time.monotonic() < deadline, "tokend did not fence the emptied Redis"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


def timeline(replies: list[Reply]) -> str:
    """Runs of equal answers in time order: ``401 x36 @378-478ms`` (ms from the first)."""
    ordered = sorted(replies, key=lambda r: r.at)
    if not ordered:
        return "(none)"
    runs: list[list[Any]] = []
    for reply in ordered:
        key = reply.status
        if isinstance(reply.body, dict) and reply.status != 200:
            key = f"{reply.status} {reply.body.get('error_description')}"
        at = (reply.at - ordered[0].at) * 1000
        if runs and runs[-1][0] == key:
            runs[-1][1] += 1
            runs[-1][3] = at
        else:
            runs.append([key, 1, at, at])
    return ", ".join(f"{k} x{n} @{a:.0f}-{b:.0f}ms" for k, n, a, b in runs)


# --- the contract -------------------------------------------------------------------------


async def test_valid_token_gets_its_claims(spec, tokend, service) -> None:
    await register(tokend, "alice")
    tokens = await login(tokend, "alice")
    firsts = await service.every_worker(
        tokens["access_token"], accepted(tokens["access_token"]), within=ROUTING_BOUND, before=()
    )
    claims = unverified(tokens["access_token"])[1]
    for reply in firsts.values():
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.body == claims
    print(f"\n[{spec.name}] started in {service.start_seconds:.2f}s, workers {sorted(firsts)}")


async def test_health_and_metrics(spec, tokend, service) -> None:
    health = await service.every_worker(None, 200, path="/healthz", within=ROUTING_BOUND, before=())
    for reply in health.values():
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.body["status"] == "ok"
    metrics = await service.every_worker(
        None, 200, path="/metrics", within=ROUTING_BOUND, before=()
    )
    for pid, reply in metrics.items():
        assert reply.headers["Content-Type"].startswith("text/plain"), reply.headers
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(reply.body)
            for s in family.samples
            if not s.labels
        }
        assert samples.get("tokend_listener_connected") == 1, (pid, samples)
        assert samples.get("tokend_listener_replays_total", 0) >= 1, (pid, samples)


async def test_expired_token_is_refused(spec, tokend, service) -> None:
    """exp one second ago, signed with tokend's key: refused (no exp leeway); the same
    claims with exp ahead are accepted."""
    await register(tokend, "alice")
    claims = unverified((await login(tokend, "alice"))["access_token"])[1]
    now = int(time.time())
    fresh = sign_with_tokend_key(tokend, {**claims, "jti": "fresh-1", "iat": now - 10})
    await service.every_worker(fresh, accepted(fresh), within=ROUTING_BOUND, before=())
    expired = sign_with_tokend_key(
        tokend, {**claims, "jti": "expired-1", "iat": now - 60, "exp": now - 1}
    )
    await service.every_worker(expired, is_refusal, within=ROUTING_BOUND, before=())


async def test_clock_rule_three_second_lifetime(spec, make_client, make_service) -> None:
    """Access tokens live 3 s: 4 s after login tokend and every worker say 401."""
    tokend = await make_client(TOKEND_ACCESS_TTL="3")
    service = make_service(tokend)
    await service.start()
    await register(tokend, "alice")
    tokens = await login(tokend, "alice")
    token = tokens["access_token"]
    claims = unverified(token)[1]
    assert claims["exp"] - claims["iat"] == 3
    await service.every_worker(token, accepted(token), within=2, before=())
    await asyncio.sleep(max(0.0, claims["iat"] + 4 - time.time()))  # the moment to check
    resp = await tokend.get("/auth/me", headers=bearer(token))
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["error"] == "invalid_token"
    await service.every_worker(token, is_refusal, within=ROUTING_BOUND, before=())


async def test_malformed_authorization_and_no_token(spec, tokend, service) -> None:
    def bare_challenge(reply: Reply) -> bool:
        return reply.status == 401 and reply.headers.get("WWW-Authenticate") == CHALLENGE

    await service.every_worker(None, bare_challenge, within=ROUTING_BOUND, before=())
    await register(tokend, "alice")
    token = (await login(tokend, "alice"))["access_token"]
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", f"Token {token}", "Bearer a,b"):
        reply = await service.get("/protected", authorization=value)
        assert reply.status == 400, (value, reply)
        assert reply.body["error"] == "invalid_request", (value, reply)


async def test_refresh_token_as_bearer_is_refused(spec, tokend, service) -> None:
    await register(tokend, "alice")
    tokens = await login(tokend, "alice")
    await service.every_worker(tokens["refresh_token"], is_refusal, within=ROUTING_BOUND, before=())


@pytest.mark.parametrize("kind", ["logout", "logout_all", "refresh_reuse"])
async def test_revocation_reaches_every_worker(spec, tokend, service, kind) -> None:
    await register(tokend, "alice")
    sessions = [await login(tokend, "alice") for _ in range(3 if kind == "logout_all" else 1)]
    tokens = [s["access_token"] for s in sessions]
    if kind == "refresh_reuse":
        status, body = await post(tokend, "/auth/refresh", sessions[0]["refresh_token"])
        assert status == 200, body
        tokens.append(body["access_token"])
    for token in tokens:
        await service.every_worker(token, accepted(token), within=ROUTING_BOUND, before=())

    since = time.perf_counter()
    if kind == "logout":
        assert await post(tokend, "/auth/logout", tokens[0]) == (204, "")
    elif kind == "logout_all":
        assert await post(tokend, "/auth/logout-all", tokens[1]) == (204, "")
    else:  # the rotated-out refresh token again, past the (zero) grace window
        status, body = await post(tokend, "/auth/refresh", sessions[0]["refresh_token"])
        assert status == 401, body
        assert body["error_description"].startswith("refresh token reuse detected"), body
    delays: list[float] = []
    for n, token in enumerate(tokens):
        firsts = await service.every_worker(
            token, revoked, since=since, within=PROPAGATION_BOUND, before=(200,)
        )
        delays += report(spec, f"{kind}, token {n + 1} of {len(tokens)}", since, firsts)
        assert (await tokend.get("/auth/me", headers=bearer(token))).status == 401
    print(f"[{spec.name}] {kind}: slowest worker {max(delays):.1f} ms")


async def test_revocations_while_stopped_are_refused_after_restart(spec, tokend, service) -> None:
    """200 sessions logged out while the service is down (SIGTERM); after the restart
    every worker refuses every one of them, and never accepts one."""
    revoked_sessions = await users_with_sessions(tokend, "gone", 200)
    kept = await users_with_sessions(tokend, "kept", 5)
    for start in range(0, len(revoked_sessions + kept), 25):
        replies = await asyncio.gather(
            *(
                service.get("/protected", s["access_token"])
                for s in (revoked_sessions + kept)[start : start + 25]
            )
        )
        assert {r.status for r in replies} == {200}, replies
    workers_before = set(service.workers)

    assert await service.stop() == 0  # SIGTERM: a clean exit, every worker gone
    for start in range(0, len(revoked_sessions), 25):
        answers = await asyncio.gather(
            *(
                post(tokend, "/auth/logout", s["access_token"])
                for s in revoked_sessions[start : start + 25]
            )
        )
        assert set(answers) == {(204, "")}, answers
    await service.start()
    print(
        f"\n[{spec.name}] stopped (workers {sorted(workers_before)}), 200 logouts, restarted"
        f" in {service.start_seconds:.2f}s (workers {sorted(service.workers)})"
    )

    async def refused(token: str) -> str | None:
        try:
            await service.every_worker(token, revoked, within=ROUTING_BOUND, before=())
        except AssertionError as exc:
            return str(exc).split("\n--- ")[0]
        return None

    failures: list[str] = []
    for start in range(0, len(revoked_sessions), 10):
        batch = revoked_sessions[start : start + 10]
        failures += [
            f
            for f in await asyncio.gather(*(refused(s["access_token"]) for s in batch))
            if f is not None
        ]
    print(f"[{spec.name}] revoked while down: 200, not refused at every worker: {len(failures)}")
    assert not failures, f"{len(failures)} of 200 not refused:\n" + "\n".join(failures[:5])
    for s in kept:
        token = s["access_token"]
        await service.every_worker(token, accepted(token), within=ROUTING_BOUND, before=())


class JwksProxy:
    """tokend's JWKS behind a counter: how many fetches, how many served ``kid``; ``fail``
    answers 502."""

    def __init__(self, tokend: Any) -> None:
        self.tokend = tokend
        self.hits = 0
        self.served_with: dict[str, int] = {}
        self.fail = False

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail:
            return web.Response(status=502)
        resp = await self.tokend.get("/.well-known/jwks.json")
        body = await resp.json()
        for key in body["keys"]:
            self.served_with[key["kid"]] = self.served_with.get(key["kid"], 0) + 1
        return web.json_response(body)


async def test_signing_key_rotation_is_followed(spec, tokend, make_service, aiohttp_server) -> None:
    """key.rotated makes every worker refetch the JWKS (no token with the new kid needed);
    then, with the JWKS unreachable, a token signed with the new key is accepted."""
    from workers.rotation import rotate_and_announce

    proxy = JwksProxy(tokend)
    app = web.Application()
    app.router.add_get("/jwks.json", proxy.jwks)
    server = await aiohttp_server(app)
    service = make_service(
        tokend, jwks_url=str(server.make_url("/jwks.json")), TOKEND_JWKS_MIN_REFETCH="1"
    )
    await service.start()
    await register(tokend, "alice")
    old = (await login(tokend, "alice"))["access_token"]
    old_kid = unverified(old)[0]["kid"]
    await service.every_worker(old, accepted(old), within=ROUTING_BOUND, before=())
    fetched_before = proxy.hits
    assert fetched_before >= 1

    rotated_at = time.time()
    generation = await rotate_and_announce(
        tokend.app[KEYSTORE],
        tokend.app[AUTH].sessions,
        alg=tokend.app[SETTINGS].signing_alg,
        now=rotated_at,
        publish_delay=3,
        reason="test",
    )
    assert generation is not None
    new_kid = next(k.kid for k in await tokend.app[KEYSTORE].load() if k.generation == generation)
    assert new_kid != old_kid
    # tokend itself reloads on the same event: ask the service once tokend publishes it
    deadline = time.monotonic() + 10
    while new_kid not in {
        k["kid"] for k in (await (await tokend.get("/.well-known/jwks.json")).json())["keys"]
    }:
        assert time.monotonic() < deadline, "tokend never published the new key"
        await asyncio.sleep(0.02)

    # Old-kid tokens only: nothing but key.rotated (or the 300 s cache lifetime) makes a
    # worker refetch. Each worker fetches once more; the min refetch interval is 1 s
    # (30 s if a service ignored TOKEND_JWKS_MIN_REFETCH: the bound allows for that).
    started = time.perf_counter()
    deadline = time.monotonic() + 40
    while proxy.served_with.get(new_kid, 0) < len(service.workers):
        assert time.monotonic() < deadline, (
            f"{spec.name}: {proxy.served_with.get(new_kid, 0)} of {len(service.workers)} "
            f"workers refetched the JWKS after key.rotated ({proxy.hits} fetches)\n" + service.log()
        )
        replies = await asyncio.gather(*(service.get("/protected", old) for _ in range(4)))
        assert all(accepted(old)(r) for r in replies), replies
        await asyncio.sleep(0.05)
    print(
        f"\n[{spec.name}] key.rotated → every worker refetched the JWKS in "
        f"{(time.perf_counter() - started) * 1000:.0f} ms ({proxy.hits - fetched_before} fetches)"
    )

    proxy.fail = True  # from now on the workers must have the new key already
    deadline = time.monotonic() + 10
    while tokend.app[KEYRING].signing_key(time.time()).kid != new_kid:
        assert time.monotonic() < deadline, "tokend never switched to the new key"
        await asyncio.sleep(0.05)
    new = (await login(tokend, "alice"))["access_token"]
    assert unverified(new)[0]["kid"] == new_kid
    await service.every_worker(new, accepted(new), within=ROUTING_BOUND, before=())
    await service.every_worker(old, accepted(old), within=ROUTING_BOUND, before=())


async def test_redis_restart_under_it(
    spec, make_client, make_service, private_redis, redis_prefix
) -> None:
    """Redis killed and started empty under tokend and the service. tokend fences the
    emptied Redis (all.revoked: every access token issued up to the fence is refused).
    Throughout, the service never accepts the session revoked before, and once it has
    failed closed (503: Redis behind), never again the session from before the fence;
    afterwards it accepts a new session and refuses it after its logout."""
    tokend = await make_client(TOKEND_REDIS_URL=private_redis.url)
    service = make_service(tokend, redis_url=private_redis.url)
    await service.start()
    await register(tokend, "alice")
    before_revoked = (await login(tokend, "alice"))["access_token"]
    before_kept = (await login(tokend, "alice"))["access_token"]
    for token in (before_revoked, before_kept):
        await service.every_worker(token, accepted(token), within=ROUTING_BOUND, before=())
    since = time.perf_counter()
    assert await post(tokend, "/auth/logout", before_revoked) == (204, "")
    await service.every_worker(
        before_revoked, revoked, since=since, within=PROPAGATION_BOUND, before=(200,)
    )

    # both sessions from before, asked about all along from the kill on
    observed: list[tuple[str, Reply]] = []
    done = asyncio.Event()

    async def ask_all_along() -> None:
        while not done.is_set():
            names = ("revoked", "kept") * 2
            tokens = {"revoked": before_revoked, "kept": before_kept}
            replies = await asyncio.gather(*(service.get("/protected", tokens[n]) for n in names))
            observed.extend(zip(names, replies, strict=True))

    private_redis.kill()
    asking = asyncio.create_task(ask_all_along())
    try:
        await asyncio.to_thread(private_redis.start)  # same port, no data
        restarted = time.perf_counter()
        fenced_at = await wait_for_fences(private_redis.url, redis_prefix)
        print(
            f"\n[{spec.name}] Redis restarted empty; tokend fenced every partition in "
            f"{time.perf_counter() - restarted:.2f}s"
        )
        # A token from the fence's own second is denied by it (iat has whole seconds,
        # service/fence.py): log in once the second has turned.
        await asyncio.sleep(max(0.0, math.floor(fenced_at) + 1 - time.time()))
        after = (await login(tokend, "alice"))["access_token"]
        assert (await tokend.get("/auth/me", headers=bearer(after))).status == 200
        # caught up once every worker accepts a token issued after the fence (until then
        # it may fail closed with 503)
        firsts = await service.every_worker(after, accepted(after), within=30, before=(503,))
        caught_up = max(r.at for r in firsts.values()) - restarted
        print(f"[{spec.name}] every worker following again {caught_up:.2f}s after the restart")
        resp = await tokend.get("/auth/me", headers=bearer(before_kept))
        assert resp.status == 401, await resp.text()  # tokend's fence refuses it
        await service.every_worker(before_revoked, revoked, within=ROUTING_BOUND, before=())
        await service.every_worker(before_kept, is_refusal, within=ROUTING_BOUND, before=())
    finally:
        done.set()
        await asking

    phases = timeline([r for name, r in observed if name == "kept"])
    print(f"[{spec.name}] the session from before the fence, from the kill on: {phases}")
    counts = Counter((name, r.status) for name, r in observed)
    print(f"[{spec.name}] answers from the kill on: {dict(sorted(counts.items()))}")
    wrong = [r for name, r in observed if name == "revoked" and r.status == 200]
    assert not wrong, f"the session revoked before the restart accepted: {wrong[:3]}"
    closed: dict[int, Reply] = {}  # each worker's first 503
    for name, reply in sorted(observed, key=lambda item: item[1].at):
        assert reply.status in (200, 401, 503), reply
        if name != "kept":
            continue
        if reply.status == 503:
            closed.setdefault(reply.pid, reply)
        elif reply.status == 200 and reply.pid in closed:
            raise AssertionError(
                f"{spec.name}: worker {reply.pid} accepted a token from before tokend's fence "
                f"{(reply.at - closed[reply.pid].at) * 1000:.1f} ms after failing closed "
                f"(503 {closed[reply.pid].body}): it took the Redis as caught up before "
                f"applying the fence's all.revoked; answers: {phases}\n{service.log()}"
            )

    since = time.perf_counter()
    assert await post(tokend, "/auth/logout", after) == (204, "")
    firsts = await service.every_worker(
        after, revoked, since=since, within=PROPAGATION_BOUND, before=(200,)
    )
    report(spec, "logout after the Redis restart", since, firsts)
