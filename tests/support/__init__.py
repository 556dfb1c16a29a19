"""What the tests share (nothing here is a test; fixtures live in tests/conftest.py).

    settings.py   the suite's Redis and PostgreSQL, the base settings (fast argon2, test KEK)
    http.py       tokend's test server, users and logins over HTTP, raw HTTP exchanges
    tokens.py     JWTs read and forged by hand, and the refusals expected of them
    servers.py    real servers of a test's own: redis-server, PostgreSQL, a cuttable TCP link
    sentry.py     what the process connected to, opened or started while watched
    oidc.py       an OpenID provider of the test's own, and the world a social login runs in
    poll.py       until(): wait for a condition with a deadline

Everything is re-exported here: ``from tests.support import register, PrivateRedis``.
"""

from tests.support.http import (
    PASSWORD,
    TokendTestServer,
    add_user,
    assert_invalid_token,
    bearer,
    http_request,
    login,
    me,
    parse_answer,
    raw_exchange,
    refresh,
    register,
    register_and_login,
)
from tests.support.oidc import FakeProvider
from tests.support.sentry import Activity, sentry
from tests.support.servers import (
    ConnectionCounter,
    PostgresServer,
    PrivateRedis,
    RedisServer,
    TcpProxy,
    postgres_bin,
)
from tests.support.settings import (
    FAST_ARGON2,
    POSTGRES_URL,
    REDIS_URL,
    TEST_KEK,
    drop_postgres_database,
    make_postgres_database,
    pg_dsn,
)
from tests.support.tokens import (
    b64,
    b64json,
    forge,
    server_key,
    sign_like_server,
    sign_raw,
    subscriber_rejects,
    unverified,
)

__all__ = [
    "FAST_ARGON2",
    "PASSWORD",
    "POSTGRES_URL",
    "REDIS_URL",
    "TEST_KEK",
    "Activity",
    "ConnectionCounter",
    "FakeProvider",
    "PostgresServer",
    "PrivateRedis",
    "RedisServer",
    "TcpProxy",
    "TokendTestServer",
    "add_user",
    "assert_invalid_token",
    "b64",
    "b64json",
    "bearer",
    "drop_postgres_database",
    "forge",
    "http_request",
    "login",
    "make_postgres_database",
    "me",
    "parse_answer",
    "pg_dsn",
    "postgres_bin",
    "raw_exchange",
    "refresh",
    "register",
    "register_and_login",
    "sentry",
    "server_key",
    "sign_like_server",
    "sign_raw",
    "subscriber_rejects",
    "unverified",
]
