"""X-Forwarded-For (security review, defect 3): a proxy appends the address it saw, so
only the right end of the chain is the trusted proxies' word; everything to the left of
it was written by the client. The per-IP login limit and the IP recorded on a session
take the right-most address not in ``TOKEND_TRUSTED_PROXIES`` (with
``TOKEND_TRUST_FORWARDED_FOR=true`` alone: the right-most address, the direct peer being
the one proxy), honour the header only when the direct peer is a trusted proxy, and
refuse malformed entries by falling back to the peer."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from multidict import CIMultiDict

from service.errors import ConfigError
from service.keyspace import Keyspace
from service.settings import Settings
from tests.support import PASSWORD, bearer

pytestmark = pytest.mark.security

PEER = "127.0.0.1"  # the test client's address as tokend sees it
CHAIN = {"TOKEND_TRUSTED_PROXIES": "127.0.0.1/32, 10.0.0.0/8"}


async def recorded_ip(client: Any, headers: Any) -> str:
    """The IP tokend records on a session logged in with these request headers."""
    resp = await client.post("/auth/register", json={"username": "alice", "password": PASSWORD})
    assert resp.status in (201, 409), await resp.text()
    resp = await client.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    access = (await resp.json())["access_token"]
    resp = await client.get("/auth/sessions", headers=bearer(access))
    assert resp.status == 200, await resp.text()
    (current,) = [s for s in (await resp.json())["sessions"] if s["current"]]
    ip: str = current["ip"]
    return ip


async def _fail_login(client: Any, username: str, forwarded: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/auth/login",
        json={"username": username, "password": "wrong password"},
        headers={"X-Forwarded-For": forwarded},
    )
    return resp.status, await resp.json()


async def test_a_spoofed_left_most_address_does_not_move_the_ip_limit(
    make_client, redis_client, redis_prefix
) -> None:
    client = await make_client(
        TOKEND_TRUST_FORWARDED_FOR="true",
        TOKEND_LOGIN_FAILURES_PER_IP="3",
        TOKEND_LOGIN_FAILURES_PER_USER="1000",
    )
    for i in range(3):
        status, _ = await _fail_login(client, f"user{i}", f"10.0.0.{i}, 203.0.113.7")
        assert status == 401
    status, body = await _fail_login(client, "user9", "10.9.9.9, 203.0.113.7")
    assert status == 429 and body["error"] == "slow_down", body
    ip_keys = [
        k async for k in redis_client.scan_iter(match=Keyspace(redis_prefix).limit_ip("lf", "*"))
    ]
    assert ip_keys == [Keyspace(redis_prefix).limit_ip("lf", "203.0.113.7")]


async def test_the_session_records_the_address_the_proxy_saw(make_client) -> None:
    client = await make_client(TOKEND_TRUST_FORWARDED_FOR="true")
    assert await recorded_ip(client, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}) == ("203.0.113.7")
    # two headers are one list, in order
    two = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.8")])
    assert await recorded_ip(client, two) == "203.0.113.8"
    # without the setting the header means nothing
    plain = await make_client()
    assert await recorded_ip(plain, {"X-Forwarded-For": "203.0.113.7"}) == PEER


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        # the right-most address not of a trusted proxy
        ("6.6.6.6, 198.51.100.4, 10.1.2.3", "198.51.100.4"),
        ("198.51.100.4,10.1.2.3,10.9.9.9", "198.51.100.4"),
        ("2001:db8::1", "2001:db8::1"),
        # IPv6 in its canonical spelling, so one client is one rate-limit key
        ("2001:DB8:0:0::1, 10.1.2.3", "2001:db8::1"),
        # only proxies: the left-most of them
        ("10.0.0.5, 10.1.2.3", "10.0.0.5"),
        ("127.0.0.1", "127.0.0.1"),
        # what a client writes left of its own address changes nothing
        ("not an ip, 198.51.100.4, 10.1.2.3", "198.51.100.4"),
    ],
)
async def test_a_chain_of_trusted_proxies(make_client, forwarded: str, expected: str) -> None:
    client = await make_client(**CHAIN)
    assert await recorded_ip(client, {"X-Forwarded-For": forwarded}) == expected


@pytest.mark.parametrize(
    ("env", "forwarded"),
    [
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "203.0.113.7, not-an-ip"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "203.0.113.7:4711"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "203.0.113.7,"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, " , "),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "999.0.113.7"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "[2001:db8::1]"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "unknown"),
        ({"TOKEND_TRUST_FORWARDED_FOR": "true"}, "fe80::1%<script>"),
        (CHAIN, "198.51.100.4, garbage, 10.1.2.3"),
        (CHAIN, "198.51.100.4, 10.1.2.3, "),
        (CHAIN, "10.1.2.3, 10.0.0.0/8"),
    ],
)
async def test_a_malformed_entry_falls_back_to_the_peer(
    make_client, env: dict[str, str], forwarded: str
) -> None:
    client = await make_client(**env)
    assert await recorded_ip(client, {"X-Forwarded-For": forwarded}) == PEER


async def test_the_header_is_ignored_unless_the_peer_is_a_trusted_proxy(
    make_client, redis_client, redis_prefix
) -> None:
    client = await make_client(
        TOKEND_TRUSTED_PROXIES="10.0.0.0/8",
        TOKEND_LOGIN_FAILURES_PER_IP="2",
        TOKEND_LOGIN_FAILURES_PER_USER="1000",
    )
    assert await recorded_ip(client, {"X-Forwarded-For": "198.51.100.4"}) == PEER
    for i in range(2):
        status, _ = await _fail_login(client, f"user{i}", f"198.51.100.{i}")
        assert status == 401
    status, body = await _fail_login(client, "user9", "198.51.100.9")
    assert status == 429, body
    ip_keys = [
        k async for k in redis_client.scan_iter(match=Keyspace(redis_prefix).limit_ip("lf", "*"))
    ]
    assert ip_keys == [Keyspace(redis_prefix).limit_ip("lf", PEER)]


def test_trusted_proxies_are_parsed_as_networks() -> None:
    settings = Settings.from_env({"TOKEND_TRUSTED_PROXIES": " 10.0.0.0/8 ,127.0.0.1, ::1/128,"})
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert Settings.from_env({}).trusted_proxies == ()


@pytest.mark.parametrize(
    "raw", ["10.0.0.0/33", "10.0.0.1/8", "localhost", "10.0.0.0/8;127.0.0.1/32", "1.2.3"]
)
def test_a_bad_trusted_proxies_value_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^TOKEND_TRUSTED_PROXIES: "):
        Settings.from_env({"TOKEND_TRUSTED_PROXIES": raw})
