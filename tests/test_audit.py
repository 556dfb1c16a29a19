"""The dependency audit (.ci/audit.py, `make audit`) and the PyJWT floor.

The audit itself needs a vulnerability database on the network; these tests feed it
pip-audit answers instead and check what it makes of them.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The highest PyJWT release that fixed a published CVE (CVE-2026-48522..48526).
PYJWT_FLOOR = (2, 13, 0)


def _audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tokend_ci_audit", ROOT / ".ci" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _answers(monkeypatch: pytest.MonkeyPatch, audit: ModuleType, **by_service: Any) -> list[str]:
    asked: list[str] = []

    def run(service: str) -> tuple[list[dict[str, Any]] | None, str]:
        asked.append(service)
        return by_service[service]

    monkeypatch.setattr(audit, "run", run)
    monkeypatch.setattr(audit, "reachable", lambda url: "")
    return asked


PYJWT_VULN = {
    "name": "pyjwt",
    "version": "2.3.0",
    "vulns": [{"id": "PYSEC-2022-202", "aliases": ["CVE-2022-29217"], "fix_versions": ["2.4.0"]}],
}
CLEAN = [{"name": "aiohttp", "version": "3.14.5", "vulns": []}]
EDITABLE = {"name": "tokend", "skip_reason": "distribution marked as editable"}


def test_a_known_vulnerability_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _audit()
    _answers(monkeypatch, audit, pypi=([*CLEAN, PYJWT_VULN, EDITABLE], ""))
    assert audit.main() == 1
    out = capsys.readouterr().out
    assert "VULNERABLE pyjwt 2.3.0: PYSEC-2022-202, CVE-2022-29217 (fixed in 2.4.0)" in out


def test_a_clean_environment_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _audit()
    _answers(monkeypatch, audit, pypi=([*CLEAN, EDITABLE], ""))
    assert audit.main() == 0
    assert "1 packages audited against pypi: no known vulnerabilities" in capsys.readouterr().out


def test_an_unreachable_database_warns_and_tries_the_next(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _audit()
    not_found = {"name": "aiohttp", "skip_reason": "Dependency not found on PyPI"}
    asked = _answers(
        monkeypatch,
        audit,
        pypi=([not_found, EDITABLE], ""),
        osv=(None, "pip-audit (osv) failed: ConnectionError"),
    )
    assert audit.main() == 0
    assert asked == ["pypi", "osv"]
    out = capsys.readouterr().out
    assert "dependency audit NOT DONE" in out and "ConnectionError" in out
    monkeypatch.setenv("TOKEND_AUDIT_STRICT", "1")
    assert audit.main() == 2


def test_the_second_database_still_finds_a_vulnerability(monkeypatch: pytest.MonkeyPatch) -> None:
    audit = _audit()
    _answers(monkeypatch, audit, pypi=(None, "offline"), osv=([PYJWT_VULN], ""))
    assert audit.main() == 1


def test_a_database_that_does_not_answer_is_not_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _audit()
    asked = _answers(monkeypatch, audit, osv=([*CLEAN], ""))
    monkeypatch.setattr(audit, "reachable", lambda url: "down" if "pypi.org" in url else "")
    assert audit.main() == 0
    assert asked == ["osv"]
    assert "audited against osv" in capsys.readouterr().out


def test_pyjwt_is_pinned_past_its_known_cves() -> None:
    installed = tuple(int(part) for part in re.findall(r"\d+", version("PyJWT"))[:3])
    assert installed >= PYJWT_FLOOR
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [d for d in project["dependencies"] if d.lower().startswith("pyjwt")]
    floor = re.search(r">=\s*([\d.]+)", requirement)
    assert floor is not None, requirement
    assert tuple(int(p) for p in floor.group(1).split(".")) >= PYJWT_FLOOR, requirement
