"""Hostile and malformed requests: always the JSON error, never a 500, never an echo."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest

SECRET = "eyJzZWNyZXQiOiJ0b2tlbiJ9"  # stands for a token that must never be echoed


async def _json_error(resp: Any, status: int, code: str = "invalid_request") -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == code
    assert body["error_description"]
    return body


async def _still_healthy(client: Any) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"username": "alice",}',
        b"nul",
        b"",
        b'{"a": 1} trailing',
        b"[" * 10_000 + b"]" * 10_000,
    ],
)
async def test_malformed_json_is_400(make_client: Any, raw: bytes) -> None:
    client = await make_client()
    for path in ("/auth/login", "/auth/register"):
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        body = await _json_error(resp, 400)
        assert "JSON" in body["error_description"]
    await _still_healthy(client)


@pytest.mark.parametrize("raw", [b"[]", b'"alice"', b"42", b"null"])
async def test_json_that_is_not_an_object_is_400(make_client: Any, raw: bytes) -> None:
    client = await make_client()
    resp = await client.post("/auth/login", data=raw, headers={"Content-Type": "application/json"})
    body = await _json_error(resp, 400)
    assert "object" in body["error_description"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_wrong_content_type_is_415(make_client: Any, content_type: str) -> None:
    client = await make_client()
    resp = await client.post(
        "/auth/login",
        data=b'{"username": "alice", "password": "correct horse battery"}',
        headers={"Content-Type": content_type},
    )
    body = await _json_error(resp, 415)
    assert "application/json" in body["error_description"]


async def test_missing_content_type_is_415(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post("/auth/register", data=b"")
    await _json_error(resp, 415)


async def test_two_mib_body_is_413(make_client: Any) -> None:
    client = await make_client()
    payload = io.BytesIO(
        json.dumps({"username": "alice", "password": "x" * (2 * 1024 * 1024)}).encode()
    )
    resp = await client.post(
        "/auth/register", data=payload, headers={"Content-Type": "application/json"}
    )
    await _json_error(resp, 413)
    await _still_healthy(client)


async def test_two_mib_chunked_body_is_413(make_client: Any) -> None:
    client = await make_client()

    async def chunks() -> Any:
        yield b'{"username": "alice", "password": "'
        for _ in range(32):
            yield b"x" * 65536
        yield b'"}'

    resp = await client.post(
        "/auth/register", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await _json_error(resp, 413)
    await _still_healthy(client)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"username": "al\x00ice", "password": "correct horse battery"}',
        b'{"username": "\xff\xfe", "password": "correct horse battery"}',
        b"\xff\xfe\x00\x00",
        b'{"username": "alice", "password": "correct horse \xc3"}',
    ],
)
async def test_nul_and_non_utf8_bodies_are_400(make_client: Any, raw: bytes) -> None:
    client = await make_client()
    for path in ("/auth/login", "/auth/register"):
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        await _json_error(resp, 400)
    await _still_healthy(client)


async def test_escaped_nul_in_a_username_is_a_validation_error(make_client: Any) -> None:
    client = await make_client()
    resp = await client.post(
        "/auth/register", json={"username": "al\u0000ice", "password": "correct horse battery"}
    )
    body = await _json_error(resp, 400)
    assert "username" in body["error_description"]


async def test_ten_kb_authorization_header_is_431_without_echo(make_client: Any) -> None:
    client = await make_client()
    token = (SECRET * 500)[:10_240]
    resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    body = await _json_error(resp, 431)
    text = json.dumps(body) + "".join(f"{k}: {v}" for k, v in resp.headers.items())
    assert SECRET not in text and SECRET[:12] not in text
    await _still_healthy(client)


async def test_ten_kb_other_header_is_431(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/healthz", headers={"X-Junk": SECRET * 500})
    body = await _json_error(resp, 431)
    assert SECRET[:12] not in json.dumps(body)


async def _raw_request(host: str, port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


@pytest.mark.security
@pytest.mark.parametrize("header", ["Authorization", "X-Junk"])
async def test_header_beyond_the_parser_limit_is_json_without_echo(
    make_client: Any, header: str
) -> None:
    client = await make_client()
    value = "Bearer " + (SECRET * 5000)[:100_000]
    request = (f"GET /auth/me HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}: {value}\r\n\r\n").encode()
    answer = await _raw_request(client.server.host, client.server.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"431", answer[:200]
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)
    assert error["error"] == "invalid_request" and error["error_description"]
    assert SECRET[:12].encode() not in answer
    assert b"Bearer" not in body
    await _still_healthy(client)


@pytest.mark.security
async def test_too_many_headers_is_431_json(make_client: Any) -> None:
    client = await make_client()
    junk = "".join(f"X-Junk-{i}: {SECRET}\r\n" for i in range(300))
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{junk}\r\n".encode()
    answer = await _raw_request(client.server.host, client.server.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"431", answer[:200]
    assert json.loads(body)["error"] == "invalid_request"
    assert SECRET.encode() not in answer
    await _still_healthy(client)


@pytest.mark.security
async def test_garbage_request_line_is_json(make_client: Any) -> None:
    client = await make_client()
    answer = await _raw_request(
        client.server.host, client.server.port, f"\x01\x02 {SECRET} HTTP/1.1\r\n\r\n".encode()
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert json.loads(body)["error"] == "invalid_request"
    assert SECRET.encode() not in answer
    await _still_healthy(client)


async def test_unknown_route_is_404_json(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/no/such/thing")
    await _json_error(resp, 404, "not_found")


async def test_wrong_method_is_405_json(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/auth/login")
    await _json_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    resp = await client.delete("/auth/me")
    await _json_error(resp, 405, "method_not_allowed")
    await _still_healthy(client)


async def test_a_body_arriving_in_pieces_is_read_whole(make_client: Any) -> None:
    client = await make_client()

    async def pieces() -> Any:
        yield b'{"username": "alice",'
        await asyncio.sleep(0.02)
        yield b" " * 30_000
        await asyncio.sleep(0.02)
        yield b'"password": "correct horse battery"}'

    resp = await client.post(
        "/auth/register", data=pieces(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["username"] == "alice"
