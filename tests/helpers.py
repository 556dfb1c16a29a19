"""The HTTP, token and server helpers now live in tests/support; the test modules that
still import them from here are moved over as they are next edited."""

from tests.support.http import (
    PASSWORD,
    TokendTestServer,
    add_user,
    bearer,
    login,
    register,
    register_and_login,
)
from tests.support.servers import PrivateRedis
from tests.support.tokens import unverified

__all__ = [
    "PASSWORD",
    "PrivateRedis",
    "TokendTestServer",
    "add_user",
    "bearer",
    "login",
    "register",
    "register_and_login",
    "unverified",
]
