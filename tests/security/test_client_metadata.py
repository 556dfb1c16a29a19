"""What a client says about itself (User-Agent, X-Forwarded-For) is recorded on the session
and keys the rate limits: bytes that are not UTF-8, a huge user agent or a lone surrogate
in JSON get a normal answer, never a 500, and the session stays a compact Redis hash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.http.appkeys import AUTH
from tests.support import (
    PASSWORD,
    bearer,
    http_request,
    parse_answer,
    raw_exchange,
    register,
    unverified,
)

pytestmark = pytest.mark.security

LISTPACK_VALUE_BYTES = 64  # Redis's default hash-max-listpack-value


async def _login_raw(client: Any, username: str, headers: list[tuple[bytes, bytes]]) -> Any:
    body = json.dumps({"username": username, "password": PASSWORD}).encode()
    answer = await raw_exchange(
        client.server.port,
        http_request(
            "POST",
            "/auth/login",
            [(b"Content-Type", b"application/json"), *headers],
            body,
        ),
    )
    return parse_answer(answer)


async def _session_hash(client: Any, redis: Any, uid: str, sid: str) -> tuple[dict[str, str], str]:
    name = client.server.app[AUTH].sessions.keys.of(uid).session(sid)
    return await redis.hgetall(name), await redis.object("encoding", name)


@pytest.mark.parametrize(
    "header",
    [
        (b"User-Agent", b"agent \xff\xfe/1.0 \xc3"),
        (b"X-Forwarded-For", b"\xff\xfe10.0.0.1"),
    ],
)
async def test_bytes_that_are_not_utf8(make_client, header) -> None:
    client = await make_client(TOKEND_TRUST_FORWARDED_FOR="true")
    await register(client, "ann")
    status, _, body = await _login_raw(client, "ann", [header])
    assert status == 200, body
    tokens = json.loads(body)
    # the session list shows what was recorded, as valid JSON
    resp = await client.get("/auth/sessions", headers=bearer(tokens["access_token"]))
    assert resp.status == 200
    (session,) = (await resp.json())["sessions"]
    if header[0] == b"User-Agent":
        assert "\ufffd" in session["user_agent"]
    else:  # not an IP address: refused as the client IP, the peer is recorded
        assert session["ip"] == "127.0.0.1"
    # a wrong password from the same place is an ordinary 401
    body = json.dumps({"username": "ann", "password": "wrong"}).encode()
    answer = await raw_exchange(
        client.server.port,
        http_request("POST", "/auth/login", [(b"Content-Type", b"application/json"), header], body),
    )
    assert parse_answer(answer)[0] == 401


async def test_a_long_user_agent_keeps_both_ends_and_the_hash_compact(
    make_client, redis_client
) -> None:
    client = await make_client()
    agent = "Mozilla/5.0 " + "é" * 300 + " Firefox/133.0"
    await register(client, "bob")
    resp = await client.post(
        "/auth/login",
        json={"username": "bob", "password": PASSWORD},
        headers={"User-Agent": agent},
    )
    tokens = await resp.json()
    resp = await client.get("/auth/sessions", headers=bearer(tokens["access_token"]))
    (session,) = (await resp.json())["sessions"]
    recorded = session["user_agent"]
    assert recorded.startswith("Mozilla/5.0 ") and recorded.endswith(" Firefox/133.0"), recorded
    assert "…" in recorded and len(recorded.encode()) <= LISTPACK_VALUE_BYTES
    sid, uid = session["id"], unverified(tokens["access_token"])[1]["sub"]
    row, encoding = await _session_hash(client, redis_client, uid, sid)
    assert encoding == "listpack", row
    assert all(len(value.encode()) <= LISTPACK_VALUE_BYTES for value in row.values())
    # and after a rotation, with the same agent
    resp = await client.post(
        "/auth/refresh", headers={**bearer(tokens["refresh_token"]), "User-Agent": agent}
    )
    assert resp.status == 200
    row, encoding = await _session_hash(client, redis_client, uid, sid)
    assert encoding == "listpack", row


@pytest.mark.parametrize("field", ["username", "password"])
async def test_a_lone_surrogate_in_json(client, field) -> None:
    await register(client, "carol")
    fields = {"username": "carol", "password": PASSWORD, field: "x\ud800y"}
    body = json.dumps(fields)  # ASCII with a \ud800 escape: valid JSON, not valid Unicode
    for path in ("/auth/login", "/auth/register"):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        answer = await resp.json()
        assert resp.status == 400, (path, answer)
        assert answer["error"] == "invalid_request" and "Unicode" in answer["error_description"]
    # the account is untouched: the right password still logs in
    resp = await client.post("/auth/login", json={"username": "carol", "password": PASSWORD})
    assert resp.status == 200
