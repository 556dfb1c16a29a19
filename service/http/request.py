"""Reading requests safely: bearer credentials (RFC 6750), JSON and form bodies, client info."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from ..auth import ClientInfo
from ..errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType

# RFC 6750 section 2.1 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_BODY = 64 * 1024


def bearer_token(request: web.Request, *, required: bool = True) -> str | None:
    """The one bearer token of the request; 400 when malformed or ambiguous.

    No credentials at all → Unauthorized (401 without error code) when required.
    """
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if "access_token" in request.query:
        raise BadRequest("tokens in the URL are not accepted; use the Authorization header")
    if not values:
        if required:
            raise Unauthorized()
        return None
    scheme, sep, credentials = values[0].partition(" ")
    if scheme.lower() != "bearer":
        raise BadRequest("Authorization must use the Bearer scheme")
    if not sep or not credentials:
        raise BadRequest("Bearer scheme without a token")
    if not _B64TOKEN.fullmatch(credentials):
        raise BadRequest("Authorization must be 'Bearer <one token>'")
    return credentials


def _check_size(request: web.Request) -> None:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge()


async def _read_text(request: web.Request) -> str:
    _check_size(request)
    # read(n) returns what has arrived so far, not n bytes: collect until the end.
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > MAX_BODY:
                raise PayloadTooLarge()
            chunks.append(chunk)
    except (web.HTTPRequestEntityTooLarge, ValueError) as exc:
        raise PayloadTooLarge() from exc
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object body; 415 for another content type, 400 when malformed."""
    if request.content_type != "application/json":
        if optional and not request.body_exists:
            return {}
        raise UnsupportedMediaType("expected Content-Type: application/json")
    text = await _read_text(request)
    if optional and not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


async def form_body(request: web.Request) -> dict[str, str]:
    """The form body (application/x-www-form-urlencoded); 415 otherwise.

    RFC 6749 section 3.2: a parameter must not appear more than once.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("expected Content-Type: application/x-www-form-urlencoded")
    text = await _read_text(request)
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise BadRequest("malformed form body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise BadRequest(f"parameter {key} given more than once")
        form[key] = value
    return form


def client_info(
    request: web.Request, *, trust_forwarded_for: bool, client_id: str = ""
) -> ClientInfo:
    """The caller's IP and user agent as recorded on sessions and used by rate limits."""
    ip = request.remote or ""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            ip = forwarded.split(",")[0].strip()
    return ClientInfo(
        ip=ip[:64], user_agent=request.headers.get(hdrs.USER_AGENT, "")[:256], client_id=client_id
    )
