"""Real servers of a test's own: redis-server, a PostgreSQL cluster, a cuttable TCP link,
a listener that counts connections."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from service.devredis import answers, free_port


class PrivateRedis:
    """A redis-server of the test's own (never the shared one) on a free port.

    ``kill()`` is SIGKILL; ``start()`` again reuses the port and the directory, so a
    ``dump.rdb`` or AOF left there is loaded. ``extra`` are more redis-server options
    (persistence, output buffer limits).
    """

    def __init__(self, directory: str | Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = Path(directory)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers(self.url, timeout=0.2):
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


# The security suite's name for it.
RedisServer = PrivateRedis


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
    new ones (a network partition), ``restore()`` listens again on the same port.

    ``stall()`` stops reading what upstream sends on the open connections (a client too
    slow to read: upstream's socket buffer fills, then its own output buffer), ``flow()``
    reads again. ``recv_buffer`` caps the kernel's receive buffer on the upstream side, so
    a stall backs up into upstream after a few KiB rather than a few MiB.
    """

    def __init__(self, upstream_port: int, recv_buffer: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.recv_buffer = recv_buffer
        self.port = free_port()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._upstreams: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.recv_buffer is not None:  # before connect: the window is agreed then
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.upstream_port))
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            writer.close()
            return
        self._writers.update((writer, up_writer))
        self._upstreams.add(up_writer)

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
        self._upstreams.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    def upstream_addresses(self) -> set[str]:
        """``host:port`` of each open connection to upstream, as upstream sees it."""
        return {
            "{}:{}".format(*up.get_extra_info("sockname")[:2])
            for up in self._upstreams
            if not up.transport.is_closing()
        }

    def stall(self) -> None:
        for up in self._upstreams:
            if not up.transport.is_closing():
                up.transport.pause_reading()

    def flow(self) -> None:
        for up in self._upstreams:
            if not up.transport.is_closing():
                up.transport.resume_reading()

    async def close(self) -> None:
        await self.cut()


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
