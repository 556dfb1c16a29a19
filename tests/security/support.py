"""Tools of the security suite: forged tokens, an outbound-activity sentry, real servers.

Nothing here is a test; the modules beside it use these helpers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jwt

from service.devredis import free_port
from service.http.appkeys import CLOCK, KEYRING
from service.keys import SigningKey
from tests.helpers import PrivateRedis

# --- tokens -------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand, so PyJWT's own refusals cannot stop the attacker's token."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def server_key(client: Any) -> SigningKey:
    """The key tokend signs access tokens with right now."""
    app = client.server.app
    key: SigningKey = app[KEYRING].signing_key(app[CLOCK]())
    return key


def sign_like_server(client: Any, claims: dict[str, Any], **headers: Any) -> str:
    """A token signed with tokend's real key, with whatever header and claims we like."""
    key = server_key(client)
    header = {"typ": "at+jwt", "kid": key.kid, **headers}
    return jwt.encode(claims, key.private, algorithm=key.alg, headers=header)


def sign_raw(client: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Hand-built, signed with tokend's real key: for headers PyJWT refuses to write."""
    key = server_key(client)
    algorithm = jwt.get_algorithm_by_name(key.alg)
    return forge({"alg": key.alg, **header}, claims, lambda data: algorithm.sign(data, key.private))


async def me(client: Any, token: str) -> tuple[int, dict[str, Any], Any]:
    resp = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers


async def refresh(client: Any, token: str) -> tuple[int, dict[str, Any], Any]:
    resp = await client.post("/auth/refresh", headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json(), resp.headers


def assert_invalid_token(status: int, body: dict[str, Any], headers: Any, token: str) -> None:
    """401 invalid_token per RFC 6750, and no part of the token echoed."""
    assert status == 401, body
    assert body["error"] == "invalid_token", body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    text = json.dumps(body) + headers["WWW-Authenticate"]
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in text


async def subscriber_rejects(verifier: Any, token: str) -> str:
    """The subscriber library (tokend_client.TokenVerifier) refuses the token; why."""
    from tokend_client import InvalidToken

    try:
        await verifier.verify(token)
    except InvalidToken as exc:
        return exc.description
    raise AssertionError("the subscriber library accepted the token")


# --- the outbound-activity sentry ------------------------------------------------------------

_RECORDING: list[tuple[str, tuple[Any, ...]]] | None = None
_WATCHED = frozenset({"socket.connect", "open", "subprocess.Popen", "os.system", "os.exec"})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    recording = _RECORDING
    if recording is not None and (event in _WATCHED or event.startswith("os.posix_spawn")):
        recording.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside ``sentry``


class Activity:
    """What the process did while a sentry watched: connections, file opens, processes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def connections(self, allowed_ports: set[int]) -> list[Any]:
        """Socket connects to anything but the allowed local ports."""
        found = []
        for event, args in self.events:
            if event != "socket.connect":
                continue
            address = args[1]
            if (
                isinstance(address, tuple)
                and address[0] in ("127.0.0.1", "::1", "localhost")
                and address[1] in allowed_ports
            ):
                continue
            found.append(address)
        return found

    def opened(self, fragment: str) -> list[Any]:
        return [a[0] for e, a in self.events if e == "open" and fragment in str(a[0])]

    def processes(self) -> list[Any]:
        return [(e, a) for e, a in self.events if e != "open" and e != "socket.connect"]


@contextlib.contextmanager
def sentry() -> Iterator[Activity]:
    """Record connects, opens and process starts of this whole process (server included)."""
    global _RECORDING
    activity = Activity()
    _RECORDING = activity.events
    try:
        yield activity
    finally:
        _RECORDING = None


class ConnectionCounter:
    """A TCP listener that only counts who connects: stands at an attacker's jku/x5u URL."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ConnectionCounter:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def url(self, path: str = "/jwks.json") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# --- a cuttable TCP link ---------------------------------------------------------------------


class TcpProxy:
    """Forwards a local port to ``upstream``; ``cut()`` drops every connection and refuses
    new ones (a network partition), ``restore()`` listens again on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()


# --- real servers ----------------------------------------------------------------------------


# A private redis-server with persistence options: the one in tests/helpers.py.
RedisServer = PrivateRedis


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl, or None when PostgreSQL is not installed."""
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(directory, "initdb")):
            return Path(directory)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a free port, trust auth.

    Runs as the current user; as root (initdb refuses root) it runs as ``postgres``.
    """

    def __init__(self, bindir: Path) -> None:
        import tempfile

        self.bindir = bindir
        # Not under pytest's tmp_path: as root that is private to root, and the server
        # runs as postgres.
        self.directory = Path(tempfile.mkdtemp(prefix="tokend-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, check=check, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )

    def _pids(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def freeze(self) -> None:
        """SIGSTOP the whole cluster: connections stay open and nothing answers."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.thaw()
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- raw HTTP ----------------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""
) -> bytes:
    """A raw HTTP/1.1 request, byte for byte as given (no validation, no encoding)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_exchange(port: int, request: bytes, timeout: float = 20) -> bytes:
    """Send ``request`` and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
    return status, headers, body
