"""DPoP at the resource server: a bound token with a fresh proof vs a bearer token.

    .venv/bin/python -m bench dpop [--quick] [--out FILE]

In one process, per integration (the Guard alone, aiohttp's middleware, the ASGI
middleware under FastAPI, Django's middleware, Flask's ``before_request``), each request
goes through the integration's own request path in process (no sockets, no HTTP
parsing: what is measured is the subscriber's work, not the server's):

- bearer: ``Authorization: Bearer <token>``, the same unbound token every time (its
  verification cached after the first request, as in a real service);
- DPoP: ``Authorization: DPoP <token>`` of a token bound to an ES256 key (``cnf.jkt``)
  with a fresh proof each request (made beforehand, outside the timing; a new ``jti``
  each, ``ath`` of the token, ``htu`` of the request), the token's verification cached
  the same way: the difference is the proof check (``dpop.verify_proof``: one ES256
  signature verification, the thumbprint, the checks of RFC 9449 section 4.3) and the
  replay cache.

Tokens are signed with an EdDSA key of the bench's own (tokend's default algorithm),
whose JWKS a local HTTP server hands the verifier once; no Redis (no deny list) on either
side. Rounds alternate the sides (ABBA); the figures are the medians of the rounds.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.harness import median
from bench.report import Section, progress
from tokend_client import Subscriber, SubscriberSettings
from tokend_client.dpop import DPoPKey

ISSUER = "http://127.0.0.1:8080"
ORIGIN = "http://bench.local"
PATH = "/protected"
KID = "bench-1"

# an integration: (prepare: headers → a request object, built outside the timing;
# call: that request → status)
Request = tuple[Callable[[dict[str, str]], Any], Callable[[Any], int]]


# --- the tokens and the key set ----------------------------------------------------------


def _tokens(key: DPoPKey) -> tuple[str, str, dict[str, Any]]:
    """(bearer token, bound token, the JWKS)."""
    signing = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(signing.public_key()))
    jwks = {"keys": [{**jwk, "kid": KID, "alg": "EdDSA", "use": "sig"}]}
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "tokend",
        "sub": "bench-user",
        "sid": "bench-session",
        "iat": now,
        "exp": now + 3600,
        "scope": "orders:read",
    }
    header = {"typ": "at+jwt", "kid": KID}
    bearer = jwt.encode({**claims, "jti": "b"}, signing, algorithm="EdDSA", headers=header)
    bound_claims = {**claims, "jti": "d", "cnf": {"jkt": key.jkt}}
    bound = jwt.encode(bound_claims, signing, algorithm="EdDSA", headers=header)
    return bearer, bound, jwks


@contextmanager
def _jwks_server(jwks: dict[str, Any]) -> Iterator[str]:
    body = json.dumps(jwks).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def _settings(jwks_url: str) -> SubscriberSettings:
    return SubscriberSettings(issuer=ISSUER, audience="tokend", jwks_url=jwks_url, redis=None)


# --- one request path per integration ----------------------------------------------------


def _guard(settings: SubscriberSettings, loop: asyncio.AbstractEventLoop) -> Request:
    from tokend_client._guard import DPoPRequest as Target

    guard = Subscriber(settings, threaded=True).guard

    def call(headers: dict[str, str]) -> int:
        proofs = [headers["DPoP"]] if "DPoP" in headers else []
        outcome = guard.check_sync(
            [headers["Authorization"]], False, lambda: Target("GET", ORIGIN, PATH, proofs)
        )
        return 200 if isinstance(outcome, dict) else 401

    return (lambda headers: headers), call


def _aiohttp(settings: SubscriberSettings, loop: asyncio.AbstractEventLoop) -> Request:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from tokend_client import auth_middleware

    middleware = auth_middleware(settings.verifier())

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="{}")

    def prepare(headers: dict[str, str]) -> web.Request:
        return make_mocked_request("GET", PATH, headers={**headers, "Host": "bench.local"})

    def call(request: web.Request) -> int:
        response = loop.run_until_complete(middleware(request, handler))
        return response.status

    return prepare, call


def _asgi(settings: SubscriberSettings, loop: asyncio.AbstractEventLoop) -> Request:
    from fastapi import FastAPI

    from tokend_client.fastapi import install

    app = FastAPI()
    install(app, Subscriber(settings, threaded=False))

    @app.get(PATH)
    async def protected() -> dict[str, str]:
        return {}

    status = [0]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    def prepare(headers: dict[str, str]) -> dict[str, Any]:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench.local"), *raw],
            "server": ("bench.local", 80),
        }

    def call(scope: dict[str, Any]) -> int:
        loop.run_until_complete(app(scope, receive, send))
        return status[0]

    return prepare, call


def _django(settings: SubscriberSettings, loop: asyncio.AbstractEventLoop) -> Request:
    import django
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="bench",
            INSTALLED_APPS=[],
            DATABASES={},
            ROOT_URLCONF=__name__,
            TOKEND={"JWKS_URL": settings.jwks_url},
        )
        django.setup()
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory

    import tokend_client.django as tokend_django

    # this process's Subscriber without Redis (settings.TOKEND always names one)
    tokend_django._state = tokend_django._State(
        tokend_django._read_config(),
        Subscriber(settings, threaded=True),
        django_settings.TOKEND,
    )

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"{}", content_type="application/json")

    middleware = tokend_django.TokendMiddleware(view)
    factory = RequestFactory()

    def prepare(headers: dict[str, str]) -> HttpRequest:
        return factory.get(PATH, headers=headers, SERVER_NAME="bench.local")

    def call(request: HttpRequest) -> int:
        status: int = middleware(request).status_code
        return status

    return prepare, call


def _flask(settings: SubscriberSettings, loop: asyncio.AbstractEventLoop) -> Request:
    from flask import Flask
    from werkzeug.test import EnvironBuilder

    from tokend_client.flask import Tokend

    app = Flask("bench")
    Tokend(app, subscriber=Subscriber(settings, threaded=True))

    def prepare(headers: dict[str, str]) -> dict[str, Any]:
        return EnvironBuilder(path=PATH, headers=headers, base_url=ORIGIN).get_environ()

    def call(environ: dict[str, Any]) -> int:
        with app.request_context(environ):
            response = app.preprocess_request()
        return 200 if response is None else response.status_code

    return prepare, call


INTEGRATIONS: dict[str, Callable[[SubscriberSettings, asyncio.AbstractEventLoop], Request]] = {
    "Guard.check_sync alone": _guard,
    "aiohttp middleware": _aiohttp,
    "ASGI middleware (FastAPI)": _asgi,
    "Django middleware": _django,
    "Flask before_request": _flask,
}


# --- the measurement ---------------------------------------------------------------------


def _run(integration: Request, headers: list[dict[str, str]]) -> float:
    """Seconds per request over ``headers`` (every answer must be 200); the request
    objects are built before the clock starts."""
    prepare, call = integration
    requests = [prepare(h) for h in headers]
    started = time.perf_counter()
    for request in requests:
        if call(request) != 200:
            raise RuntimeError(f"refused: {headers[0]['Authorization'][:20]}...")
    return (time.perf_counter() - started) / len(requests)


def dpop_section(quick: bool) -> Section:
    n, rounds = (1000, 2) if quick else (5000, 4)
    key = DPoPKey.generate("ES256")
    bearer, bound, jwks = _tokens(key)
    rows: list[list[str]] = []
    loop = asyncio.new_event_loop()
    try:
        with _jwks_server(jwks) as jwks_url:
            settings = _settings(jwks_url)
            for name, make in INTEGRATIONS.items():
                call = make(settings, loop)
                plain = {"Authorization": f"Bearer {bearer}"}
                _run(call, [plain] * 50)  # warm-up: the JWKS fetched, the token cached
                times: dict[str, list[float]] = {"bearer": [], "dpop": []}
                for i in range(rounds + 1):  # round 0: unmeasured warm-up of both sides
                    proofs = [
                        {
                            "Authorization": f"DPoP {bound}",
                            "DPoP": key.proof("GET", ORIGIN + PATH, access_token=bound),
                        }
                        for _ in range(n)
                    ]
                    sides = [("bearer", [plain] * n), ("dpop", proofs)]
                    for side, headers in sides if i % 2 else reversed(sides):
                        t = _run(call, headers)
                        if i:
                            times[side].append(t)
                b, d = median(times["bearer"]) * 1e6, median(times["dpop"]) * 1e6
                progress(f"[dpop] {name}: bearer {b:.1f} µs, DPoP {d:.1f} µs, x{d / b:.2f}")
                rows.append(
                    [
                        name,
                        f"{b:.1f}",
                        f"{1e6 / b:,.0f}",
                        f"{d:.1f}",
                        f"{1e6 / d:,.0f}",
                        f"+{d - b:.1f}",
                        f"{d / b:.2f}",
                    ]
                )
    finally:
        loop.close()
    s = Section(
        f"DPoP at the resource server: bound token + fresh proof vs bearer token "
        f"({rounds} rounds x {n:,} requests per side){' (--quick)' if quick else ''}"
    )
    s.add(
        "In process, per integration, through its own request path (no sockets; the request "
        "objects built before the clock starts): the same "
        "unbound token as `Bearer` every request vs a token bound to an ES256 key as `DPoP` "
        "with a fresh proof every request (proofs made beforehand, not timed); both tokens' "
        "verification cached after the first request, no deny list. The difference is the "
        "proof check (one ES256 verification, the RFC 7638 thumbprint, htm/htu/iat/ath) and "
        "the replay cache. Medians of the rounds, sides alternated (ABBA). One core.",
        "",
    )
    s.table(
        [
            "integration",
            "bearer µs/req",
            "bearer req/s",
            "DPoP µs/req",
            "DPoP req/s",
            "DPoP cost µs",
            "DPoP / bearer",
        ],
        rows,
    )
    return s


def main() -> None:  # python -m bench.dpop
    print(dpop_section(quick=True).markdown())


if __name__ == "__main__":
    main()

urlpatterns: list[Any] = []  # Django's ROOT_URLCONF here (the middleware answers first)
