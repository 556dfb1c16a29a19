"""Each use case counts its outcome once: /metrics scraped around every flow, exact deltas.

The counters compared are the four domain counters (logins, refreshes, revocations,
published events); a flow must move exactly the series named, each by one, and no other.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service.errors import InvalidCredentials, RateLimited, TokenExpired, Unavailable
from service.login import login_failure
from service.metrics import LOGIN_OUTCOMES, REFRESH_OUTCOMES, REVOCATION_REASONS
from service.refresh import refresh_failure
from tests.support import PASSWORD, bearer, login, register, unverified

COUNTERS = {
    "tokend_logins_total": "result",
    "tokend_refreshes_total": "result",
    "tokend_revocations_total": "reason",
    "tokend_events_published_total": "type",
}
CLIENTS = json.dumps({"web": {"secret": "s3cret"}})
WEB = {"Authorization": "Basic " + base64.b64encode(b"web:s3cret").decode()}

Counts = dict[tuple[str, str], float]


async def scrape(client: Any) -> Counts:
    text = await (await client.get("/metrics")).text()
    counts: Counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = COUNTERS.get(sample.name)
            if label is not None:
                counts[(sample.name.removeprefix("tokend_"), sample.labels[label])] = sample.value
    return counts


class Meter:
    """Scrapes /metrics and asserts what moved since the last check."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.last: Counts = {}

    async def start(self) -> Meter:
        self.last = await scrape(self.client)
        return self

    async def moved(self, **expected: float) -> None:
        """``logins_total__ok=1``: the series that changed since the last check, exactly."""
        now = await scrape(self.client)
        delta = {
            f"{name}__{label}".replace(".", "_"): value - self.last.get((name, label), 0)
            for (name, label), value in now.items()
            if value != self.last.get((name, label), 0)
        }
        self.last = now
        assert delta == expected


async def password_grant(client: Any, password: str = PASSWORD, **form: str) -> Any:
    data = {"grant_type": "password", "username": "alice", "password": password, **form}
    return await client.post("/oauth/token", data=data, headers=WEB)


async def refresh_grant(client: Any, token: str, **form: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": token, **form}
    return await client.post("/oauth/token", data=data, headers=WEB)


async def refresh(client: Any, token: str) -> Any:
    return await client.post("/auth/refresh", headers=bearer(token))


async def test_password_logins_count_once(make_client: Any) -> None:
    client = await make_client(TOKEND_LOGIN_FAILURES_PER_USER="2")
    await register(client, "alice")
    meter = await Meter(client).start()
    await login(client, "alice")
    await meter.moved(logins_total__ok=1)
    wrong = {"username": "alice", "password": "not the password"}
    assert (await client.post("/auth/login", json=wrong)).status == 401
    await meter.moved(logins_total__bad_credentials=1)
    assert (await client.post("/auth/login", json={"username": 1, "password": 2})).status == 400
    await meter.moved(logins_total__invalid=1)
    assert (await client.post("/auth/login", json=wrong)).status == 401
    await meter.moved(logins_total__bad_credentials=1)
    assert (await client.post("/auth/login", json=wrong)).status == 429
    await meter.moved(logins_total__rate_limited=1)


async def test_oauth_token_endpoint_counts_once_in_the_domain_vocabulary(
    make_client: Any,
) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS, TOKEND_REFRESH_REUSE_GRACE="0")
    await register(client, "alice")
    meter = await Meter(client).start()
    resp = await password_grant(client, scope="read write")
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    await meter.moved(logins_total__ok=1)
    assert (await password_grant(client, "not the password")).status == 400
    await meter.moved(logins_total__bad_credentials=1)

    resp = await refresh_grant(client, tokens["refresh_token"])
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    await meter.moved(refreshes_total__rotated=1)
    # a widening is refused without consuming the token; a narrowing is one rotation
    resp = await refresh_grant(client, tokens["refresh_token"], scope="read admin")
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_scope"
    await meter.moved(refreshes_total__invalid=1)
    resp = await refresh_grant(client, tokens["refresh_token"], scope="read")
    assert resp.status == 200, await resp.text()
    narrowed = await resp.json()
    access = unverified(narrowed["access_token"])[1]
    assert narrowed["scope"] == access["scope"] == "read" and "auth_time" in access
    await meter.moved(refreshes_total__rotated=1)
    resp = await refresh_grant(client, tokens["refresh_token"])  # grace 0: a replay
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    await meter.moved(
        refreshes_total__reuse_replay=1,
        revocations_total__refresh_token_reuse=1,
        events_published_total__session_revoked=1,
    )
    assert (await refresh_grant(client, "not.a.jwt")).status == 400
    await meter.moved(refreshes_total__invalid=1)
    # nothing reached a use case: not an attempt of either kind
    resp = await client.post("/oauth/token", data={"grant_type": "x"}, headers=WEB)
    assert resp.status == 400
    await meter.moved()


async def test_refresh_outcomes_count_once(make_client: Any, clock: Any) -> None:
    client = await make_client(clock=clock, TOKEND_REFRESH_REUSE_GRACE="10")
    await register(client, "alice")
    first = await login(client, "alice")
    meter = await Meter(client).start()
    resp = await refresh(client, first["refresh_token"])
    assert resp.status == 200
    second = await resp.json()
    await meter.moved(refreshes_total__rotated=1)
    assert (await refresh(client, first["refresh_token"])).status == 200
    await meter.moved(refreshes_total__grace=1)
    assert (await refresh(client, second["refresh_token"])).status == 200
    await meter.moved(refreshes_total__rotated=1)
    # two generations old, superseded within the grace: a concurrent reuse
    assert (await refresh(client, first["refresh_token"])).status == 401
    await meter.moved(
        refreshes_total__reuse_concurrent=1,
        revocations_total__refresh_token_reuse=1,
        events_published_total__session_revoked=1,
    )
    assert (await refresh(client, second["refresh_token"])).status == 401
    await meter.moved(refreshes_total__unknown=1)

    other = await login(client, "alice")
    meter.last = await scrape(client)
    clock.advance(11)
    resp = await refresh(client, other["refresh_token"])
    assert resp.status == 200
    clock.advance(11)
    assert (await refresh(client, other["refresh_token"])).status == 401
    await meter.moved(
        refreshes_total__rotated=1,
        refreshes_total__reuse_replay=1,
        revocations_total__refresh_token_reuse=1,
        events_published_total__session_revoked=1,
    )


async def test_expired_refresh_counts_once(make_client: Any, clock: Any) -> None:
    client = await make_client(
        clock=clock, TOKEND_REFRESH_IDLE_TTL="100", TOKEND_REFRESH_ABSOLUTE_TTL="200"
    )
    await register(client, "alice")
    tokens = await login(client, "alice")
    meter = await Meter(client).start()
    clock.advance(101)
    assert (await refresh(client, tokens["refresh_token"])).status == 401
    await meter.moved(refreshes_total__expired=1)


async def test_revocations_count_once(make_client: Any) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS)
    await register(client, "alice")
    first, second, third = [await login(client, "alice") for _ in range(3)]
    meter = await Meter(client).start()

    sid1 = unverified(first["access_token"])[1]["sid"]
    resp = await client.delete(f"/auth/sessions/{sid1}", headers=bearer(second["access_token"]))
    assert resp.status == 204
    await meter.moved(
        revocations_total__session_deleted=1, events_published_total__session_revoked=1
    )
    resp = await client.delete(f"/auth/sessions/{sid1}", headers=bearer(second["access_token"]))
    assert resp.status == 404
    await meter.moved()
    assert (await client.get("/auth/sessions", headers=bearer(second["access_token"]))).ok
    await meter.moved()

    assert (await client.post("/auth/logout", headers=bearer(second["access_token"]))).ok
    await meter.moved(revocations_total__logout=1, events_published_total__session_revoked=1)

    resp = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "another long passphrase"},
        headers=bearer(third["access_token"]),
    )
    assert resp.status == 200, await resp.text()
    await meter.moved(revocations_total__password_changed=1, events_published_total__user_revoked=1)

    assert (await client.post("/auth/logout-all", headers=bearer(third["access_token"]))).ok
    await meter.moved(revocations_total__logout_all=1, events_published_total__user_revoked=1)


async def test_oauth_revocations_count_what_was_revoked(make_client: Any) -> None:
    client = await make_client(TOKEND_OAUTH_CLIENTS=CLIENTS)
    await register(client, "alice")
    tokens = await (await password_grant(client)).json()
    meter = await Meter(client).start()
    for _ in range(2):  # the second finds it revoked already
        resp = await client.post(
            "/oauth/revoke", data={"token": tokens["access_token"]}, headers=WEB
        )
        assert resp.status == 200
    await meter.moved(revocations_total__oauth_revoke=1, events_published_total__token_revoked=1)
    for _ in range(2):
        resp = await client.post(
            "/oauth/revoke", data={"token": tokens["refresh_token"]}, headers=WEB
        )
        assert resp.status == 200
    await meter.moved(revocations_total__oauth_revoke=1, events_published_total__session_revoked=1)


async def test_session_cap_evictions_count_once(make_client: Any) -> None:
    client = await make_client(TOKEND_MAX_SESSIONS_PER_USER="1")
    await register(client, "alice")
    await login(client, "alice")
    meter = await Meter(client).start()
    await login(client, "alice")
    await meter.moved(
        logins_total__ok=1,
        revocations_total__session_limit=1,
        events_published_total__session_revoked=1,
    )


async def test_every_label_is_documented(make_client: Any) -> None:
    client = await make_client()
    await register(client, "alice")
    tokens = await login(client, "alice")
    await refresh(client, tokens["refresh_token"])
    await client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    documented = {
        "logins_total": set(LOGIN_OUTCOMES),
        "refreshes_total": set(REFRESH_OUTCOMES),
        "revocations_total": set(REVOCATION_REASONS),
        "events_published_total": {"session.revoked", "user.revoked", "token.revoked"},
    }
    for name, label in await scrape(client):
        assert label in documented[name]


def test_outcomes_follow_the_class_tree_not_class_names() -> None:
    class Renamed(RateLimited):
        pass

    class Gone(Unavailable):
        pass

    assert login_failure(Renamed(1)) == "rate_limited"
    assert login_failure(Gone()) == refresh_failure(Gone()) == "unavailable"
    assert login_failure(InvalidCredentials()) == "bad_credentials"
    assert refresh_failure(TokenExpired()) == "expired"
    assert refresh_failure(InvalidCredentials()) == "invalid"
