"""The repository stands on its own: documents link only to files that exist in it, nothing
refers to a tracker's issue numbers or to files outside the repository, and the README's
test command does its own set-up."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# "issue" followed by a number, and a path that climbs out of the repository into the
# workspace; spelled so that this file does not match itself
ISSUE_NUMBER = re.compile(r"\bissues?\s+#?[0-9]+", re.IGNORECASE)
OUTSIDE = re.compile(re.escape("..") + r"/" + "shared")
# [text](target) and [text]: target
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    files = []
    for name in names:
        if not name or b"node_modules/" in name:
            continue
        path = ROOT / os.fsdecode(name)
        if path.is_file():
            files.append(path)
    return files


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def test_no_issue_numbers_and_no_paths_outside_the_repository() -> None:
    found = []
    for path in _tracked_text_files():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if ISSUE_NUMBER.search(line) or OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_in_the_repository(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)  # code is not linked
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor in the same document
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_the_link_check_sees_links(tmp_path: Path) -> None:
    sample = "see [the design](docs/design.md#tokens), [x](https://x.test) and [y](#y)\n"
    targets = [m.group(1) for m in LINK.finditer(sample)]
    assert targets == ["docs/design.md#tokens", "https://x.test", "#y"]
    word = "issue"  # spelled apart, so this file passes its own check
    assert ISSUE_NUMBER.search(f"as {word} 12 says") and ISSUE_NUMBER.search(f"{word.title()} #3")
    assert not ISSUE_NUMBER.search("a known issue with 3 workers")
    assert OUTSIDE.search("see " + ".." + "/shared/DESIGN.md")


def test_make_test_runs_the_set_up_script_before_pytest() -> None:
    """`make test` (the README's command, and CI's) runs scripts/test-setup.sh, then the
    checks, then pytest with the PostgreSQL URL the script detected."""
    plan = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "test"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    setup = next(i for i, line in enumerate(plan) if line.strip() == "scripts/test-setup.sh")
    pytest_line = next(i for i, line in enumerate(plan) if line.rstrip().endswith("bin/pytest"))
    assert setup < pytest_line
    assert ". ./.venv/test.env" in plan[pytest_line]
    installs = [line for line in plan if "pip install" in line]
    assert installs and all("-qq" in line and "PYTHONWARNINGS=ignore" in line for line in installs)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci and "apt-get" not in ci and "npm" not in ci


def test_the_set_up_script_is_idempotent_and_reports_the_postgres_url(tmp_path: Path) -> None:
    """Run twice (everything is already there when the suite runs): it succeeds without
    stdin, installs nothing, and writes the URL pytest gets."""
    env_file = tmp_path / "test.env"
    env = {**os.environ, "TOKEND_TEST_ENV_FILE": str(env_file)}
    for _ in range(2):
        run = subprocess.run(
            [str(ROOT / "scripts" / "test-setup.sh")],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
    assert "installing" not in run.stdout and "npm ci" not in run.stdout, run.stdout
    name, _, url = env_file.read_text().strip().partition("=")
    assert name == "TOKEND_TEST_POSTGRES_URL"
    if "TOKEND_TEST_POSTGRES_URL" in os.environ:  # given (make test passes the detected one)
        assert url == os.environ["TOKEND_TEST_POSTGRES_URL"]
    else:
        assert re.fullmatch(r"postgresql\+asyncpg://\w+@127\.0\.0\.1:5432/test", url), url
