"""Liveness, readiness (Redis and database), metrics; Redis gone means 503, not a token."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.devredis import free_port
from service.migrate import upgrade_async
from tests.conftest import drop_postgres_database, make_postgres_database
from tests.support import PASSWORD, add_user, register_and_login


async def _assert_503(resp: Any) -> dict[str, Any]:
    assert resp.status == 503, await resp.text()
    assert int(resp.headers["Retry-After"]) >= 1
    body: dict[str, Any] = await resp.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["error_description"]
    return body


async def test_healthz(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_checks_redis_and_database(make_client: Any, db_url: str) -> None:
    client = await make_client(TOKEND_DATABASE_URL=db_url)
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


async def test_readyz_503_when_redis_is_unreachable(make_client: Any) -> None:
    # Start-up does not need Redis: the process comes up and says it is not ready.
    client = await make_client(TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert (await client.get("/healthz")).status == 200
    body = await _assert_503(await client.get("/readyz"))
    assert "redis" in body["error_description"]
    assert "database" not in body["error_description"]


async def test_readyz_follows_redis_down_and_back(make_client: Any, private_redis: Any) -> None:
    client = await make_client(TOKEND_REDIS_URL=private_redis.url)
    assert (await client.get("/readyz")).status == 200
    private_redis.kill()
    await _assert_503(await client.get("/readyz"))
    private_redis.start()  # same port
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()


@pytest.mark.postgres
async def test_readyz_503_when_the_database_is_gone(make_client: Any) -> None:
    url = await make_postgres_database()
    try:
        await upgrade_async(url)
        client = await make_client(TOKEND_DATABASE_URL=url)
        assert (await client.get("/readyz")).status == 200
        await drop_postgres_database(url)
        body = await _assert_503(await client.get("/readyz"))
        assert "database" in body["error_description"]
        assert "redis" not in body["error_description"]
        # A login needs the user store: 503 too, never a 500.
        resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
        await _assert_503(resp)
    finally:
        await drop_postgres_database(url)


async def test_login_without_redis_is_503_without_a_token(make_client: Any) -> None:
    client = await make_client(TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    await add_user(client, "alice")  # users live in SQL (registration counts in Redis)
    resp = await client.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    body = await _assert_503(resp)
    assert "access_token" not in body and "refresh_token" not in body
    assert "Authorization" not in resp.headers
    assert "X-Refresh-Token" not in resp.headers


async def test_metrics_are_prometheus_text(make_client: Any) -> None:
    client = await make_client()
    await register_and_login(client)
    resp = await client.post("/auth/login", json={"username": "alice", "password": "wrong one"})
    assert resp.status == 401
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert "# TYPE tokend_logins_total counter" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    logins = {
        s.labels["result"]: s.value
        for s in families["tokend_logins"].samples
        if s.name == "tokend_logins_total"
    }
    assert logins.pop("ok") == 1.0
    assert list(logins.values()) == [1.0]  # the failure, under a result label of its own
    assert "tokend_http_request_seconds" in families
    routes = {s.labels.get("route") for s in families["tokend_http_request_seconds"].samples}
    assert "/auth/login" in routes


async def test_each_app_has_its_own_metrics(make_client: Any) -> None:
    first = await make_client()
    await register_and_login(first)
    second = await make_client()
    text = await (await second.get("/metrics")).text()
    assert 'tokend_logins_total{result="ok"}' not in text
