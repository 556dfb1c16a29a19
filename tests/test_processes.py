"""`tokend serve --processes N`: a supervisor and N API processes on one port, run as a
user runs them (real processes on loopback, the test Redis under a prefix of the test's own).

Which process answered a connection is read from the kernel: the connection's server-side
socket in /proc/net/tcp, and the API process holding that socket in /proc/<pid>/fd. To
have a connection answered by one chosen process, the others are stopped (SIGSTOP) while
it connects: they share one accept queue (service/supervisor.py), so the one left running
accepts it. Nothing identifying a process is added to tokend's answers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import KEY_RELOAD_INTERVAL
from service.devredis import free_port
from tests.support import FAST_ARGON2, PASSWORD, REDIS_URL, TEST_KEK, unverified

TOKEND = str(Path(sys.executable).with_name("tokend"))
START_TIMEOUT = 30.0


def serve_env(redis_prefix: str, database_url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    return {
        **base,
        **FAST_ARGON2,
        "TOKEND_REDIS_URL": REDIS_URL,
        "TOKEND_REDIS_PREFIX": redis_prefix,
        "TOKEND_DATABASE_URL": database_url,
        "TOKEND_KEY_ENCRYPTION_KEY": TEST_KEK,
        "TOKEND_PORT": str(free_port()),
        **extra,
    }


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie runs no more


class Server:
    """A ``tokend serve`` subprocess, its log, and its API processes."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        self.port = int(env["TOKEND_PORT"])
        self.log_path = tmp_path / f"serve-{self.port}.log"
        self.started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [TOKEND, "serve", *args], env=env, cwd=tmp_path, stdout=log, stderr=log
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def listening(self) -> set[int]:
        """The API processes that have logged that they listen."""
        return {int(p) for p in re.findall(r"tokend listening on \S+, pid (\d+)", self.log)}

    def wait_ready(self, n: int) -> list[int]:
        """Wait until ``n`` API processes run and listen; their pids."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"tokend serve exited:\n{self.log}"
            pids = [p for p in children(self.proc.pid) if alive(p)]
            if len(pids) == n and set(pids) <= self.listening():
                return pids
            assert time.monotonic() < deadline, f"{n} API processes did not come up:\n{self.log}"
            time.sleep(0.05)

    def connect_to(self, pid: int) -> http.client.HTTPConnection:
        """A keep-alive connection that the API process ``pid`` accepted and answered."""
        others = [p for p in children(self.proc.pid) if p != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            assert call(conn, "GET", "/healthz")[0] == 200
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
        conn.auto_open = 0  # never reconnect silently (to whichever process accepts)
        assert self.answered_by(conn) == pid
        return conn

    def answered_by(self, conn: http.client.HTTPConnection) -> int:
        """The API process holding the server side of ``conn``."""
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            if local == self.port and remote == client_port:
                inodes.add(f"socket:[{fields[9]}]")
        owners = []
        for pid in children(self.proc.pid):
            with contextlib.suppress(FileNotFoundError):
                fds = Path(f"/proc/{pid}/fd").iterdir()
                if any(_readlink(fd) in inodes for fd in fds):
                    owners.append(pid)
        assert len(owners) == 1, (owners, inodes)
        return owners[0]

    def stop(self) -> None:
        """Whatever happened: no process of this server is left running."""
        pids = children(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def serving(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    server = Server(tmp_path, env, *args)
    try:
        yield server
    finally:
        server.stop()


def call(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    is_json = resp.getheader("Content-Type", "").startswith("application/json")
    return resp.status, json.loads(raw) if is_json else raw


def register_and_login(conn: http.client.HTTPConnection, username: str) -> dict[str, Any]:
    user = {"username": username, "password": PASSWORD}
    assert call(conn, "POST", "/auth/register", user)[0] == 201
    return login(conn, username)


def login(conn: http.client.HTTPConnection, username: str) -> dict[str, Any]:
    status, tokens = call(conn, "POST", "/auth/login", {"username": username, "password": PASSWORD})
    assert status == 200, tokens
    return dict(tokens)


def kid(token: str) -> str:
    return str(unverified(token)[0]["kid"])


# --- tests ---------------------------------------------------------------------------------


def test_two_processes_answer_and_share_sessions_through_redis(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str
) -> None:
    # The flag wins over the variable: 2 processes, not 3.
    env = serve_env(redis_prefix, migrated_sqlite, TOKEND_PROCESSES="3")
    with serving(tmp_path, env, "--processes", "2") as server:
        pids = server.wait_ready(2)
        assert server.proc.pid not in pids and len(set(pids)) == 2
        on_a, on_b = server.connect_to(pids[0]), server.connect_to(pids[1])

        tokens = register_and_login(on_a, "alice")
        status, body = call(on_b, "POST", "/auth/refresh", token=tokens["refresh_token"])
        assert status == 200, body
        status, me = call(on_a, "GET", "/auth/me", token=body["access_token"])
        assert status == 200 and me["sub"] == unverified(tokens["access_token"])[1]["sub"]
        # The old refresh token, replayed at the other process after the grace: still the
        # same session state (here: within the grace, the same successor).
        status, again = call(on_a, "POST", "/auth/refresh", token=tokens["refresh_token"])
        assert status == 200 and again["refresh_token"] == body["refresh_token"]

        # Both answers came over the connections each process accepted, kept alive.
        assert (server.answered_by(on_a), server.answered_by(on_b)) == (pids[0], pids[1])
        for pid in pids:
            assert f"API process {pids.index(pid)} started, pid {pid}" in server.log


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str
) -> None:
    # A login that hashes for about a second (argon2id, 64 MiB, 16 passes): in flight when
    # SIGTERM comes. (Not a body still arriving: once aiohttp shuts down, it drops the
    # bytes that connections receive, so such a request would never finish.)
    slow = {"TOKEND_ARGON2_TIME_COST": "16", "TOKEND_ARGON2_MEMORY_KIB": "65536"}
    env = serve_env(redis_prefix, migrated_sqlite, **slow)
    with serving(tmp_path, env, "--processes", "2") as server:
        pids = server.wait_ready(2)
        conn = server.connect_to(pids[1])
        body = json.dumps({"username": "nobody", "password": PASSWORD})
        conn.request("POST", "/auth/login", body, {"Content-Type": "application/json"})
        time.sleep(0.3)
        assert conn.sock is not None
        assert select.select([conn.sock], [], [], 0)[0] == []  # no answer yet
        server.proc.send_signal(signal.SIGTERM)
        resp = conn.getresponse()
        assert resp.status == 401  # the dummy hash was verified to its end: the answer
        assert json.loads(resp.read())["error"]

        assert server.proc.wait(timeout=20) == 0, server.log
        assert not any(alive(pid) for pid in pids)
        for slot, pid in enumerate(pids):
            assert f"API process {slot}, pid {pid}, exited with code 0" in server.log
        assert "Traceback" not in server.log, server.log
        with pytest.raises(ConnectionRefusedError):
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=5).connect()


def test_a_killed_process_is_restarted_and_the_port_keeps_answering(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str
) -> None:
    with serving(tmp_path, serve_env(redis_prefix, migrated_sqlite), "--processes", "2") as server:
        pids = server.wait_ready(2)
        os.kill(pids[0], signal.SIGKILL)
        # Every new connection meanwhile is answered (the survivor accepts from the one
        # queue), while the replacement starts.
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            assert call(conn, "GET", "/healthz")[0] == 200
            conn.close()
        now = server.wait_ready(2)
        (new,) = set(now) - set(pids)
        assert pids[1] in now
        assert f"API process 0, pid {pids[0]}, exited with signal SIGKILL" in server.log
        assert f"API process 0 started, pid {new}" in server.log
        assert call(server.connect_to(new), "GET", "/healthz")[0] == 200
        assert server.proc.poll() is None


def test_processes_that_keep_dying_stop_the_supervisor(tmp_path: Path, redis_prefix: str) -> None:
    # Nothing answers at the database: every API process exits at start-up.
    nowhere = f"postgresql+asyncpg://tokend@127.0.0.1:{free_port()}/tokend"
    with serving(tmp_path, serve_env(redis_prefix, nowhere), "--processes", "2") as server:
        started = time.monotonic()
        assert server.proc.wait(timeout=30) == 1
        assert time.monotonic() - started < 15  # about 4 s of backoff in all
        log = server.log
        assert len(re.findall(r"API process \d started", log)) == 5, log
        assert len(re.findall(r"exited with code 2", log)) == 5, log
        assert "5 API process exits within 60 s; giving up" in log
        assert not any(alive(p) for p in map(int, re.findall(r"started, pid (\d+)", log)))


def test_every_process_signs_with_the_rotated_key(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str
) -> None:
    env = serve_env(
        redis_prefix, migrated_sqlite, TOKEND_PROCESSES="2", TOKEND_KEY_PUBLISH_DELAY="0"
    )
    with serving(tmp_path, env) as server:
        pids = server.wait_ready(2)
        conns = [server.connect_to(pid) for pid in pids]
        old = {kid(register_and_login(conns[0], "carol")["access_token"])}
        old.add(kid(login(conns[1], "carol")["access_token"]))
        assert len(old) == 1

        done = subprocess.run(
            [TOKEND, "keys", "rotate"], env=env, cwd=tmp_path, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rotated"] is True
        # Each process reloads on key.rotated: its JWKS gains the new key within seconds.
        deadline = time.monotonic() + 10
        for conn in conns:
            while len(call(conn, "GET", "/.well-known/jwks.json")[1]["keys"]) != 2:
                assert time.monotonic() < deadline, f"a process kept the old keys:\n{server.log}"
                time.sleep(0.05)
        # ...well before the periodic reload could have done it.
        assert time.monotonic() - server.started < KEY_RELOAD_INTERVAL
        new = {kid(login(conn, "carol")["access_token"]) for conn in conns}
        assert len(new) == 1 and new != old
        jwks = call(conns[0], "GET", "/.well-known/jwks.json")[1]
        assert new <= {k["kid"] for k in jwks["keys"]}
        assert server.log.count("signing keys reloaded after key.rotated") == 2


def test_one_process_is_served_without_a_supervisor(
    tmp_path: Path, redis_prefix: str, migrated_sqlite: str
) -> None:
    env = serve_env(redis_prefix, migrated_sqlite, TOKEND_PROCESSES="4")
    with serving(tmp_path, env, "--processes", "1") as server:
        deadline = time.monotonic() + START_TIMEOUT
        while "tokend listening on" not in server.log:
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        assert call(conn, "GET", "/healthz")[0] == 200
        assert children(server.proc.pid) == []
        assert "supervisor" not in server.log
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_processes_values_stop_in_a_clear_line(tmp_path: Path, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
    done = subprocess.run(
        [TOKEND, "serve", "--processes", value], env=env, cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "Traceback" not in err
    expected = "expected an integer" if value == "x" else "must be a positive integer"
    assert f"argument --processes: {expected}, got '{value}'" in err, err

    done = subprocess.run(
        [TOKEND, "serve"], env={**env, "TOKEND_PROCESSES": value}, cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        f"tokend: TOKEND_PROCESSES: {expected}, got '{value}'"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing was started or created
