"""`tokend serve --processes N`: one supervisor and N API processes on one port.

The supervisor binds and listens once, then forks the API processes; each serves the
inherited listening socket with aiohttp's ``web.SockSite``. SO_REUSEPORT (every process
binding the port itself) was the alternative; the inherited socket won because:

- one accept queue: a process that dies (a crash, ``kill -9``) takes no waiting
  connection with it; its siblings accept them. With SO_REUSEPORT each process has a
  queue of its own, and the connections the kernel already hashed into a dying
  process's queue are reset;
- the port is bound once, before anything else runs: "address in use" is one line at
  start, port 0 means one port for all, and no other program of the same user can join
  the port and take a share of the connections, as SO_REUSEPORT lets any such one do.

The price: the kernel does not balance. Idle processes race for each new connection, so
a quiet server may answer most of it from one process; a busy process is not waiting in
``epoll`` and leaves new connections to the idle ones.

Start-up work that must happen once (the development KEK file) is done by the caller
before ``supervise``. The supervisor restarts a process that exits while it is not
stopping, after a backoff that doubles with each recent exit, and gives up (exit 1) after
``MAX_EXITS`` within ``EXIT_WINDOW`` seconds. SIGTERM or SIGINT: SIGTERM to every
process (aiohttp stops accepting, finishes in-flight requests, closes the app), at most
``DRAIN_TIMEOUT`` seconds of waiting, SIGKILL for the rest, exit 0. In flight means
the handler has its request: a request whose body is still arriving does not finish, as
aiohttp drops what a connection receives once it shuts down.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import ConfigError, TokendError

log = logging.getLogger("tokend")

MAX_EXITS = 5
EXIT_WINDOW = 60.0
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 4.0
# Above TokendRunner's shutdown_timeout (60 s for in-flight requests) plus the app's
# cleanup (the fence checkpoint, closing Redis and the database).
DRAIN_TIMEOUT = 75.0
BACKLOG = 128  # aiohttp's: each SockSite listens again with it
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}

Child = Callable[[Sequence[socket.socket]], None]


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, as aiohttp's TCPSite binds them."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one ephemeral port for every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(
            f"TOKEND_HOST/TOKEND_PORT: cannot listen on {host}:{port}: {exc}"
        ) from None
    return sockets


def supervise(processes: int, sockets: Sequence[socket.socket], child: Child) -> int:
    """Run ``child(sockets)`` in ``processes`` forked processes until SIGTERM or SIGINT;
    the exit status (0, or 1 when the processes kept dying)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return _Supervisor(processes, sockets, child, previous).run()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Supervisor:
    def __init__(
        self,
        n: int,
        sockets: Sequence[socket.socket],
        child: Child,
        mask: set[int | signal.Signals],
    ) -> None:
        self.n, self.sockets, self.child, self.mask = n, sockets, child, mask
        self.children: dict[int, int] = {}  # pid -> slot
        self.restarts: dict[int, float] = {}  # slot -> when to start it again
        self.exits: deque[float] = deque()

    def run(self) -> int:
        log.info("supervisor %d: starting %d API processes", os.getpid(), self.n)
        for slot in range(self.n):
            self._start(slot)
        while True:
            now = time.monotonic()
            for slot, due in list(self.restarts.items()):
                if due <= now:
                    del self.restarts[slot]
                    self._start(slot)
            wait = min([1.0, *(due - now for due in self.restarts.values())])
            info = signal.sigtimedwait(SIGNALS, max(wait, 0.01))
            if info is not None and info.si_signo != signal.SIGCHLD:
                log.info("supervisor: %s, stopping", signal.Signals(info.si_signo).name)
                return self._stop(0)
            for slot, _ in self._reap():
                now = time.monotonic()
                self.exits.append(now)
                while self.exits[0] < now - EXIT_WINDOW:
                    self.exits.popleft()
                if len(self.exits) >= MAX_EXITS:
                    log.error(
                        "supervisor: %d API process exits within %.0f s; giving up",
                        len(self.exits),
                        EXIT_WINDOW,
                    )
                    return self._stop(1)
                delay = min(BACKOFF_FIRST * 2 ** (len(self.exits) - 1), BACKOFF_MAX)
                log.info("supervisor: restarting API process %d in %.2f s", slot, delay)
                self.restarts[slot] = now + delay

    def _start(self, slot: int) -> None:
        gc.freeze()  # start-up objects stay shared with the children (copy-on-write)
        sys.stdout.flush()
        sys.stderr.flush()  # or the child would write what is buffered a second time
        pid = os.fork()
        if pid == 0:
            _child_main(self.child, self.sockets, self.mask)
        self.children[pid] = slot
        log.info("supervisor: API process %d started, pid %d", slot, pid)

    def _reap(self) -> list[tuple[int, int]]:
        """The (slot, exit code) of every child that has exited, each logged."""
        ended = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            what = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            log.info("supervisor: API process %d, pid %d, exited with %s", slot, pid, what)
            ended.append((slot, code))
        return ended

    def _stop(self, status: int) -> int:
        self.restarts.clear()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.children and (left := deadline - time.monotonic()) > 0:
            signal.sigtimedwait(SIGNALS, min(left, 1.0))  # a repeated SIGTERM changes nothing
            self._reap()
        for pid, slot in list(self.children.items()):
            log.warning(
                "supervisor: API process %d, pid %d, still running after %.0f s: SIGKILL",
                slot,
                pid,
                DRAIN_TIMEOUT,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.pop(pid)
        log.info("supervisor %d: stopped", os.getpid())
        return status


def _child_main(
    child: Child, sockets: Sequence[socket.socket], mask: set[int | signal.Signals]
) -> NoReturn:
    """The forked API process: run ``child`` and exit, never return into the supervisor."""
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child(sockets)
        code = 0
    except TokendError as exc:
        print(f"tokend: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # Ctrl-C reached it before its signal handlers were set
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
