"""Property (security review, defect 6): whatever JSON-ish body and whatever token-shaped
string reaches whichever route of the app, the answer is never a 5xx, a 4xx always has a
JSON body, and nothing is logged with a traceback. The routes come from the app's own
router, so a new route is fuzzed without editing this file. Derandomized: the same
examples on every run."""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.support import register_and_login

pytestmark = pytest.mark.security

CLIENTS = json.dumps({"cli": {}, "rs": {"secret": "resource-server-secret"}})
PROVIDERS = json.dumps(
    {"demo": {"issuer": "http://127.0.0.1:9", "client_id": "tokend", "client_secret": "s"}}
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- generated JSON ---------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["username", "password", "refresh_token", "current_password", "new_password"]
FIELDS += ["login_code", "code_verifier", "link_code", "return_to"]
# Shallow, or deep enough for a RecursionError in an unbounded parser.
deep = st.integers(1, 40) | st.integers(1000, 3000)
# Each kind of hostile literal equally likely, whatever the number of spellings.
raw_literals = st.one_of(
    (st.integers(65, 100) | st.integers(4301, 6000)).map(lambda n: "1" * n),
    (st.integers(65, 100) | st.integers(4301, 6000)).map(lambda n: "-" + "9" * n),
    st.sampled_from(["NaN", "-Infinity", "Infinity", "1e999", "-1e999", "0." + "1" * 5000]),
    st.sampled_from(['"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\uZZZZ"', '"é\u2028"']),
    deep.map(lambda n: "[" * n + "]" * n),
    deep.map(lambda n: '{"a":' * n + "1" + "}" * n),
    deep.map(lambda n: "{" * n),
)


@st.composite
def json_bodies(draw: Any, tokens: Any) -> str:
    """Body text: a hostile literal on its own, an object of the fields the routes read
    (values: tokens, hostile literals, generated JSON), or a generated value."""
    kind = draw(st.sampled_from(["literal", "fields", "fields", "value"]))
    if kind == "literal":
        return draw(raw_literals)
    if kind == "value":
        return json.dumps(draw(json_values))
    members = []
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        value = draw(st.one_of(tokens.map(json.dumps), raw_literals, json_values.map(json.dumps)))
        members.append(f"{json.dumps(name)}: {value}")
    return "{" + ", ".join(members) + "}"


# -- generated tokens -------------------------------------------------------------------

# Deep within MAX_TOKEN_LENGTH as base64 (a longer token is refused before any parse).
deep_head = st.integers(1, 40) | st.integers(1000, 1500)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SEGMENT = st.text(B64URL, max_size=40)
headers_json = st.one_of(
    st.fixed_dictionaries(
        {"typ": st.sampled_from(["at+jwt", "rt+jwt", "JWT"]), "alg": st.text(max_size=8)},
        optional={"kid": json_values, "crit": json_values, "jwk": json_values},
    ).map(lambda h: json.dumps(h).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    raw_literals.map(lambda text: ('{"typ": "at+jwt", "kid": ' + text + "}").encode()),
    deep_head.map(lambda n: b"[" * n),
    deep_head.map(lambda n: b'{"a":' * (n // 5)),
    st.binary(max_size=40),
)


@st.composite
def token_strings(draw: Any, real_heads: list[str]) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # random segments, any count
        return ".".join(draw(st.lists(SEGMENT, min_size=1, max_size=5)))
    if kind == 1:  # a generated header
        head = b64(draw(headers_json))
    elif kind == 2:  # tokend's own header (a known kid) on a forged body
        head = draw(st.sampled_from(real_heads))
    elif kind == 3:
        return draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60))
    else:
        head = b64(draw(deep_head.map(lambda n: b"[" * n)))
    payload = b64(json.dumps(draw(json_values)).encode())
    sig = draw(SEGMENT) + draw(st.sampled_from(["", "=", "=="]))
    return f"{head}.{payload}.{sig}"


# -- the property -----------------------------------------------------------------------


@contextmanager
def production_recursion_limit() -> Iterator[None]:
    """Hypothesis raises the recursion limit while a test runs, so a server called from
    the test would survive nesting that breaks it in production: give it the usual
    1,000 frames above the current depth instead, for the one request."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


@pytest.fixture
async def target(make_client) -> tuple[Any, list[tuple[str, str]], list[str]]:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS, TOKEND_OIDC_PROVIDERS=PROVIDERS)
    tokens = await register_and_login(client)
    routes = sorted(
        {
            (route.method, route.resource.canonical)
            for route in client.app.router.routes()
            if route.resource is not None and route.method != "*"
        }
    )
    heads = [tokens["access_token"].split(".")[0], tokens["refresh_token"].split(".")[0]]
    return client, routes, heads


def _path(template: str, draw: Any) -> str:
    # An unknown provider: the fuzz never makes tokend call out to a provider.
    path = template.replace("{provider}", "nope")
    return re.sub(r"\{[^}]+\}", lambda _: quote(draw(st.text(max_size=12)), safe=""), path)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@seed(20261201)
@given(data=st.data())
async def test_no_input_gets_a_5xx_or_a_traceback(target, caplog, data: Any) -> None:
    client, routes, heads = target
    caplog.set_level(logging.INFO)
    tokens = token_strings(heads)
    # Half of the examples go to a route that reads a body.
    posts = [route for route in routes if route[0] == "POST"]
    method, template = data.draw(st.sampled_from(posts) | st.sampled_from(routes), label="route")
    path = _path(template, data.draw)
    headers: dict[str, str] = {}
    token = data.draw(tokens, label="token")
    if data.draw(st.integers(0, 3), label="bearer"):
        headers["Authorization"] = f"Bearer {token}"
    body: bytes | None = None
    if path.startswith("/oauth/") and data.draw(st.booleans(), label="form"):
        fields = {
            "grant_type": data.draw(st.sampled_from(["refresh_token", "password", "x"])),
            "refresh_token": token,
            "token": token,
            "token_type_hint": data.draw(st.sampled_from(["refresh_token", "access_token"])),
            "client_id": data.draw(st.sampled_from(["cli", "rs", "nobody"])),
            "username": data.draw(st.text(max_size=10)),
            "password": data.draw(st.text(max_size=10)),
        }
        body = urlencode(fields, encoding="utf-8", errors="surrogatepass").encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif method in ("POST", "DELETE") and data.draw(st.integers(0, 5), label="json"):
        text = data.draw(json_bodies(tokens), label="body")
        body = text.encode("utf-8", "surrogatepass")
        headers["Content-Type"] = "application/json"
    start = len(caplog.records)
    with production_recursion_limit():
        resp = await client.request(method, path, headers=headers, data=body)
        raw = await resp.read()
    assert resp.status < 500, (method, path, resp.status, raw[:300])
    if 400 <= resp.status < 500 and method != "HEAD":
        assert resp.content_type == "application/json", (method, path, raw[:300])
        answer = json.loads(raw)
        assert isinstance(answer.get("error"), str), answer
    logged = [r for r in caplog.records[start:] if r.exc_info or r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]
