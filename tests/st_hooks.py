"""schemathesis hooks for tests/test_openapi.py (``SCHEMATHESIS_HOOKS=tests.st_hooks``).

The document is tested exactly as tokend serves it; these hooks only add test cases of the
run to each operation's explicit examples (the document's own examples are illustrative:
``alice``, placeholder tokens). The values come from the JSON file named by
TOKEND_ST_EXAMPLES, written by the test: ``{"METHOD /path": [{Case arguments}, ...]}``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis


def _login() -> tuple[str, str]:
    """A new session of the test's user, made when the examples that need it are built
    (logout-all, run before or after, ends every session made before it): its access
    token and sid."""
    request = urllib.request.Request(
        os.environ["TOKEND_ST_URL"] + "/auth/login",
        data=json.dumps(
            {
                "username": os.environ["TOKEND_ST_USERNAME"],
                "password": os.environ["TOKEND_ST_PASSWORD"],
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        access = str(json.load(response)["access_token"])
    payload = access.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return access, str(claims["sid"])


def _caller() -> dict[str, str]:
    # schemathesis applies its configured auth to generated cases, not to added ones.
    return {"Authorization": f"Bearer {_login()[0]}"}


@schemathesis.hook
def before_add_examples(context: Any, examples: list[Any]) -> None:
    operation = context.operation
    key = f"{operation.method.upper()} {operation.path}"
    cases: list[dict[str, Any]] = json.loads(
        Path(os.environ["TOKEND_ST_EXAMPLES"]).read_text()
    ).get(key, [])
    if key == "DELETE /auth/sessions/{sid}":
        cases = [{"path_parameters": {"sid": _login()[1]}, "headers": _caller()}]
    elif key == "POST /auth/password":
        cases = [{**case, "headers": _caller()} for case in cases]
    for case in cases:
        added = operation.Case(**case)
        # A token of the test's user, as the configured auth would have set (schemathesis
        # applies that auth to generated cases only, and counts any other as made up).
        added._has_explicit_auth = "headers" in case
        examples.append(added)
