#!/usr/bin/env python3
"""The pages' screenshots in docs/: ``.venv/bin/python scripts/screenshots.py``.

Starts ``tokend dev`` in a temporary directory (cookie mode, a private redis-server of its
own, a new SQLite database), registers a demo user with two more sessions (a phone and a
tablet), and with the system Chromium (playwright-core from tests/browser, installed by
scripts/test-setup.sh) writes

    docs/login.png      docs/account.png       English
    docs/login-ko.png   docs/account-ko.png    Korean (Accept-Language: ko)

The account page is the one the demo user lands on after logging in through the login
form. Korean text needs a Korean font: when fontconfig knows none, fonts-nanum is
installed with apt-get (as root).
"""

# A developer's tool run by hand: it runs the machine's node, fc-list and apt-get by name
# and opens only the http:// URL of the tokend it started.
# ruff: noqa: S603, S607, S310

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
TOKEND = Path(sys.executable).with_name("tokend")
USER, PASSWORD = "demo", "correct horse battery"
DEVICES = {
    "phone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "tablet": "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
}

SHOOT = r"""
import { chromium } from 'playwright-core';
const { tokend, docs, user, password } = JSON.parse(process.argv[1]);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  for (const [suffix, locale] of [['', 'en-US'], ['-ko', 'ko-KR']]) {
    const context = await browser.newContext({
      locale, viewport: { width: 960, height: 720 }, deviceScaleFactor: 1,
      extraHTTPHeaders: { 'Accept-Language': `${locale},${locale.slice(0, 2)};q=0.9` },
    });
    const page = await context.newPage();
    await page.goto(`${tokend}/login?return_to=/account`);
    await page.waitForSelector('form#login-form');
    await page.screenshot({ path: `${docs}/login${suffix}.png`, fullPage: true });
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', password);
    await Promise.all([
      page.waitForURL((url) => url.pathname === '/account'),
      page.click('form#login-form button[type=submit]'),
    ]);
    await page.waitForSelector('#sessions li[data-current="true"]');
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.screenshot({ path: `${docs}/account${suffix}.png`, fullPage: true });
    await context.close();
    console.log(`wrote docs/login${suffix}.png docs/account${suffix}.png`);
  }
} finally {
  await browser.close();
}
"""


def free_port() -> int:
    from service.devredis import free_port as port

    return port()


def korean_font() -> None:
    """fonts-nanum when fontconfig has no Korean font (the Korean pages would be boxes)."""
    if subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True).stdout.strip():
        return
    print("screenshots: no Korean font, installing fonts-nanum with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "fonts-nanum"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)


def http(method: str, url: str, body: dict[str, str], agent: str = "screenshots") -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "User-Agent": agent},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


@contextlib.contextmanager
def tokend_dev(directory: Path) -> Iterator[str]:
    """``tokend dev`` on a free port (its own redis-server: nothing answers at the Redis URL
    given); its base URL. Stopped, with its redis-server, on the way out."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    env.update(
        TOKEND_PORT=str(port),
        TOKEND_ISSUER=base,
        TOKEND_REFRESH_COOKIE="true",
        TOKEND_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        TOKEND_DATABASE_URL=f"sqlite+aiosqlite:///{directory / 'tokend.db'}",
    )
    log = (directory / "tokend.log").open("wb")
    proc = subprocess.Popen([str(TOKEND), "dev"], env=env, cwd=directory, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                sys.exit(
                    f"screenshots: tokend dev exited:\n{(directory / 'tokend.log').read_text()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp,
            ):
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit("screenshots: tokend dev did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    if (
        shutil.which("node") is None
        or not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()
    ):
        sys.exit("screenshots: needs node and tests/browser/node_modules (scripts/test-setup.sh)")
    korean_font()
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory(prefix="tokend-shots-") as tmp, tokend_dev(Path(tmp)) as base:
        credentials = {"username": USER, "password": PASSWORD}
        assert http("POST", f"{base}/auth/register", credentials) == 201
        for agent in DEVICES.values():
            assert http("POST", f"{base}/auth/login", credentials, agent) == 200
        config = {"tokend": base, "docs": str(docs), "user": USER, "password": PASSWORD}
        subprocess.run(
            ["node", "--input-type=module", "-e", SHOOT, json.dumps(config)],
            cwd=BROWSER_DIR,
            check=True,
            timeout=120,
        )


if __name__ == "__main__":
    main()
