"""The Redis contract has one source: key names come from service/keyspace.py (the
client's from tokend_client/_keys.py), scripts take every key through KEYS, and the
event schema is one definition on both sides."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service import events
from service.keyspace import EXPIRY_SHARDS, Keyspace, expiry_shard
from tokend_client import _events as client_events
from tokend_client._keys import ClientKeys

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "service" / "lua"

# Commands whose arguments include no key.
_KEYLESS = {"TIME"}


def _args(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of a call whose "(" is at ``start``."""
    depth, args, cur, i = 0, [], "", start
    while True:
        ch = text[i]
        if ch in "([{":
            depth += 1
            if depth == 1:
                i += 1
                continue
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                args.append(cur.strip())
                return args, i
        elif ch == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
            i += 1
            continue
        cur += ch
        i += 1


def key_violations(source: str) -> list[str]:
    """Every redis.call whose key is not taken from KEYS: a literal KEYS[...], a local
    bound to one, or a parameter of a helper that every caller passes such a key."""
    source = re.sub(r"--[^\n]*", "", source)
    bound = set()
    for m in re.finditer(r"local\s+([\w\s,]+?)\s*=\s*([^\n]+)", source):
        names = [n.strip() for n in m.group(1).split(",")]
        values = [v.strip() for v in m.group(2).split(",")]
        for name, value in zip(names, values, strict=False):
            if re.fullmatch(r"KEYS\[[^\]]+\]", value):
                bound.add(name)
    functions = {
        m.group(1): ([p.strip() for p in m.group(2).split(",") if p.strip()], m.start())
        for m in re.finditer(r"function\s+(\w+)\s*\(([^)]*)\)", source)
    }

    def enclosing(pos: int) -> str | None:
        before = [(start, name) for name, (_, start) in functions.items() if start < pos]
        return max(before)[1] if before else None

    def is_key(expr: str, pos: int, needs: set[tuple[str, int]]) -> bool:
        if re.fullmatch(r"KEYS\[[^\]]+\]", expr) or expr in bound:
            return True
        fn = enclosing(pos)
        if fn is not None and expr in functions[fn][0]:
            needs.add((fn, functions[fn][0].index(expr)))
            return True
        return False

    problems: list[str] = []
    needs: set[tuple[str, int]] = set()
    for m in re.finditer(r"redis\.call\s*\(", source):
        args, _ = _args(source, m.end() - 1)
        command = args[0].strip("'\"").upper()
        if command in _KEYLESS or len(args) < 2:
            continue
        if not is_key(args[1], m.start(), needs):
            problems.append(f"{command} {args[1]}")
    checked: set[tuple[str, int]] = set()
    while needs - checked:
        fn, index = (needs - checked).pop()
        checked.add((fn, index))
        for m in re.finditer(rf"(?<![\w.]){fn}\s*\(", source):
            if source[max(0, m.start() - 9) : m.start()].strip().endswith("function"):
                continue
            args, _ = _args(source, m.end() - 1)
            if index < len(args) and not is_key(args[index], m.start(), needs):
                problems.append(f"{fn}(... {args[index]} ...)")
    return problems


def _scripts() -> list[Path]:
    return sorted(p for p in LUA.glob("*.lua") if p.name != "common.lua")


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.name)
def test_every_key_a_script_touches_comes_through_keys(script: Path) -> None:
    source = (LUA / "common.lua").read_text() + "\n" + script.read_text()
    assert key_violations(source) == []


def test_the_key_check_catches_keys_built_inside_a_script() -> None:
    built = """
    local function drop(prefix, sid) redis.call('DEL', prefix .. ':s:' .. sid) end
    local skey = ARGV[1] .. ':s:'
    redis.call('HGET', skey, 'uid')
    redis.call('GET', KEYS[1])
    local function helper(key) return redis.call('GET', key) end
    helper(ARGV[2])
    drop(ARGV[1], 'x')
    """
    assert sorted(key_violations(built)) == [
        "DEL prefix .. ':s:' .. sid",
        "HGET skey",
        "helper(... ARGV[2] ...)",
    ]


def test_every_script_header_documents_its_keys_and_argv() -> None:
    for script in _scripts():
        head = script.read_text().split("\n\n")[0]
        assert "-- KEYS: (common head: epoch gen events channel)" in head, script.name
        assert "-- ARGV: (known_epoch known_gen retention)" in head, script.name


def test_client_key_names_are_the_servers() -> None:
    for prefix in ("tokend", "t-1:x"):
        server, client = Keyspace(prefix), ClientKeys(prefix)
        for name in ("events", "channel", "epoch", "gen", "fence"):
            assert getattr(client, name) == getattr(server, name), name


def test_expiry_shard_matches_the_lua_byte_sum() -> None:
    # common.lua used to compute it; the sum of the id's bytes modulo the shard count
    assert expiry_shard("") == 0
    assert expiry_shard("abc") == (97 + 98 + 99) % EXPIRY_SHARDS
    assert Keyspace("p").expiry_of("abc") == f"p:exp:{(97 + 98 + 99) % EXPIRY_SHARDS}"


def test_the_client_event_schema_is_the_servers() -> None:
    assert client_events.EVENTS == events.EVENTS
    assert client_events.VERSION == events.VERSION
    assert set(events.REASONS) == set(events.EVENTS)


# A hand-built key name: an f-string or concatenation that starts with a prefix
# variable followed by ":" (f"{prefix}:s:...", prefix + ":events") or a bare
# ":events"/":revocations"/":du:" literal.
_HAND_BUILT = re.compile(
    r"""f["'][^"'\n]*\{[\w.\[\]"']*prefix[\w.\[\]"']*\}:"""
    r"""|prefix\s*\+\s*["']:"""
    r"""|["'](?::events|:revocations|:epoch|:gen|:fence)["']"""
    r"""|["'][^"'\n]*:(?:du|ds|dj|exp|s|u):\{?["']"""
)
_ALLOWED = {
    "service/keyspace.py",
    "tokend_client/_keys.py",
    "tests/test_keyspace.py",
    # the bare contender's own one-key layout, not tokend's
    "bench/minimal_refresh.py",
}


def hand_built_key_names() -> list[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for name in files:
        if name.split("/")[0] not in {"service", "workers", "tokend_client", "tests", "bench"}:
            continue
        if name in _ALLOWED or not (ROOT / name).exists():
            continue
        for lineno, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if _HAND_BUILT.search(line):
                found.append(f"{name}:{lineno}: {line.strip()}")
    return found


def test_no_key_name_is_built_by_hand() -> None:
    assert hand_built_key_names() == []


def test_the_hand_built_check_sees_the_usual_spellings() -> None:
    for line in (
        'key = f"{prefix}:s:{{{sid}}}"',
        'await redis.xlen(f"{settings.redis_prefix}:events")',
        'f"{self.prefix}:oidc:state:{digest}"',
        'stream = prefix + ":events"',
        'name = ":revocations"',
    ):
        assert _HAND_BUILT.search(line), line
    assert not _HAND_BUILT.search("keys = Keyspace(prefix).events")
