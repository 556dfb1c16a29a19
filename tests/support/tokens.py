"""Tokens built, read and checked by hand: JWTs tokend would not sign, and their refusals."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt

from service.http.appkeys import CLOCK, KEYRING
from service.keys import SigningKey


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT without verifying it."""
    head, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, so PyJWT's own refusals cannot stop the attacker's token."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def server_key(client: Any) -> SigningKey:
    """The key tokend signs access tokens with right now."""
    app = client.server.app
    key: SigningKey = app[KEYRING].signing_key(app[CLOCK]())
    return key


def sign_like_server(client: Any, claims: dict[str, Any], **headers: Any) -> str:
    """A token signed with tokend's real key, with whatever header and claims we like."""
    key = server_key(client)
    header = {"typ": "at+jwt", "kid": key.kid, **headers}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers=header)


def sign_raw(client: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Hand-built, signed with tokend's real key: for headers PyJWT refuses to write."""
    key = server_key(client)
    algorithm = jwt.get_algorithm_by_name(key.alg)
    return forge({"alg": key.alg, **header}, claims, lambda data: algorithm.sign(data, key.private))


async def subscriber_rejects(verifier: Any, token: str) -> str:
    """The subscriber library (tokend_client.TokenVerifier) refuses the token; why."""
    from tokend_client import InvalidToken

    try:
        await verifier.verify(token)
    except InvalidToken as exc:
        return exc.description
    raise AssertionError("the subscriber library accepted the token")
