"""tokend-client is a distribution of its own: a core that needs only PyJWT and redis, and
one extra per framework, none of them imported unless asked for."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
FRAMEWORKS = ("aiohttp", "starlette", "fastapi", "django", "flask", "rest_framework")

# A child interpreter in which the frameworks and prometheus-client are not installed:
# importing any of them fails as it would on a machine without them.
BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {(*FRAMEWORKS, "prometheus_client")!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, *args):
    return None if name.split(".")[0] in BLOCKED else _find(name, *args)
importlib.util.find_spec = find_spec
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_core_runs_without_any_framework_or_prometheus() -> None:
    code = BLOCKER + (
        "import asyncio, tokend_client\n"
        "from tokend_client import (Guard, Subscriber, SubscriberSettings, TokenVerifier,\n"
        "    RevocationListener, BackgroundListener, RedisTarget, has_scope)\n"
        "settings = SubscriberSettings.from_env({'TOKEND_REDIS_URL': 'redis://127.0.0.1:1'})\n"
        "sub = Subscriber(settings, threaded=True)\n"
        "assert sub.listener.registry is None\n"
        "answer = sub.guard.check_sync(['Basic x'])\n"
        "assert answer.status == 400 and answer.error == 'invalid_request', answer\n"
        "assert asyncio.run(sub.guard.check([])) is None\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r}))\n"
        "assert not loaded, loaded\n"
    )
    result = run(code)
    assert result.returncode == 0, result.stderr


def test_each_integration_imports_only_its_own_framework() -> None:
    for module, framework in (
        ("tokend_client.starlette", "starlette"),
        ("tokend_client.fastapi", "fastapi"),
        ("tokend_client.django", "django"),
        ("tokend_client.flask", "flask"),
    ):
        others = sorted(set(FRAMEWORKS) - {framework, "starlette", "rest_framework"})
        code = (
            f"import sys, {module}\n"
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({others!r}))\n"
            "assert not loaded, loaded\n"
        )
        result = run(code)
        assert result.returncode == 0, f"{module}: {result.stderr}"


def test_the_distributions_declare_the_split() -> None:
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert client["name"] == "tokend-client"
    names = sorted(dep.split("[")[0].split(">")[0].lower() for dep in client["dependencies"])
    assert names == ["pyjwt", "redis"]
    extras = client["optional-dependencies"]
    for extra in ("aiohttp", "starlette", "fastapi", "django", "flask"):
        assert any(dep.lower().startswith(extra) for dep in extras[extra]), extra
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = [dep for dep in server["dependencies"] if dep.startswith("tokend-client")]
    assert pinned == [f"tokend-client[aiohttp]=={client['version']}"]
    # and the installed metadata says the same
    assert metadata.version("tokend-client") == client["version"]
    assert any(r.startswith("tokend-client") for r in metadata.requires("tokend") or [])


def test_the_wheel_holds_the_library_and_nothing_of_the_server(tmp_path: Path) -> None:
    # built from a copy: setuptools writes build/ next to the sources
    source = tmp_path / "src"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tokend_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tokend_client/_guard.py" in names and "tokend_client/py.typed" in names
    tops = {name.split("/")[0] for name in names if not name.startswith("tokend_client-")}
    assert tops == {"tokend_client"}


def test_the_server_wheel_holds_the_pages_and_their_static_files(tmp_path: Path) -> None:
    """``make run`` and the Docker image run an installed tokend: /login, /account and
    /static/* need their templates, strings, scripts and styles inside the wheel."""
    root = CLIENT.parents[1]
    source = tmp_path / "src"
    shutil.copytree(
        root,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "node_modules", "*.egg-info", "__pycache__", "build", "clients"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tokend-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [
        path.relative_to(root).as_posix()
        for folder in ("service/static", "service/pages")
        for path in (root / folder).iterdir()
        if path.is_file() and path.suffix != ".pyc"
    ]
    assert len(shipped) > 8
    assert sorted(set(shipped) - names) == []
