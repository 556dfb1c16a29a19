"""Fixtures of the security suite (the shared ones come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tokend_client import TokenVerifier

ISSUER = "http://127.0.0.1:8080"  # tokend's default TOKEND_ISSUER
AUDIENCE = "tokend"


@pytest.fixture
async def make_verifier() -> AsyncIterator[Callable[[Any], TokenVerifier]]:
    """``make_verifier(tokend_client)``: the subscriber library's verifier on its JWKS."""
    made: list[TokenVerifier] = []

    def make(client: Any) -> TokenVerifier:
        verifier = TokenVerifier(
            str(client.make_url("/.well-known/jwks.json")),
            issuer=ISSUER,
            audience=AUDIENCE,
            min_refetch_interval=0,
        )
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()
