"""Reading requests safely: bearer credentials (RFC 6750), JSON and form bodies, client info."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from .. import boundedjson
from ..auth import ClientInfo
from ..errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType

if TYPE_CHECKING:
    from ..settings import Settings

# RFC 6750 section 2.1 b64token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_BODY = 64 * 1024
_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _authorization(request: web.Request, *, required: bool) -> str | None:
    """The one Authorization header's value: 400 for two of them or a token in the URL;
    none at all → Unauthorized (401 without error code) when required, else None."""
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) > 1:
        raise BadRequest("more than one Authorization header")
    if "access_token" in request.query:
        raise BadRequest("tokens in the URL are not accepted; use the Authorization header")
    if not values:
        if required:
            raise Unauthorized()
        return None
    return values[0]


def bearer_token(request: web.Request, *, required: bool = True) -> str | None:
    """The one bearer token of the request; 400 when malformed or ambiguous.

    No credentials at all → Unauthorized (401 without error code) when required.
    """
    value = _authorization(request, required=required)
    if value is None:
        return None
    scheme, sep, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        raise BadRequest("Authorization must use the Bearer scheme")
    if not sep or not credentials:
        raise BadRequest("Bearer scheme without a token")
    if not _B64TOKEN.fullmatch(credentials):
        raise BadRequest("Authorization must be 'Bearer <one token>'")
    return credentials


def access_credentials(request: web.Request) -> tuple[str, str]:
    """A protected resource's credentials: ("Bearer" | "DPoP", the access token) from the
    one Authorization header (RFC 6750 section 2.1, RFC 9449 section 7.1); 400 when
    malformed or ambiguous, 401 without error code when there is none."""
    value = _authorization(request, required=True)
    assert value is not None
    scheme, sep, credentials = value.partition(" ")
    if scheme.lower() not in ("bearer", "dpop"):
        raise BadRequest("Authorization must use the Bearer or the DPoP scheme")
    if not sep or not credentials:
        raise BadRequest(f"{scheme} scheme without a token")
    if not _B64TOKEN.fullmatch(credentials):
        raise BadRequest("Authorization must be '<Bearer or DPoP> <one token>'")
    return ("DPoP" if scheme.lower() == "dpop" else "Bearer"), credentials


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
        value = boundedjson.loads(text)
    except boundedjson.JSONError as exc:
        raise BadRequest(
            f"body is not valid JSON ({exc})" if str(exc) else "body is not valid JSON"
        ) from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    if "\\u" in text and not _is_unicode(value):
        raise BadRequest("body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode")
    return value


def _is_unicode(value: Any) -> bool:
    """Whether every string in a parsed JSON value is valid Unicode: JSON escapes can
    spell lone surrogates, which no store or hash accepts."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_unicode(k) and _is_unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_unicode(item) for item in value)
    return True


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


def client_info(request: web.Request, settings: Settings, *, client_id: str = "") -> ClientInfo:
    """The caller's IP and user agent as recorded on sessions and used by rate limits."""
    return ClientInfo(
        ip=_fit(_text(client_ip(request, settings)), FIELD_BYTES),
        user_agent=shorten(_text(request.headers.get(hdrs.USER_AGENT, "")), FIELD_BYTES),
        client_id=client_id,
    )


def client_ip(request: web.Request, settings: Settings) -> str:
    """The client's address: the direct peer, or what trusted proxies say it was.

    A proxy appends the address it saw to X-Forwarded-For, so only the right end of the
    list is trustworthy; whatever lies left of it the client wrote itself.

    - neither setting: the peer (the header means nothing);
    - ``TOKEND_TRUST_FORWARDED_FOR=true`` alone: exactly one trusted proxy, the peer
      (whatever its address): the right-most entry;
    - ``TOKEND_TRUSTED_PROXIES`` set (it implies trust, whatever
      ``TOKEND_TRUST_FORWARDED_FOR`` says): the header counts only when the peer is one
      of them, and the client is the right-most entry that is not (all of them are: the
      left-most).

    An entry that is not a bare IP address (``ipaddress``; an address with a port or in
    brackets is not) where the client should be refuses the header: the peer.
    """
    peer = request.remote or ""
    trusted = settings.trusted_proxies
    if not (trusted or settings.trust_forwarded_for):
        return peer
    values = request.headers.getall("X-Forwarded-For", [])
    if not values:
        return peer
    if trusted and not _in(_address(peer), trusted):
        return peer
    chain = ",".join(values).split(",")
    found: _IPAddress | None = None
    for entry in reversed(chain):
        address = _address(entry)
        if address is None:  # garbage where the client (or a proxy) should be
            return peer
        found = address
        if not _in(address, trusted):
            break
    return peer if found is None else str(found)


def _address(text: str) -> _IPAddress | None:
    """The address ``text`` spells; None unless it is a bare IPv4 or IPv6 address (an
    IPv6 zone, ``%eth0``, is free text: refused too)."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return address


def _in(address: _IPAddress | None, networks: tuple[Any, ...]) -> bool:
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's spelling of an IPv4 peer
    return any(address in network for network in networks)


# Session fields stay within Redis's hash-max-listpack-value (64 bytes by default), so
# the session hash keeps its compact encoding.
FIELD_BYTES = 64


def _text(value: str) -> str:
    """Header text as valid Unicode: aiohttp hands bytes that are not UTF-8 over as lone
    surrogates, which neither Redis nor JSON can carry; they become U+FFFD."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def _fit(value: str, limit: int) -> str:
    """The longest prefix of ``value`` within ``limit`` UTF-8 bytes."""
    return value.encode()[:limit].decode("utf-8", "ignore")


def shorten(value: str, limit: int) -> str:
    """``value`` within ``limit`` UTF-8 bytes, keeping both ends: head…tail (a user agent
    names the client at the start and its version at the end)."""
    raw = value.encode()
    if len(raw) <= limit:
        return value
    room = limit - len("…".encode())
    head = raw[: room // 2].decode("utf-8", "ignore")
    tail = raw[len(raw) - (room - room // 2) :].decode("utf-8", "ignore")
    return f"{head}…{tail}"
