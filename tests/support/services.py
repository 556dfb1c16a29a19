"""The example services (examples/*_service.py) as real processes, for the contract suite.

    service = ExampleProcess(SERVICES["flask"], env, tmp_path / "flask.log")
    await service.start()                  # waits until every worker answers /healthz 200
    reply = await service.get("/protected", token)
    reply.status, reply.headers, reply.body, reply.pid
    firsts = await service.every_worker(token, 401, since=t0, within=2)
    assert await service.stop() == 0       # SIGTERM; its worker processes are gone too
    await service.close()                  # SIGKILL to the whole process group if still up

Every request goes on a connection of its own (no keep-alive), so the kernel hands it to
any worker of a pre-forked server; ``X-Worker-Pid`` says which one answered. A service
that does not send it (the aiohttp example for now) counts as one worker, its main
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from service.devredis import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
PID_HEADER = "X-Worker-Pid"


@dataclass(frozen=True)
class ServiceSpec:
    """One example service: its script, how many worker processes it is run with (env
    ``WORKERS``), whether every response must carry ``X-Worker-Pid``, and the server it
    runs under when the script offers a choice (env ``SERVER``)."""

    name: str
    script: Path
    workers: int
    pid_header: bool
    server: str | None = None

    def env(self) -> dict[str, str]:
        env = {"WORKERS": str(self.workers)} if self.pid_header else {}
        return env | ({"SERVER": self.server} if self.server else {})


SERVICES: dict[str, ServiceSpec] = {
    # the aiohttp one: one process
    "aiohttp": ServiceSpec("aiohttp", EXAMPLES / "protected_service.py", 1, True),
    "fastapi": ServiceSpec("fastapi", EXAMPLES / "fastapi_service.py", 2, True),
    "flask": ServiceSpec("flask", EXAMPLES / "flask_service.py", 2, True),
    "django": ServiceSpec("django", EXAMPLES / "django_service.py", 2, True),
    # the same Django project as ASGI, async middleware, under uvicorn's worker processes
    "django-asgi": ServiceSpec("django-asgi", EXAMPLES / "django_service.py", 2, True, "uvicorn"),
}


@dataclass
class Reply:
    """One answer: status, headers (case-insensitive), body (JSON decoded when it is
    JSON, else text), the pid of the worker that answered and when it arrived."""

    status: int
    headers: CIMultiDict[str]
    body: Any
    pid: int
    at: float  # time.perf_counter() when the answer was read

    def __repr__(self) -> str:
        return f"Reply({self.status}, pid={self.pid}, body={self.body!r})"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


class ExampleProcess:
    """One example service in its own process group, on a port of its own.

    ``start()`` can be called again after ``stop()``: the same port, command and env
    (change ``env`` in between for another configuration), appending to the same log.
    """

    def __init__(
        self, spec: ServiceSpec, env: Mapping[str, str], log_path: Path, port: int | None = None
    ) -> None:
        self.spec = spec
        self.env = dict(env)
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        #: the worker pids that answered /healthz 200 at the last start
        self.workers: set[int] = set()
        #: every worker pid ever seen answering (checked gone after stop)
        self.seen_pids: set[int] = set()
        #: seconds the last start took until every worker was ready
        self.start_seconds = 0.0
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=15),
        )

    # the process

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self, tail: int = 6000) -> str:
        """The end of the service's output, for assertion messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return f"--- {self.spec.name} log ({self.log_path}) ---\n{text[-tail:]}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> set[int]:
        """Start the script; return once every worker answered /healthz 200 (the pids)."""
        assert not self.running, "already running"
        assert self.spec.script.exists(), f"{self.spec.script} does not exist (yet)"
        env = {**self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.spec.script.name} port {self.port} ===\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self.spec.script),
                env=env,
                cwd=str(ROOT),
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: close() kills all of it
            )
        started = time.monotonic()
        deadline = started + START_TIMEOUT
        ready: set[int] = set()
        statuses: Counter[int] = Counter()
        while len(ready) < self.spec.workers:
            assert self.proc.returncode is None, (
                f"{self.spec.name} exited with {self.proc.returncode} during start\n{self.log()}"
            )
            assert time.monotonic() < deadline, (
                f"{self.spec.name}: {len(ready)} of {self.spec.workers} workers ready after "
                f"{START_TIMEOUT}s (healthz statuses {dict(statuses)})\n{self.log()}"
            )
            replies = await asyncio.gather(
                *(self._try_get("/healthz") for _ in range(2 * self.spec.workers))
            )
            for reply in replies:
                if reply is None:
                    continue
                statuses[reply.status] += 1
                if reply.status == 200:
                    assert isinstance(reply.body, dict) and reply.body.get("status") == "ok", (
                        f"{self.spec.name} /healthz 200 with body {reply.body!r}"
                    )
                    ready.add(reply.pid)
            if len(ready) < self.spec.workers:
                await asyncio.sleep(0.05)
        assert len(ready) == self.spec.workers, (
            f"{self.spec.name}: more workers than {self.spec.workers}: {ready}\n{self.log()}"
        )
        self.workers = ready
        self.start_seconds = time.monotonic() - started
        return ready

    async def stop(self) -> int:
        """SIGTERM to the main process: its exit status, once it and every worker it
        ran are gone (asserted)."""
        assert self.proc is not None and self.running, "not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                code = await self.proc.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.spec.name} still running {STOP_TIMEOUT}s after SIGTERM\n{self.log()}"
            ) from None
        deadline = time.monotonic() + STOP_TIMEOUT
        while left := {pid for pid in self.seen_pids if _alive(pid)}:
            assert time.monotonic() < deadline, (
                f"{self.spec.name}: worker processes {sorted(left)} still alive after the main "
                f"process exited ({code})\n{self.log()}"
            )
            await asyncio.sleep(0.05)
        return code

    async def close(self) -> None:
        """Kill whatever is left of it (the whole process group) and close the client."""
        if self.proc is not None:
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
            else:
                # the main process is gone; a worker it left behind is in its group still
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        await self.http.close()

    # requests

    async def get(
        self,
        path: str,
        token: str | None = None,
        *,
        authorization: str | None = None,
    ) -> Reply:
        """GET ``path`` on a fresh connection, with ``Bearer token`` or a raw
        ``authorization`` header value; the answering worker's pid is checked."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if authorization is not None:
            headers["Authorization"] = authorization
        async with self.http.get(self.url(path), headers=headers) as resp:
            if resp.content_type == "application/json":
                body: Any = await resp.json()
            else:
                body = await resp.text()
            reply = Reply(resp.status, CIMultiDict(resp.headers), body, 0, time.perf_counter())
        raw = reply.headers.get(PID_HEADER)
        if raw is None:
            assert not self.spec.pid_header, (
                f"{self.spec.name}: {reply.status} answer to GET {path} without {PID_HEADER}"
            )
            assert self.proc is not None
            reply.pid = self.proc.pid
        else:
            assert raw.strip().isdigit(), f"{PID_HEADER}: {raw!r}"
            reply.pid = int(raw)
        self.seen_pids.add(reply.pid)
        return reply

    async def _try_get(self, path: str) -> Reply | None:
        try:
            return await self.get(path)
        except (aiohttp.ClientConnectionError, TimeoutError):
            return None

    async def every_worker(
        self,
        token: str | None,
        want: int | Callable[[Reply], bool],
        *,
        since: float | None = None,
        within: float = 2.0,
        before: tuple[int, ...] = (200,),
        path: str = "/protected",
        fan_out: int = 4,
    ) -> dict[int, Reply]:
        """Ask until every worker of the last start has given the ``want`` answer.

        Returns each worker's first such reply (``reply.at - since`` is its delay). Fails
        when one has not within ``within`` seconds of ``since`` (default: now), when an
        answer is neither wanted nor in ``before`` (the statuses expected until then),
        when a worker that already gave the wanted answer gives another one later, or
        when an unknown worker answers. ``fan_out`` requests go at once (on fresh
        connections), so a busy worker leaves the next one to another worker.
        """
        ok = want if callable(want) else (lambda reply: reply.status == want)
        start = time.perf_counter() if since is None else since
        deadline = start + within
        first: dict[int, Reply] = {}
        counts: Counter[int] = Counter()
        while set(first) != self.workers:
            replies = await asyncio.gather(
                *(self.get(path, token) for _ in range(max(fan_out, 2 * len(self.workers))))
            )
            # within one batch the answers may cross; across batches a worker that gave
            # the wanted answer must keep giving it
            earlier = dict(first)
            for reply in sorted(replies, key=lambda r: r.at):
                counts[reply.pid] += 1
                assert reply.pid in self.workers, (
                    f"{self.spec.name}: answer from pid {reply.pid}, not one of the workers "
                    f"{sorted(self.workers)} (a worker restarted?)\n{self.log()}"
                )
                if ok(reply):
                    first.setdefault(reply.pid, reply)
                elif reply.pid in earlier:
                    raise AssertionError(
                        f"{self.spec.name}: worker {reply.pid} gave {earlier[reply.pid]!r} and "
                        f"then {reply!r}"
                    )
                else:
                    assert reply.status in before, (
                        f"{self.spec.name}: unexpected {reply!r} from worker {reply.pid}"
                    )
            if set(first) != self.workers and time.perf_counter() > deadline:
                missing = sorted(self.workers - set(first))
                raise AssertionError(
                    f"{self.spec.name}: workers {missing} not there within {within}s "
                    f"(answers per worker: {dict(counts)}; last {replies!r})\n{self.log()}"
                )
        return first
