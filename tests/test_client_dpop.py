"""TokenSession and `tokend client` with DPoP (RFC 9449) against a real tokend: bound tokens,
proofs on login, refresh and API calls, the server's nonces, the key file next to the tokens."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from service.app import create_app
from service.devredis import free_port
from tests.support import PASSWORD, TokendTestServer, register
from tests.test_client_cli import cli, client_env, stored
from tokend_client import FileTokenStore, MemoryTokenStore, TokendClientError, TokenSession
from tokend_client._session_dpop import key_path
from tokend_client.dpop import DPoPKey, access_token_hash, normalize_htu


def claims(token: str) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return found


class Traffic:
    """What a client sends (requests with their headers) and gets, by path."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.requests: list[dict[str, str]] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_end.append(self._end)

    async def _end(self, _session: Any, _ctx: Any, params: Any) -> None:
        self.sent[params.url.path] += 1
        self.statuses[(params.url.path, params.response.status)] += 1
        self.requests.append({"url": str(params.url), **params.headers})


class Clock:
    """The session's clock (expiry times only; proofs carry real time): moved by hand."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


@pytest.fixture
def start(aiohttp_client: Any, make_settings: Any) -> Callable[..., Awaitable[Any]]:
    """``await start(**env)``: tokend on a port of its own whose TOKEND_ISSUER is its URL
    (a proof's htu names tokend's public URL)."""

    async def start(**env: str) -> Any:
        port = free_port()
        settings = make_settings(TOKEND_ISSUER=f"http://127.0.0.1:{port}", **env)
        tokend = await aiohttp_client(TokendTestServer(create_app(settings), port=port))
        await register(tokend, "alice")
        return tokend

    return start


@pytest.fixture
async def sessions() -> AsyncIterator[Callable[..., tuple[TokenSession, Traffic]]]:
    """``sessions(tokend, **kwargs)``: a TokenSession on a traced aiohttp session."""
    made: list[tuple[TokenSession, aiohttp.ClientSession]] = []

    def make(tokend: Any, **kwargs: Any) -> tuple[TokenSession, Traffic]:
        traffic = Traffic()
        http = aiohttp.ClientSession(trace_configs=[traffic.config])
        session = TokenSession(str(tokend.make_url("/")), session=http, **kwargs)
        made.append((session, http))
        return session, traffic

    yield make
    for session, http in made:
        await session.close()
        await http.close()


async def test_login_binds_and_every_call_proves(start, sessions) -> None:
    tokend = await start()
    clock = Clock()
    session, traffic = sessions(tokend, dpop=True, clock=clock)
    tokens = await session.login("alice", PASSWORD)
    key = session.dpop_key
    assert key is not None and key.alg == "ES256"
    assert claims(tokens.access_token)["cnf"] == {"jkt": key.jkt}
    me = await session.me()
    assert me["username"] == "alice"

    sent = traffic.requests
    async with session.get("/auth/me", params={"x": "1"}) as resp:
        assert resp.status == 200, await resp.text()
    request = sent[-1]
    assert request["Authorization"] == f"DPoP {tokens.access_token}"
    proof = jwt.decode(request["DPoP"], options={"verify_signature": False})
    assert proof["ath"] == access_token_hash(tokens.access_token)
    assert proof["htm"] == "GET"
    assert proof["htu"] == normalize_htu(str(tokend.make_url("/auth/me")))  # no query
    assert jwt.get_unverified_header(request["DPoP"])["jwk"] == key.public_jwk

    clock.skew = 3600  # the access token has expired as far as the session knows
    me2 = await session.me()
    assert me2["sid"] == me["sid"]
    assert session.refreshes == 1 and traffic.statuses[("/auth/refresh", 200)] == 1
    refresh_proof = jwt.decode(sent[-2]["DPoP"], options={"verify_signature": False})
    assert sent[-2]["url"].endswith("/auth/refresh") and "ath" not in refresh_proof
    fresh = session.tokens
    assert fresh is not None and fresh.refresh_token != tokens.refresh_token
    assert claims(fresh.access_token)["cnf"] == {"jkt": key.jkt}
    assert claims(fresh.refresh_token)["cnf"] == {"jkt": key.jkt}

    # Without the key the stolen pair is worth nothing: as Bearer, and at refresh.
    resp = await tokend.get("/auth/me", headers={"Authorization": f"Bearer {fresh.access_token}"})
    assert resp.status == 401
    resp = await tokend.post(
        "/auth/refresh", headers={"Authorization": f"Bearer {fresh.refresh_token}"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_dpop_proof"
    assert (await session.me())["sid"] == me["sid"]  # and it cost the session nothing
    await session.logout()
    assert traffic.statuses[("/auth/logout", 204)] == 1


async def test_given_key_and_without_dpop(start, sessions) -> None:
    tokend = await start()
    key = DPoPKey.generate("EdDSA")
    session, _ = sessions(tokend, dpop=key)
    tokens = await session.login("alice", PASSWORD)
    assert session.dpop_key is key
    assert claims(tokens.access_token)["cnf"] == {"jkt": key.jkt}
    assert (await session.me())["username"] == "alice"

    plain, _ = sessions(tokend)
    tokens = await plain.login("alice", PASSWORD)
    assert "cnf" not in claims(tokens.access_token)  # no proof, a bearer token as before
    assert plain.dpop_key is None
    assert (await plain.me())["username"] == "alice"

    # A bound pair in a session without its key: a clear error, nothing sent as Bearer.
    keyless, traffic = sessions(tokend, store=MemoryTokenStore(session.tokens))
    with pytest.raises(TokendClientError, match="DPoP-bound"):
        await keyless.me()
    assert traffic.sent["/auth/me"] == 0
    other, _ = sessions(tokend, store=MemoryTokenStore(session.tokens), dpop=DPoPKey.generate())
    with pytest.raises(TokendClientError, match="bound to DPoP key"):
        await other.me()


async def test_nonce_is_fetched_once_and_remembered(start, sessions) -> None:
    tokend = await start(TOKEND_DPOP_NONCE="true")
    session, traffic = sessions(tokend, dpop=True)
    tokens = await session.login("alice", PASSWORD)
    # The first login is refused with use_dpop_nonce and repeated once with the nonce.
    assert traffic.statuses[("/auth/login", 400)] == 1
    assert traffic.statuses[("/auth/login", 200)] == 1
    assert session.dpop_key is not None
    assert claims(tokens.access_token)["cnf"] == {"jkt": session.dpop_key.jkt}
    # The login's answer carried the next nonce: no refusal at /auth/me.
    assert (await session.me())["username"] == "alice"
    assert traffic.sent["/auth/me"] == 1

    # Another session with the same key and tokens but no nonce yet: one 401, one repeat.
    store = MemoryTokenStore(session.tokens)
    second, traffic2 = sessions(tokend, dpop=session.dpop_key, store=store)
    async with second.get("/auth/me") as resp:
        assert resp.status == 200, await resp.text()
    assert traffic2.statuses[("/auth/me", 401)] == 1
    assert traffic2.statuses[("/auth/me", 200)] == 1
    assert second.retried == 0  # a nonce repeat, not a refresh

    # A refresh by a session without a nonce: 400 use_dpop_nonce once, then rotated.
    clock = Clock()
    third, traffic3 = sessions(
        tokend, dpop=session.dpop_key, store=MemoryTokenStore(second.tokens), clock=clock
    )
    clock.skew = 3600
    assert (await third.me())["username"] == "alice"
    assert traffic3.statuses[("/auth/refresh", 400)] == 1
    assert traffic3.statuses[("/auth/refresh", 200)] == 1
    assert traffic3.sent["/auth/me"] == 1  # the refresh's answer brought the next nonce


async def test_file_store_keeps_the_key_beside_the_tokens(start, sessions, tmp_path) -> None:
    tokend = await start()
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path, key="tokend")
    session, _ = sessions(tokend, dpop=True, store=store)
    tokens = await session.login("alice", PASSWORD)
    pem = key_path(store)
    assert pem.parent == path.parent
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    key = DPoPKey.load(pem)
    assert claims(tokens.access_token)["cnf"] == {"jkt": key.jkt}

    # The next process (another session on the same files) signs with the same key.
    later, _ = sessions(tokend, dpop=True, store=FileTokenStore(path, key="tokend"))
    assert (await later.me())["username"] == "alice"
    assert later.dpop_key is not None and later.dpop_key.jkt == key.jkt
    # A store key of its own gets a key file of its own.
    assert key_path(FileTokenStore(path, key="other")) != pem


async def test_cli_login_dpop_key_file(start, tmp_path: Path) -> None:
    tokend = await start(TOKEND_ACCESS_TTL="2")
    url = str(tokend.make_url("")).rstrip("/")
    tokens = tmp_path / "config" / "tokens.json"
    env = client_env(TOKEND_CLIENT_TOKENS=str(tokens))

    status, out, err = await cli(
        "login", "--dpop", "--url", url, "--username", "alice", "--password-stdin",
        env=env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert status == 0, err
    me = json.loads(out)
    pem = key_path(FileTokenStore(tokens, key=url))
    assert str(pem) in err
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    key_bytes = pem.read_bytes()
    jkt = DPoPKey.load(pem).jkt
    first = stored(tokens)[url]
    assert claims(first["access_token"])["cnf"] == {"jkt": jkt}

    await asyncio.sleep(2.1)  # the access token has expired: whoami refreshes, with the key
    status, out, err = await cli("whoami", "--url", url, env=env)
    assert status == 0, err
    assert json.loads(out)["sid"] == me["sid"]
    second = stored(tokens)[url]
    assert second["refresh_token"] != first["refresh_token"]
    assert claims(second["access_token"])["cnf"] == {"jkt": jkt}
    assert pem.read_bytes() == key_bytes  # reused, not replaced

    pem.unlink()
    status, _, err = await cli("whoami", "--url", url, env=env)
    assert status == 1
    assert "DPoP-bound" in err and str(pem) in err and "login --dpop" in err
    assert len(err.strip().splitlines()) == 1

    pem.write_bytes(key_bytes)
    status, out, err = await cli("logout", "--url", url, env=env)
    assert status == 0, err
    assert "logged out" in out
    proof = DPoPKey.load(pem).proof("POST", f"{url}/auth/refresh")
    resp = await tokend.post(
        "/auth/refresh",
        headers={"Authorization": f"Bearer {second['refresh_token']}", "DPoP": proof},
    )
    assert resp.status == 401  # the session ended at tokend, even for the key's holder
