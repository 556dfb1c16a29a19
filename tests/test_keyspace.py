"""The Redis contract has one source: key names come from service/keyspace.py (the
client's from tokend_client/partitions.py), scripts take every key through KEYS, and the
event schema is one definition on both sides."""

from __future__ import annotations

import re
import subprocess
import zlib
from pathlib import Path

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service import events
from service.keyspace import Keyspace
from tokend_client import _events as client_events
from tokend_client.partitions import ClientKeys, partition_of, partition_tags

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
    bound to one (or to such a local), or a parameter of a helper that every caller
    passes such a key."""
    source = re.sub(r"--[^\n]*", "", source)
    bound: set[str] = set()
    for m in re.finditer(r"local\s+([\w\s,]+?)\s*=\s*([^\n]+)", source):
        names = [n.strip() for n in m.group(1).split(",")]
        values = [v.strip() for v in m.group(2).split(",")]
        for name, value in zip(names, values, strict=False):
            if re.fullmatch(r"KEYS\[[^\]]+\]", value) or value in bound:
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
    local A, B = KEYS[4], ARGV[3]
    local alias, other = A, B
    redis.call('SET', alias, 1)
    redis.call('SET', other, 1)
    """
    assert sorted(key_violations(built)) == [
        "DEL prefix .. ':s:' .. sid",
        "HGET skey",
        "SET other",
        "helper(... ARGV[2] ...)",
    ]


def test_every_script_header_documents_its_keys_and_argv() -> None:
    for script in _scripts():
        head = script.read_text().split("\n\n")[0]
        assert "-- KEYS: (common head: epoch gen events fence)" in head, script.name
        assert "-- ARGV: (known_epoch known_gen retention)" in head, script.name


def test_client_key_names_are_the_servers() -> None:
    for prefix in ("tokend", "t-1:x"):
        for count in (1, 5, 16):
            server, client = Keyspace(prefix, count), ClientKeys(prefix)
            assert client.layout == server.layout
            parts = client.partitions(count)
            assert len(parts) == len(server.all) == count
            for theirs, ours in zip(server.all, parts, strict=True):
                assert (theirs.index, theirs.tag) == (ours.index, ours.tag)
                for name in ("events", "epoch", "gen", "fence"):
                    assert getattr(ours, name) == getattr(theirs, name), (count, name)
            # the partition a user lives in is the same on both sides
            for uid in ("u1", "0b0e3c1e-7d4e-4c5e-9f00-000000000001", ""):
                assert server.of(uid).index == partition_of(uid, count)


def test_a_user_lives_in_the_crc32_partition() -> None:
    for count in (1, 7, 16):
        for uid in ("alice", "bob", "00000000-0000-0000-0000-000000000042"):
            assert partition_of(uid, count) == zlib.crc32(uid.encode()) % count
            assert Keyspace("p", count).of(uid) == Keyspace("p", count).partition(
                zlib.crc32(uid.encode()) % count
            )


def test_every_key_of_a_user_and_its_partition_shares_one_slot() -> None:
    # Every script runs in one Redis Cluster slot: the user's keys, the expiry index and
    # the head (epoch, gen, events, fence) of the user's partition.
    keys = Keyspace("tokend", 16)
    for uid in ("alice", "bob", "carol"):
        p = keys.of(uid)
        names = [
            p.session("sid-1"),
            p.deny_session("sid-1"),
            p.user_index(uid),
            p.user_mark(uid),
            p.deny_token("jti-1"),
            p.expiry,
            *p.head,
        ]
        assert len({key_slot(n.encode()) for n in names}) == 1, names
        assert p.head == [p.epoch, p.gen, p.events, p.fence]
        assert p.expiry == f"tokend:{{{p.tag}}}:exp"  # one expiry index per partition


def test_partition_i_lands_in_the_ith_slot_range() -> None:
    for count in (1, 3, 16):
        for i, tag in enumerate(partition_tags(count)):
            low = i * REDIS_CLUSTER_HASH_SLOTS // count
            high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
            assert low <= key_slot(Keyspace("x", count).partition(i).events.encode()) < high
            assert tag.startswith(f"p{i}.")


def test_the_client_event_schema_is_the_servers() -> None:
    assert client_events.EVENTS == events.EVENTS
    assert client_events.VERSION == events.VERSION
    assert set(events.REASONS) == set(events.EVENTS)


# A hand-built key name: an f-string or concatenation that starts with a prefix
# variable followed by ":" (f"{prefix}:s:...", prefix + ":events"), a bare
# ":events"/":partitions"/":du:" literal, or a partition's hash tag spelled out
# ("t:{p3.0}:events", f":{{{tag}}}:gen").
_HAND_BUILT = re.compile(
    r"""f["'][^"'\n]*\{[\w.\[\]"']*prefix[\w.\[\]"']*\}:"""
    r"""|prefix\s*\+\s*["']:"""
    r"""|["'](?::events|:revocations|:partitions|:epoch|:gen|:fence|:exp)["']"""
    r"""|["'][^"'\n]*:(?:du|ds|dj|exp|s|u):\{?["']"""
    r"""|["'][^"'\n]*\{p\d+\.\d+\}"""
    r"""|["'][^"'\n]*:\{\{\{[\w.]*tag\w*\}\}\}:"""
)
_ALLOWED = {
    "service/keyspace.py",
    "clients/python/tokend_client/partitions.py",
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
        'layout = prefix + ":partitions"',
        'await redis.get(f"{prefix}:{{{tag}}}:epoch")',
        'stream = f":{{{part.tag}}}:events"',
        'key = "tokend:{p3.0}:events"',
        'key = "t:{p0.12}:s:" + sid',
    ):
        assert _HAND_BUILT.search(line), line
    for line in (
        "keys = Keyspace(prefix).of(uid).events",
        "stream = Keyspace(prefix, 16).partition(3).events",
        "layout = ClientKeys(prefix).layout",
    ):
        assert not _HAND_BUILT.search(line), line
