"""`tokend client login|whoami|logout --url URL`: tokend_client.TokenSession from a terminal.

Tokens live in one private JSON file, a pair per tokend URL: ``$TOKEND_CLIENT_TOKENS``,
else ``$XDG_CONFIG_HOME/tokend/tokens.json`` (``~/.config/tokend/tokens.json``); the
file is ``0600`` and a directory made for it ``0700``. ``whoami`` refreshes the access
token when it has expired and writes the rotated pair back, so the seed's flow can be
followed from a shell.

``login --dpop`` binds the session to a DPoP key (RFC 9449): an EC P-256 key in a PEM
file next to the tokens file (``0600``, one per URL), made on the first ``--dpop`` login
and used by ``whoami`` and ``logout`` (and their refreshes) whenever the kept tokens are
bound. A bound session whose key file is gone cannot be used: log in again.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from tokend_client import (
    FileTokenStore,
    LoginFailed,
    LoginRequired,
    TokendClientError,
    TokenSession,
)
from tokend_client.dpop import bound_jkt

DEFAULT_URL = "http://127.0.0.1:8080"


def add_client_parser(sub: Any) -> None:
    """Add ``client login|whoami|logout`` to the ``tokend`` subparsers."""
    client = sub.add_parser("client", help="log in to a tokend and call it (tokens kept in a file)")
    actions = client.add_subparsers(dest="action", required=True)
    for name, text in (
        ("login", "log in and keep the tokens"),
        ("whoami", "print /auth/me, refreshing the access token when needed"),
        ("logout", "end the session and delete the kept tokens"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--url", default=DEFAULT_URL, help=f"tokend's URL ({DEFAULT_URL})")
        if name == "login":
            action.add_argument("--username", help="asked for when not given")
            action.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
            action.add_argument(
                "--dpop",
                action="store_true",
                help="bind the tokens to a DPoP key kept next to the tokens file (0600)",
            )


def tokens_path(env: Mapping[str, str]) -> Path:
    """Where the CLI keeps its tokens."""
    explicit = env.get("TOKEND_CLIENT_TOKENS")
    if explicit:
        return Path(explicit).expanduser()
    config = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(config) / "tokend" / "tokens.json"


def store_key(url: str) -> str:
    """The file's key for a tokend URL: absolute http(s), without a trailing slash."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"--url must be an http(s) URL, got {url!r}")
    return str(parsed).rstrip("/")


def run_client(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Execute ``tokend client <action>``; the exit status."""
    try:
        url = store_key(args.url)
    except ValueError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        return 2
    path = tokens_path(env)
    store = FileTokenStore(path, key=url)
    try:
        if args.action == "login":
            username = args.username or input("username: ")
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass("password: ")
            me = asyncio.run(_login(url, store, username, password, args.dpop))
            print(json.dumps(me))
            key = f", DPoP key in {store.dpop_key_path}" if args.dpop else ""
            where = f"tokens in {path}{key}"
            print(f"logged in to {url} as {me.get('username')}; {where}", file=sys.stderr)
        elif args.action == "whoami":
            print(json.dumps(asyncio.run(_whoami(url, store))))
        else:
            was_logged_in = asyncio.run(_logout(url, store))
            print(f"logged out of {url}" if was_logged_in else f"not logged in to {url}")
    except LoginFailed as exc:
        print(f"tokend: login failed: {exc}", file=sys.stderr)
        return 1
    except LoginRequired as exc:
        print(f"tokend: {exc} ({url}); run: tokend client login --url {url}", file=sys.stderr)
        return 1
    except TokendClientError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        return 1
    return 0


async def _login(
    url: str, store: FileTokenStore, username: str, password: str, dpop: bool
) -> dict[str, Any]:
    async with TokenSession(url, store=store, dpop=dpop) as session:
        await session.login(username, password)
        return await session.me()


async def _whoami(url: str, store: FileTokenStore) -> dict[str, Any]:
    async with TokenSession(url, store=store, dpop=await _bound(url, store)) as session:
        return await session.me()


async def _logout(url: str, store: FileTokenStore) -> bool:
    if await store.load() is None:
        return False
    async with TokenSession(url, store=store, dpop=await _bound(url, store)) as session:
        await session.logout()
        return True


async def _bound(url: str, store: FileTokenStore) -> bool:
    """Whether the kept tokens are DPoP-bound (their key file must then be there)."""
    tokens = await store.load()
    if tokens is None or bound_jkt(tokens.access_token) is None:
        return False
    path = store.dpop_key_path
    if not path.exists():
        raise TokendClientError(
            f"the session at {url} is DPoP-bound but its key file {path} is missing;"
            f" run: tokend client login --dpop --url {url}"
        )
    return True
