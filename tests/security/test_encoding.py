"""One token, two spellings: PyJWT 2.15 accepts a signature with its base64 padding
(``=`` or ``==``) as well as without, so the same token verifies under two raw strings.
Revocation and reuse detection key on the verified ``jti``/``sid``/``sub``, never on
the raw token: every spelling of a revoked token stays rejected, at tokend and at the
subscriber library. (Other re-spellings of the same signature bytes, a stray ``~`` or
``+``/``/`` for ``-``/``_``, are refused outright as malformed.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import (
    assert_invalid_token,
    bearer,
    me,
    refresh,
    register_and_login,
    subscriber_rejects,
    unverified,
)

pytestmark = pytest.mark.security


def spellings(token: str) -> list[str]:
    """Other raw strings PyJWT accepts for the same token (the original excluded)."""
    head, payload, sig = token.split(".")
    assert len(sig) % 4, "a signature that needs no padding has no second spelling"
    return [f"{head}.{payload}.{sig}{'=' * (-len(sig) % 4)}"]


def malformed(token: str) -> list[str]:
    """Spellings that decode to the same bytes in lax base64 but are refused."""
    head, payload, sig = token.split(".")
    middle = len(sig) // 2
    found = [
        f"{head}.{payload}.{sig}{'=' * (-len(sig) % 4 + 4)}",
        f"{head}.{payload}.{sig[:middle]}~{sig[middle:]}",
        f"{head}.{payload}={'=' * (-len(payload) % 4)}.{sig}",
    ]
    if len(sig) % 4 == 2:
        found.append(f"{head}.{payload}.{sig}=")
    swapped = sig.replace("-", "+").replace("_", "/")
    if swapped != sig:
        found.append(f"{head}.{payload}.{swapped}")
    return found


async def test_other_respellings_are_malformed(make_client, make_verifier) -> None:
    client = await make_client()
    tokens = await register_and_login(client)
    verifier = make_verifier(client)
    for token in malformed(tokens["access_token"]):
        status, body, headers = await me(client, token)
        if status != 400:  # "=" inside the token breaks RFC 6750's b64token: invalid_request
            assert_invalid_token(status, body, headers, token)
        assert body["error"] in ("invalid_token", "invalid_request")
        await subscriber_rejects(verifier, token)
    for token in malformed(tokens["refresh_token"]):
        status, body, headers = await refresh(client, token)
        if status != 400:
            assert_invalid_token(status, body, headers, token)
        assert body["error"] in ("invalid_token", "invalid_request")
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)


async def _all_rejected(client: Any, listener: Any, token: str) -> None:
    for spelling in [token, *spellings(token)]:
        status, body, headers = await me(client, spelling)
        assert_invalid_token(status, body, headers, spelling)
        assert body["error_description"] == "token revoked"
    claims = unverified(token)[1]
    await eventually(lambda: listener.is_revoked(claims))


REVOCATIONS: dict[str, Callable[[Any, str], Any]] = {
    "logout": lambda client, token: client.post("/auth/logout", headers=bearer(token)),
    "logout-all": lambda client, token: client.post("/auth/logout-all", headers=bearer(token)),
    "oauth-revoke": lambda client, token: client.post(
        "/oauth/revoke", data={"token": token, "client_id": "cli"}
    ),
}


@pytest.mark.parametrize("how", list(REVOCATIONS))
@pytest.mark.parametrize("revoke_with", ["original", "variant"])
async def test_every_spelling_of_a_revoked_access_token_is_rejected(
    make_client, make_listener, make_verifier, how, revoke_with
) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS='{"cli": {}}')
    listener = await make_listener()
    tokens = await register_and_login(client)
    token = tokens["access_token"]
    verifier = make_verifier(client)
    # the premise: each spelling is accepted as the same token while it is valid
    for spelling in spellings(token):
        status, body, _ = await me(client, spelling)
        assert status == 200, body
        assert (await verifier.verify(spelling))["jti"] == unverified(token)[1]["jti"]
    used = token if revoke_with == "original" else spellings(token)[0]
    resp = await REVOCATIONS[how](client, used)
    assert resp.status in (200, 204), await resp.text()
    await _all_rejected(client, listener, token)


async def test_every_spelling_of_a_consumed_refresh_token_is_reuse(make_client) -> None:
    client = await make_client(TOKEND_REFRESH_REUSE_GRACE="0")
    tokens = await register_and_login(client)
    status, rotated, _ = await refresh(client, tokens["refresh_token"])
    assert status == 200
    variant = spellings(tokens["refresh_token"])[0]
    status, body, headers = await refresh(client, variant)
    assert_invalid_token(status, body, headers, variant)
    assert body["error_description"].startswith("refresh token reuse detected")
    # reuse detection keyed on the jti revoked the whole session
    for token in [rotated["refresh_token"], *spellings(rotated["refresh_token"])]:
        status, body, headers = await refresh(client, token)
        assert_invalid_token(status, body, headers, token)
    for token in (tokens["access_token"], rotated["access_token"]):
        assert (await me(client, token))[0] == 401


async def test_a_refresh_token_revoked_in_another_spelling_is_dead(make_client) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS='{"cli": {}}')
    tokens = await register_and_login(client)
    resp = await client.post(
        "/oauth/revoke",
        data={"token": spellings(tokens["refresh_token"])[0], "client_id": "cli"},
    )
    assert resp.status == 200
    for token in [tokens["refresh_token"], *spellings(tokens["refresh_token"])]:
        status, body, headers = await refresh(client, token)
        assert_invalid_token(status, body, headers, token)
    assert (await me(client, tokens["access_token"]))[0] == 401
