"""Running a Node.js script of the suite (a browser scenario, an interop client) and
reading the one ``{"result": ...}`` line it prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any


async def run_node(script: Path, config: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``node <script> <config JSON>`` in the script's folder; its result, with
    ``_seconds`` (wall time) and ``_output`` (everything it printed) added.

    A script that exits non-zero (a failed node:assert), prints no result line or runs
    past ``timeout`` seconds (its whole process group is killed) fails the test with its
    output."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        json.dumps(config),
        cwd=script.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = await proc.communicate()
        raise AssertionError(
            f"{script.name} still running after {timeout}s:\n{out.decode(errors='replace')[-8000:]}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # a Chromium left behind
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}:\n{text[-8000:]}"
    results = [line for line in text.splitlines() if line.startswith('{"result":')]
    assert len(results) == 1, f"{script.name}: no result line:\n{text[-8000:]}"
    result: dict[str, Any] = json.loads(results[0])["result"]
    result["_seconds"] = round(time.monotonic() - started, 1)
    result["_output"] = text
    return result
