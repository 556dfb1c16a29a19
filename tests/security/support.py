"""The security suite's tools now live in tests/support; the test modules that still import
them from here are moved over as they are next edited."""

from tests.support.http import (
    assert_invalid_token,
    http_request,
    me,
    parse_answer,
    raw_exchange,
    refresh,
)
from tests.support.sentry import Activity, sentry
from tests.support.servers import (
    ConnectionCounter,
    PostgresServer,
    RedisServer,
    TcpProxy,
    postgres_bin,
)
from tests.support.tokens import (
    b64,
    b64json,
    forge,
    server_key,
    sign_like_server,
    sign_raw,
    subscriber_rejects,
)

__all__ = [
    "Activity",
    "ConnectionCounter",
    "PostgresServer",
    "RedisServer",
    "TcpProxy",
    "assert_invalid_token",
    "b64",
    "b64json",
    "forge",
    "http_request",
    "me",
    "parse_answer",
    "postgres_bin",
    "raw_exchange",
    "refresh",
    "sentry",
    "server_key",
    "sign_like_server",
    "sign_raw",
    "subscriber_rejects",
]
