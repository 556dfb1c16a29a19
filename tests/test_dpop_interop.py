"""DPoP against an independent implementation: panva's oauth4webapi (tests/dpop_interop/,
pinned 3.8.8, `npm ci` from scripts/test-setup.sh) drives a real tokend process.

tokend runs with TOKEND_DPOP_NONCE=true and a public OAuth client that must use DPoP
(``dpop_bound_access_tokens``): the Node script gets a bound token by the password grant,
calls /auth/me with the DPoP scheme, refreshes with a handle that has no nonce yet (so the
refresh meets use_dpop_nonce and retries), and tries the new refresh token without a proof.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.devredis import free_port
from tests.support import PASSWORD, unverified
from tests.support.node import run_node
from tests.support.services import ExampleProcess, ServiceSpec
from tests.support.settings import FAST_ARGON2, TEST_KEK

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "dpop_interop"
TOKEND = ServiceSpec("tokend", HERE / "browser" / "serve_tokend.py", 1, False)
NODE_TIMEOUT = 60.0


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed: the oauth4webapi interop test is not run"
    if not (PACKAGE / "node_modules" / "oauth4webapi").is_dir():
        return "tests/dpop_interop has no node_modules: run scripts/test-setup.sh (npm ci)"
    return None


async def _node(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run interop.mjs; its result line and its whole output."""
    result = await run_node(PACKAGE / "interop.mjs", config, timeout=NODE_TIMEOUT)
    return result, result.pop("_output")


async def test_oauth4webapi_gets_uses_and_refreshes_a_dpop_bound_token(
    tmp_path: Path, redis_env: dict[str, str], redis_prefix: str, migrated_sqlite: str
) -> None:
    if (reason := _missing()) is not None:
        pytest.skip(reason)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")},
        **redis_env,
        **FAST_ARGON2,
        "PYTHONUNBUFFERED": "1",
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_DATABASE_URL": migrated_sqlite,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        "TOKEND_ISSUER": issuer,
        "TOKEND_DPOP_NONCE": "true",
        "TOKEND_OAUTH_CLIENTS": json.dumps({"interop": {"dpop_bound_access_tokens": True}}),
    }
    tokend = ExampleProcess(TOKEND, env, tmp_path / "tokend.log", port=port)
    await tokend.start()
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{issuer}/auth/register", json={"username": "alice", "password": PASSWORD}
            )
            assert resp.status == 201, await resp.text()
        result, output = await _node(
            {
                "issuer": issuer,
                "client_id": "interop",
                "username": "alice",
                "password": PASSWORD,
            }
        )
    finally:
        await tokend.close()
    print(json.dumps({k: v for k, v in result.items() if "token" not in k or "type" in k}))
    assert result["dpop_algs"] == ["ES256", "EdDSA", "RS256", "PS256"]
    # oauth4webapi lower-cases token_type
    assert result["token_type"] == "dpop" and result["refreshed_token_type"] == "dpop"
    for name in ("access_token", "refresh_token", "refreshed_access_token"):
        assert unverified(result[name])[1]["cnf"] == {"jkt": result["jkt"]}, name
    assert result["me"] == {
        "status": 200,
        "body": {**result["me"]["body"], "username": "alice"},
    }, output
    assert result["me_after_refresh"]["status"] == 200
    assert result["me_after_refresh"]["body"]["username"] == "alice"
    assert result["me_without_nonce"]["status"] == 200
    # The nonce: the first token request, the refresh and the last /auth/me (each from a
    # handle without a nonce yet) were answered use_dpop_nonce once (400 at the token
    # endpoint, 401 with the DPoP challenge at the resource) and succeeded on the retry;
    # the other /auth/me calls reused the nonce their handle had.
    assert result["retries"] == {"token": 1, "me": 1, "refresh": 1}, output
    assert result["stolen_refresh"] == {"status": 400, "error": "invalid_dpop_proof"}
