"""Dependency audit: pip-audit over the installed environment (what `make install` put in
.venv from pyproject.toml, the test extras included), tokend itself skipped.

Exit 1 when a package has a known vulnerability. When the vulnerability database cannot be
reached (no network, a PyPI mirror without the per-release JSON API) the audit is not done:
say so loudly and exit 0, unless TOKEND_AUDIT_STRICT=1 (then exit 2). `make audit` runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

# pip-audit's services in order (PyPI's JSON API, then OSV), each with a URL that tells in
# seconds whether it can be reached at all: without it, a network that drops packets
# would cost pip-audit its timeout once per package.
SERVICES = {"pypi": "https://pypi.org/pypi/pip/json", "osv": "https://api.osv.dev/v1/query"}
TIMEOUT = 300
PROBE_TIMEOUT = 5.0


def say(message: str) -> None:
    print(f"audit: {message}", flush=True)


def reachable(url: str) -> str:
    """Empty when ``url`` answers at all (any HTTP status), else why not."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT):  # noqa: S310 (fixed https URLs)
            return ""
    except urllib.error.HTTPError:
        return ""
    except (OSError, ValueError) as exc:
        return f"{url} unreachable ({getattr(exc, 'reason', exc)})"


def run(service: str) -> tuple[list[dict[str, Any]] | None, str]:
    """The per-package results of one pip-audit run, or None and why it produced none."""
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--vulnerability-service",
        service,
        "--skip-editable",
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--aliases",
        "on",
        "--desc",
        "off",
        "--timeout",
        "15",
    ]
    try:
        # A fixed argv: this interpreter and pip-audit's own options.
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)  # noqa: S603
    except subprocess.TimeoutExpired:
        return None, f"pip-audit ({service}) did not finish within {TIMEOUT}s"
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return None, f"pip-audit ({service}) failed: {lines[-1] if lines else proc.returncode}"
    return list(report.get("dependencies", [])), ""


def main() -> int:
    strict = os.environ.get("TOKEND_AUDIT_STRICT") == "1"
    reasons: list[str] = []
    for service, probe in SERVICES.items():
        unreachable = reachable(probe)
        if unreachable:
            reasons.append(f"{service}: {unreachable}")
            continue
        deps, why = run(service)
        if deps is None:
            reasons.append(why)
            continue
        packages = [d for d in deps if "editable" not in d.get("skip_reason", "")]
        skipped = [d for d in packages if "skip_reason" in d]
        audited = len(packages) - len(skipped)
        vulnerable = [d for d in packages if d.get("vulns")]
        if vulnerable:
            for dep in vulnerable:
                for vuln in dep["vulns"]:
                    ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
                    fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix released"
                    say(f"VULNERABLE {dep['name']} {dep['version']}: {ids} (fixed in {fixed})")
            say(f"{len(vulnerable)} vulnerable package(s): upgrade them in pyproject.toml")
            return 1
        if audited == 0:
            reasons.append(f"{service}: none of {len(packages)} packages could be looked up")
            continue
        if skipped:
            names = ", ".join(sorted(d["name"] for d in skipped))
            say(f"WARNING: {len(skipped)} package(s) not audited ({service}): {names}")
        say(f"{audited} packages audited against {service}: no known vulnerabilities")
        return 0
    say("WARNING: dependency audit NOT DONE: no vulnerability database could be reached")
    for reason in reasons:
        say(f"  {reason}")
    return 2 if strict else 0


if __name__ == "__main__":
    sys.exit(main())
