"""`tokend client login|whoami|logout` as a user runs them: subprocesses against a real tokend."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from tests.support import PASSWORD, bearer, register

TOKEND = Path(sys.executable).parent / "tokend"


def client_env(**env: str) -> dict[str, str]:
    """The test's environment without TOKEND_ or XDG_ variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKEND_", "XDG_CONFIG_HOME"))}
    return {**base, **env}


async def cli(*args: str, env: dict[str, str], stdin: str = "") -> tuple[int, str, str]:
    """Run ``tokend client ...`` while this test's event loop keeps serving tokend."""
    proc = await asyncio.create_subprocess_exec(
        str(TOKEND),
        "client",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    assert proc.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return proc.returncode, out.decode(), err.decode()


def stored(path: Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(path.read_text())["tokens"]
    return table


async def test_login_whoami_logout(make_client, tmp_path: Path) -> None:
    # Two-second tokens (and whole-second exp), so whoami after a pause needs a refresh.
    tokend = await make_client(TOKEND_ACCESS_TTL="2")
    await register(tokend, "alice")
    url = str(tokend.make_url("")).rstrip("/")
    tokens = tmp_path / "config" / "tokens.json"
    env = client_env(TOKEND_CLIENT_TOKENS=str(tokens))

    status, out, err = await cli(
        "login", "--url", url, "--username", "alice", "--password-stdin",
        env=env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert status == 0, err
    me = json.loads(out)
    assert me["username"] == "alice"
    assert "logged in" in err
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
    first = stored(tokens)[url]

    status, out, err = await cli("whoami", "--url", url, env=env)
    assert status == 0, err
    assert json.loads(out)["sid"] == me["sid"]

    await asyncio.sleep(2.1)  # the access token has expired
    status, out, err = await cli("whoami", "--url", url, env=env)
    assert status == 0, err
    assert json.loads(out)["sid"] == me["sid"]
    second = stored(tokens)[url]
    assert second["refresh_token"] != first["refresh_token"]  # rotated and written back
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600

    status, out, err = await cli("logout", "--url", url, env=env)
    assert status == 0, err
    assert "logged out" in out
    assert not tokens.exists()
    resp = await tokend.post("/auth/refresh", headers=bearer(second["refresh_token"]))
    assert resp.status == 401  # the session ended at tokend, not just here

    status, out, err = await cli("whoami", "--url", url, env=env)
    assert status == 1
    assert "not logged in" in err and "tokend client login" in err
    status, out, err = await cli("logout", "--url", url, env=env)
    assert status == 0
    assert "not logged in" in out


async def test_bad_password_and_default_location(make_client, tmp_path: Path) -> None:
    tokend = await make_client()
    await register(tokend, "alice")
    url = str(tokend.make_url("")).rstrip("/")
    env = client_env(XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    status, _, err = await cli(
        "login", "--url", url, "--username", "alice", "--password-stdin",
        env=env, stdin="not the password\n",
    )  # fmt: skip
    assert status == 1
    assert "login failed" in err
    assert not (tmp_path / "xdg").exists()
    status, _, err = await cli(
        "login", "--url", url + "/", "--username", "alice", "--password-stdin",
        env=env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert status == 0, err
    path = tmp_path / "xdg" / "tokend" / "tokens.json"
    assert list(stored(path)) == [url]  # keyed by URL, trailing slash or not


async def test_unreachable_tokend_and_bad_url(tmp_path: Path) -> None:
    from service.devredis import free_port

    env = client_env(TOKEND_CLIENT_TOKENS=str(tmp_path / "tokens.json"))
    url = f"http://127.0.0.1:{free_port()}"
    status, _, err = await cli(
        "login", "--url", url, "--username", "alice", "--password-stdin",
        env=env, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert status == 1
    assert "cannot reach tokend" in err
    status, _, err = await cli("whoami", "--url", "ftp://example", env=env)
    assert status == 2
    assert "--url" in err


async def test_help_names_the_three_commands() -> None:
    status, out, _ = await cli("--help", env=client_env())
    assert status == 0
    assert "{login,whoami,logout}" in out


async def test_client_commands_do_not_load_the_server() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['tokend', 'client', 'whoami', '--url', 'ftp://example']\n"
        "from service.entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('sqlalchemy', 'alembic', 'service.app') if m in sys.modules])\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=client_env(), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert out.decode().strip().splitlines()[-1] == "[]"
