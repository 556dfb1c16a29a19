"""Import hygiene: no cycles between tokend's modules, no reaching into another package's
private modules, workers free of the HTTP layer, and a client library whose API half loads
neither redis nor prometheus-client."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import tokend_client

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "workers")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (parsed in a fresh interpreter: see _parsed_imports)."""
    return _parsed_imports()[name]


@functools.cache
def _parsed_imports() -> dict[str, set[str]]:
    """The imports of every module, parsed by a child interpreter. CPython 3.11's ast
    raises SystemError ("AST constructor recursion depth mismatch") in a process where a
    C-level RecursionError was raised before (the JSON fuzz tests provoke them)."""
    code = (
        "import json, tests.test_imports as t; "
        "print(json.dumps({n: sorted(t._imports_here(n, p)) for n, p in t._modules().items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {name: set(targets) for name, targets in json.loads(out).items()}


def _imports_here(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at any depth of the file (a function's import too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imports(name, path) if target in modules and target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_module_graph_has_no_cycle() -> None:
    graph = _graph()
    assert graph.get("service.app"), "the graph was built"
    assert _cycles(graph) == []


def test_the_cycle_check_sees_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_workers_do_not_import_the_http_layer() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("workers"):
            bad = {
                t
                for t in targets
                if t in ("service.app", "service.cli") or t.startswith("service.http")
            }
            assert not bad, f"{name} imports {sorted(bad)}"


def test_no_private_module_of_another_package_is_imported() -> None:
    offenders = []
    for name, path in _modules().items():
        for target in _imports(name, path):
            top, _, rest = target.partition(".")
            if top in PACKAGES or not rest:
                continue
            if any(part.startswith("_") and part != "__init__" for part in rest.split(".")):
                offenders.append(f"{name} imports {target}")
    assert offenders == []


def test_the_api_half_of_the_client_loads_neither_redis_nor_prometheus() -> None:
    code = (
        "import sys\n"
        "import tokend_client\n"
        "from tokend_client import TokenSession, FileTokenStore, MemoryTokenStore, LoginFailed\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(tops & {'redis', 'prometheus_client'})\n"
        "assert not heavy, heavy\n"
        "from tokend_client import RevocationListener\n"
        "assert 'redis' in sys.modules and 'prometheus_client' not in sys.modules\n"
        "listener = RevocationListener('redis://127.0.0.1:1')\n"
        "assert 'prometheus_client' in sys.modules and listener.registry is not None\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_of_the_client_imports() -> None:
    code = (
        "import tokend_client\n"
        "for name in tokend_client.__all__:\n"
        "    exec(f'from tokend_client import {name}')\n"
        "namespace = {}\n"
        "exec('from tokend_client import *', namespace)\n"
        "missing = set(tokend_client.__all__) - set(namespace)\n"
        "assert not missing, missing\n"
        "assert set(tokend_client.__all__) <= set(dir(tokend_client))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert sorted(tokend_client.__all__) == sorted(set(tokend_client.__all__))
    try:
        tokend_client.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name is an AttributeError")
